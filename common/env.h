// Environment knobs. Every DS_* variable deepshard reads is declared in kEnvKnobs (env.cc) so
// `deepshard doctor` and --help can list them; reading an undeclared one is a programming error.
#pragma once

#include <chrono>
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

// Value of a declared knob, or its default from the table when unset / unparsable. The table is
// the one place a knob's default is written.
int64_t env_int(const char* name);
std::string env_str(const char* name);
bool env_bool(const char* name);

// Typed knobs used in several components (each one reads the table above).
// DS_COMM_TIMEOUT_MS: deadline of every blocking communication; a value <= 0 means the default.
std::chrono::milliseconds comm_timeout();
// DS_HEARTBEAT_MS: shard job <-> coordinator heartbeat period (at least 10 ms).
std::chrono::milliseconds heartbeat_period();

}  // namespace deepshard
