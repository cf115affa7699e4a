// A generation request in model terms, as every front end (HTTP, Thrift) builds it from its own
// types, and the checks they share. The ranges and list bounds come from the request-limits table
// (common/request_limits.h), which the control protocol and the sampler apply too.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "control/protocol.h"
#include "common/status.h"

namespace deepshard::coordinator {

struct ModelInfo {
    std::string name;           // the id clients use ("model" field); the model directory's name
    int64_t max_context = 0;    // max_position_embeddings
    int64_t vocab_size = 0;
    int32_t eos_id = 1;
    int32_t bos_id = 0;
    uint64_t fingerprint = 0;
};

// A validated generation request in model terms (front ends build it from their own types).
struct GenerateParams {
    std::vector<int32_t> prompt;
    control::SamplingSpec sampling;
    int64_t max_tokens = 16;
    std::vector<std::string> stop;
    std::vector<int32_t> stop_token_ids;
    bool ignore_eos = false;
    std::optional<std::chrono::milliseconds> timeout;
};

// Range and count checks shared by every front end; kInvalidArgument whose message starts with the
// field ("temperature: ...").
Status validate_params(const GenerateParams& p, const ModelInfo& model);

}  // namespace deepshard::coordinator
