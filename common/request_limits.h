// What a client may ask for, in one table: the sampling ranges, the counts of every list a request
// carries and the shape of a request body. Every layer checks against this table and nothing else:
// the HTTP and Thrift front ends (a 4xx naming the field), the control protocol (a frame breaking it
// is refused) and the sampler (SamplingParams::validate). It lives in common/ because that is the
// one component all of them may depend on (DESIGN §1), so a request one layer accepts is never
// refused, or treated differently, by the next.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/status.h"

namespace deepshard::limits {

// A closed or half-open interval of finite numbers.
struct Range {
    double lo = 0;
    double hi = 0;
    bool lo_open = false;  // lo itself excluded

    // False for NaN and infinities.
    bool contains(double v) const;
    // "[0, 2]" / "(0, 1]".
    std::string text() const;
};

// Sampling parameters (OpenAI's ranges where OpenAI has the parameter, vLLM's otherwise).
inline constexpr Range kTemperature{0, 2, false};  // 0 = greedy
inline constexpr Range kTopP{0, 1, true};          // 1 = off
inline constexpr Range kMinP{0, 1, false};         // 0 = off
inline constexpr Range kRepetitionPenalty{0, 10, true};  // 1 = off
inline constexpr Range kFrequencyPenalty{-2, 2, false};
inline constexpr Range kPresencePenalty{-2, 2, false};
inline constexpr int64_t kMaxTopK = INT32_MAX;  // 0 = off (HTTP also takes vLLM's -1)
inline constexpr int kMaxTopLogprobs = 20;      // top-n alternatives per token
// Speculative decoding: most draft tokens verified or asked for per step (--draft-tokens on the
// coordinator and on `deepshard generate`; the control protocol's bound on SeqWork / SeqOutput).
inline constexpr int kMaxDraftTokens = 16;

// Lists a client sends.
inline constexpr size_t kMaxStopStrings = 16;
inline constexpr size_t kMaxStopStringBytes = 1024;
inline constexpr size_t kMaxStopTokenIds = 1024;
inline constexpr size_t kMaxMessages = 4096;        // chat messages per request
inline constexpr size_t kMaxContentParts = 1024;    // parts of one message's content
inline constexpr size_t kMaxToolCalls = 128;        // tool calls of one assistant message
inline constexpr size_t kMaxTools = 128;            // tools offered (function calling is refused anyway)
inline constexpr size_t kMaxLogitBias = 1024;       // logit_bias entries (refused when non-empty)
inline constexpr double kMaxTimeoutSeconds = 86400;

// The JSON of a request body: nesting (parsers and dump() recurse per level) and the number of
// values (each costs a node). A prompt of token ids is one value per token, so the count allows the
// longest context DeepSeek-V3 has (163840) with room to spare.
inline constexpr int kMaxJsonDepth = 32;
inline constexpr size_t kMaxJsonValues = size_t{1} << 18;

// The sampling knobs of one request, in the widest types any layer uses.
struct SamplingValues {
    double temperature = 0;
    int64_t top_k = 0;
    double top_p = 1;
    double min_p = 0;
    double repetition_penalty = 1;
    double frequency_penalty = 0;
    double presence_penalty = 0;
    int64_t logprobs = 0;
};

// OK, or kInvalidArgument naming the first field out of range, e.g. "temperature: 3 is out of range
// [0, 2]"; `prefix` goes before the field name ("sampling.").
Status check_sampling(const SamplingValues& v, std::string_view prefix = "");

// Checks a `count`-long list named `field` against `max` ("stop: 17 entries, at most 16 allowed").
Status check_count(std::string_view field, size_t count, size_t max);

}  // namespace deepshard::limits
