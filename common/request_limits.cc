#include "common/request_limits.h"

#include <cmath>
#include <sstream>

namespace deepshard::limits {

namespace {

// Shortest text that reads back as the same double ("0.1", not "0.100000001").
std::string num(double v) {
    std::ostringstream os;
    os.precision(9);
    os << v;
    return os.str();
}

Status out_of_range(std::string_view prefix, const char* field, const std::string& value, const std::string& range) {
    return invalid_argument(std::string(prefix) + field + ": " + value + " is out of range " + range);
}

}  // namespace

bool Range::contains(double v) const {
    return std::isfinite(v) && v <= hi && (lo_open ? v > lo : v >= lo);
}

std::string Range::text() const {
    return (lo_open ? "(" : "[") + num(lo) + ", " + num(hi) + "]";
}

Status check_sampling(const SamplingValues& v, std::string_view prefix) {
    struct Field {
        const char* name;
        const Range* range;
        double value;
    };
    const Field fields[] = {
        {"temperature", &kTemperature, v.temperature},
        {"top_p", &kTopP, v.top_p},
        {"min_p", &kMinP, v.min_p},
        {"repetition_penalty", &kRepetitionPenalty, v.repetition_penalty},
        {"frequency_penalty", &kFrequencyPenalty, v.frequency_penalty},
        {"presence_penalty", &kPresencePenalty, v.presence_penalty},
    };
    for (const Field& f : fields) {
        if (!f.range->contains(f.value)) return out_of_range(prefix, f.name, num(f.value), f.range->text());
    }
    if (v.top_k < 0 || v.top_k > kMaxTopK) {
        return out_of_range(prefix, "top_k", std::to_string(v.top_k), "[0, " + std::to_string(kMaxTopK) + "] (0 = off)");
    }
    if (v.logprobs < 0 || v.logprobs > kMaxTopLogprobs) {
        return out_of_range(prefix, "logprobs", std::to_string(v.logprobs),
                            "[0, " + std::to_string(kMaxTopLogprobs) + "]");
    }
    return ok_status();
}

Status check_count(std::string_view field, size_t count, size_t max) {
    if (count <= max) return ok_status();
    return invalid_argument(std::string(field) + ": " + std::to_string(count) + " entries, at most " +
                            std::to_string(max) + " allowed");
}

}  // namespace deepshard::limits
