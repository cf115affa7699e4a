// Environment knobs. Every DS_* variable deepshard reads is declared in kEnvKnobs (env.cc) so
// `deepshard doctor` and --help can list them; reading an undeclared one is a programming error.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace deepshard {

struct EnvKnob {
    const char* name;
    const char* default_value;
    const char* help;
};

const std::vector<EnvKnob>& env_knobs();

// Value of a declared knob (or `fallback` if unset / unparsable).
int64_t env_int(const char* name, int64_t fallback);
std::string env_str(const char* name, const std::string& fallback);
bool env_bool(const char* name, bool fallback);

}  // namespace deepshard
