#include "common/env.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "common/status.h"

namespace deepshard {

const std::vector<EnvKnob>& env_knobs() {
    static const std::vector<EnvKnob> knobs = {
        {"DS_NUM_THREADS", "0", "worker threads for CPU kernels (0 = all cores)"},
        {"DS_SPIN_US", "2000", "CPU thread pool: workers spin this long between parallel regions, then sleep"},
        {"DS_SPIN_CONTENDED_US", "0",
         "CPU thread pool: spin budget while this thread is being preempted (an oversubscribed machine)"},
        {"DS_ISA", "auto", "force the CPU kernel ISA: auto, amx, avx512bf16, avx512, avx2, scalar"},
        {"DS_LOG_LEVEL", "info", "log level: trace, debug, info, warn, error, off"},
        {"DS_COMM_TIMEOUT_MS", "30000", "deadline of every communicator operation"},
        {"DS_COMM_SPIN_US", "1000", "comm: busy-poll this long before yielding/sleeping while waiting"},
        {"DS_HEARTBEAT_MS", "500", "shard job <-> coordinator heartbeat period"},
        {"DS_CONTROL_SECRET_FILE", "", "file (mode 0600) holding the shard job's control secret"},
        {"DS_CONTROL_SECRET", "", "the control secret itself (for a leader host without the file)"},
        {"DS_API_KEYS", "", "coordinator: API keys clients may present, comma-separated"},
        {"DS_PROGRESS", "auto", "loading progress bar: auto (on a terminal), on, off"},
        {"DS_CUDA_MLA_TC", "false",
         "CUDA engine: MLA attention over the BF16 cache on tensor cores (off until verified on a GPU)"},
    };
    return knobs;
}

static const EnvKnob& declared(const char* name) {
    for (const auto& k : env_knobs()) {
        if (std::strcmp(k.name, name) == 0) {
            return k;
        }
    }
    DS_CHECK(false) << "environment knob " << name << " is not declared in env.cc";
    return env_knobs().front();
}

static bool parse_int(const char* v, int64_t* out) {
    if (v == nullptr || *v == '\0') {
        return false;
    }
    char* end = nullptr;
    long long x = std::strtoll(v, &end, 10);
    if (end == v || *end != '\0') {
        return false;
    }
    *out = x;
    return true;
}

static bool parse_bool(const std::string& s, bool* out) {
    if (s == "1" || s == "on" || s == "true" || s == "yes") {
        *out = true;
        return true;
    }
    if (s == "0" || s == "off" || s == "false" || s == "no") {
        *out = false;
        return true;
    }
    return false;
}

int64_t env_int(const char* name) {
    const EnvKnob& k = declared(name);
    int64_t x = 0;
    if (parse_int(std::getenv(name), &x)) {
        return x;
    }
    DS_CHECK(parse_int(k.default_value, &x)) << "default of " << name << " is not an integer";
    return x;
}

std::string env_str(const char* name) {
    const EnvKnob& k = declared(name);
    const char* v = std::getenv(name);
    return (v == nullptr || *v == '\0') ? std::string(k.default_value) : std::string(v);
}

bool env_bool(const char* name) {
    const EnvKnob& k = declared(name);
    bool b = false;
    const char* v = std::getenv(name);
    if (v != nullptr && parse_bool(v, &b)) {
        return b;
    }
    DS_CHECK(parse_bool(k.default_value, &b)) << "default of " << name << " is not a boolean";
    return b;
}

std::chrono::milliseconds comm_timeout() {
    int64_t ms = env_int("DS_COMM_TIMEOUT_MS");
    if (ms <= 0) {
        parse_int(declared("DS_COMM_TIMEOUT_MS").default_value, &ms);
    }
    return std::chrono::milliseconds(ms);
}

std::chrono::milliseconds heartbeat_period() {
    return std::chrono::milliseconds(std::max<int64_t>(10, env_int("DS_HEARTBEAT_MS")));
}

}  // namespace deepshard
