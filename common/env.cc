#include "common/env.h"

#include <cstdlib>
#include <cstring>

#include "common/status.h"

namespace deepshard {

const std::vector<EnvKnob>& env_knobs() {
    static const std::vector<EnvKnob> knobs = {
        {"DS_NUM_THREADS", "0", "worker threads for CPU kernels (0 = all cores)"},
        {"DS_SPIN_US", "2000", "CPU thread pool: workers spin this long between parallel regions, then sleep"},
        {"DS_ISA", "auto", "force the CPU kernel ISA: auto, avx512bf16, avx512, avx2, scalar"},
        {"DS_LOG_LEVEL", "info", "log level: trace, debug, info, warn, error, off"},
        {"DS_COMM_TIMEOUT_MS", "30000", "deadline of every communicator operation"},
        {"DS_COMM_SPIN_US", "1000", "comm: busy-poll this long before yielding/sleeping while waiting"},
        {"DS_HEARTBEAT_MS", "500", "shard job <-> coordinator heartbeat period"},
        {"DS_CONTROL_SECRET_FILE", "", "file (mode 0600) holding the shard job's control secret"},
        {"DS_CONTROL_SECRET", "", "the control secret itself (for a leader host without the file)"},
        {"DS_API_KEYS", "", "coordinator: API keys clients may present, comma-separated"},
        {"DS_PROGRESS", "auto", "loading progress bar: auto (on a terminal), on, off"},
    };
    return knobs;
}

static const char* lookup(const char* name) {
    bool declared = false;
    for (const auto& k : env_knobs()) {
        if (std::strcmp(k.name, name) == 0) {
            declared = true;
            break;
        }
    }
    DS_CHECK(declared) << "environment knob " << name << " is not declared in env.cc";
    return std::getenv(name);
}

int64_t env_int(const char* name, int64_t fallback) {
    const char* v = lookup(name);
    if (v == nullptr || *v == '\0') {
        return fallback;
    }
    char* end = nullptr;
    long long x = std::strtoll(v, &end, 10);
    if (end == v || *end != '\0') {
        return fallback;
    }
    return x;
}

std::string env_str(const char* name, const std::string& fallback) {
    const char* v = lookup(name);
    return (v == nullptr || *v == '\0') ? fallback : std::string(v);
}

bool env_bool(const char* name, bool fallback) {
    const char* v = lookup(name);
    if (v == nullptr || *v == '\0') {
        return fallback;
    }
    std::string s(v);
    if (s == "1" || s == "on" || s == "true" || s == "yes") return true;
    if (s == "0" || s == "off" || s == "false" || s == "no") return false;
    return fallback;
}

}  // namespace deepshard
