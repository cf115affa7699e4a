#include "coordinator/thrift_params.h"

#include "common/request_limits.h"
#include "model/tokenizer/chat_template.h"

namespace deepshard::coordinator {

StatusOr<GenerateParams> params_from_thrift(const rpc::GenerateRequest& r, const ModelInfo& model,
                                            const model::Tokenizer* tokenizer) {
    GenerateParams p;
    const int kinds = (r.__isset.prompt ? 1 : 0) + (r.__isset.prompt_tokens ? 1 : 0) + (r.__isset.messages ? 1 : 0);
    if (kinds != 1) return invalid_argument("prompt: exactly one of prompt, prompt_tokens, messages must be set");
    if (r.__isset.prompt_tokens) {
        if (static_cast<int64_t>(r.prompt_tokens.size()) >= model.max_context) {
            return invalid_argument("prompt_tokens: " + std::to_string(r.prompt_tokens.size()) +
                                    " tokens exceed the model's context length of " +
                                    std::to_string(model.max_context));
        }
        p.prompt = r.prompt_tokens;
    } else if (!tokenizer) {
        return invalid_argument(std::string(r.__isset.prompt ? "prompt" : "messages") +
                                ": this model has no tokenizer; send prompt_tokens");
    } else if (r.__isset.prompt) {
        auto ids = tokenizer->encode(r.prompt, tokenizer->add_bos_token());
        if (!ids.ok()) return invalid_argument("prompt: " + ids.status().message());
        p.prompt = std::move(ids).value();
    } else {
        DS_RETURN_IF_ERROR(limits::check_count("messages", r.messages.size(), limits::kMaxMessages));
        if (r.messages.empty()) return invalid_argument("messages: must not be empty");
        std::vector<model::ChatMessage> messages;
        messages.reserve(r.messages.size());
        for (size_t i = 0; i < r.messages.size(); ++i) {
            const auto& m = r.messages[i];
            const std::string where = "messages[" + std::to_string(i) + "]";
            if (!m.__isset.role) return invalid_argument(where + ".role: required");
            if (!m.__isset.content) return invalid_argument(where + ".content: required");
            messages.push_back({m.role, m.content});
        }
        auto text = model::apply_chat_template(messages, true);
        if (!text.ok()) return invalid_argument("messages: " + text.status().message());
        auto ids = tokenizer->encode(*text, false);
        if (!ids.ok()) return invalid_argument("messages: " + ids.status().message());
        p.prompt = std::move(ids).value();
    }
    p.max_tokens = r.__isset.max_tokens ? r.max_tokens : 16;

    // Ranges are checked on the values as sent (doubles), before narrowing to the wire's floats:
    // 2.0000001 must not become an accepted 2.0f.
    limits::SamplingValues v;
    v.temperature = 1.0;  // OpenAI's default
    if (r.__isset.sampling) {
        const auto& sp = r.sampling;
        if (sp.__isset.temperature) v.temperature = sp.temperature;
        if (sp.__isset.top_k) v.top_k = sp.top_k;
        if (sp.__isset.top_p) v.top_p = sp.top_p;
        if (sp.__isset.min_p) v.min_p = sp.min_p;
        if (sp.__isset.repetition_penalty) v.repetition_penalty = sp.repetition_penalty;
        if (sp.__isset.frequency_penalty) v.frequency_penalty = sp.frequency_penalty;
        if (sp.__isset.presence_penalty) v.presence_penalty = sp.presence_penalty;
        if (sp.__isset.seed) {
            p.sampling.has_seed = 1;
            p.sampling.seed = static_cast<uint64_t>(sp.seed);
        }
    }
    if (r.__isset.logprobs) v.logprobs = r.logprobs;
    DS_RETURN_IF_ERROR(limits::check_sampling(v));
    auto& s = p.sampling;
    s.temperature = static_cast<float>(v.temperature);
    s.top_k = static_cast<int32_t>(v.top_k);
    s.top_p = static_cast<float>(v.top_p);
    s.min_p = static_cast<float>(v.min_p);
    s.repetition_penalty = static_cast<float>(v.repetition_penalty);
    s.frequency_penalty = static_cast<float>(v.frequency_penalty);
    s.presence_penalty = static_cast<float>(v.presence_penalty);
    s.logprobs = static_cast<uint8_t>(v.logprobs);

    if (r.__isset.stop) {
        DS_RETURN_IF_ERROR(limits::check_count("stop", r.stop.size(), limits::kMaxStopStrings));
        p.stop = r.stop;
    }
    if (r.__isset.stop_token_ids) {
        DS_RETURN_IF_ERROR(limits::check_count("stop_token_ids", r.stop_token_ids.size(), limits::kMaxStopTokenIds));
        p.stop_token_ids = r.stop_token_ids;
    }
    p.ignore_eos = r.__isset.ignore_eos && r.ignore_eos;
    if (r.__isset.timeout_ms) {
        if (r.timeout_ms <= 0) return invalid_argument("timeout_ms: must be positive, got " + std::to_string(r.timeout_ms));
        p.timeout = std::chrono::milliseconds(r.timeout_ms);
    }
    DS_RETURN_IF_ERROR(validate_params(p, model));
    return p;
}

std::string field_of(const Status& s) {
    const std::string& m = s.message();
    const auto colon = m.find(':');
    if (colon == std::string::npos || colon >= 48) return "";
    if (m.find_first_not_of("abcdefghijklmnopqrstuvwxyz_.[]0123456789") != colon) return "";
    return m.substr(0, colon);
}

}  // namespace deepshard::coordinator
