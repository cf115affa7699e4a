#include "coordinator/params.h"

#include "common/request_limits.h"
#include "model/tokenizer/tokenizer.h"

namespace deepshard::coordinator {

Status validate_params(const GenerateParams& p, const ModelInfo& model) {
    if (p.prompt.empty()) return invalid_argument("prompt: must not be empty");
    const int64_t plen = static_cast<int64_t>(p.prompt.size());
    if (plen >= model.max_context) {
        return invalid_argument("prompt: " + std::to_string(plen) + " tokens exceed the model's context length of " +
                                std::to_string(model.max_context));
    }
    for (int32_t t : p.prompt) {
        if (t < 0 || (model.vocab_size > 0 && t >= model.vocab_size)) {
            return invalid_argument("prompt: token id " + std::to_string(t) + " is outside the vocabulary [0, " +
                                    std::to_string(model.vocab_size) + ")");
        }
    }
    if (p.max_tokens < 1) return invalid_argument("max_tokens: must be at least 1, got " + std::to_string(p.max_tokens));
    if (p.max_tokens > model.max_context - plen) {
        return invalid_argument("max_tokens: " + std::to_string(p.max_tokens) + " plus the prompt's " +
                                std::to_string(plen) + " tokens exceed the model's context length of " +
                                std::to_string(model.max_context));
    }
    DS_RETURN_IF_ERROR(limits::check_sampling(control::sampling_values(p.sampling)));
    DS_RETURN_IF_ERROR(limits::check_count("stop", p.stop.size(), limits::kMaxStopStrings));
    for (const auto& st : p.stop) {
        if (st.empty() || st.size() > limits::kMaxStopStringBytes) {
            return invalid_argument("stop: each stop string must have 1.." +
                                    std::to_string(limits::kMaxStopStringBytes) + " bytes, got " +
                                    std::to_string(st.size()));
        }
        if (model::utf8::first_invalid_offset(st)) return invalid_argument("stop: not valid UTF-8");
    }
    DS_RETURN_IF_ERROR(limits::check_count("stop_token_ids", p.stop_token_ids.size(), limits::kMaxStopTokenIds));
    for (int32_t t : p.stop_token_ids) {
        if (t < 0 || (model.vocab_size > 0 && t >= model.vocab_size)) {
            return invalid_argument("stop_token_ids: id " + std::to_string(t) + " is outside the vocabulary");
        }
    }
    if (p.timeout && (p.timeout->count() <= 0 || p.timeout->count() > limits::kMaxTimeoutSeconds * 1000)) {
        return invalid_argument("timeout: must be in (0, " + std::to_string(static_cast<int64_t>(limits::kMaxTimeoutSeconds)) +
                                "] seconds");
    }
    return ok_status();
}

}  // namespace deepshard::coordinator
