#include "model/generate.h"

#include <algorithm>
#include <chrono>

namespace deepshard::model {

namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

// Most drafts per step (the coordinator's --draft-tokens bound, control/protocol.h kMaxDraftTokens).
inline constexpr int kMaxGenerateDrafts = 16;
StatusOr<GenerateResult> generate_speculative(const StepFn& step, const DraftFn& draft, const GenerateRequest& req,
                                              const OnToken& on_token);

StatusOr<GenerateResult> generate(const StepFn& step, const GenerateRequest& req, const OnToken& on_token,
                                  const DraftFn& draft) {
    if (req.prompt.empty()) {
        return invalid_argument("generate: the prompt is empty");
    }
    if (req.prefill_chunk <= 0) {
        return invalid_argument("generate: prefill_chunk must be positive");
    }
    if (req.draft_tokens < 0 || req.draft_tokens > kMaxGenerateDrafts) {
        return invalid_argument("generate: draft_tokens must be in [0, " + std::to_string(kMaxGenerateDrafts) +
                                "], got " + std::to_string(req.draft_tokens));
    }
    if (req.draft_tokens > 0) {
        if (!draft) return invalid_argument("generate: speculative decoding needs the MTP module's draft function");
        return generate_speculative(step, draft, req, on_token);
    }
    GenerateResult result;
    Sampler sampler(req.params, req.prompt);
    const auto t0 = std::chrono::steady_clock::now();

    // Prefill in chunks; only the last chunk's last position (or every position) yields logits.
    const int64_t P = static_cast<int64_t>(req.prompt.size());
    std::vector<float> last_logits;
    for (int64_t pos = 0; pos < P; pos += req.prefill_chunk) {
        const int64_t n = std::min(req.prefill_chunk, P - pos);
        const bool final_chunk = pos + n == P;
        SeqChunk chunk{.seq_id = req.seq_id,
                       .tokens = std::span<const int32_t>(req.prompt.data() + pos, static_cast<size_t>(n)),
                       .num_tokens = n,
                       .start_pos = pos,
                       .logits = req.prompt_logits ? LogitsMode::kAll
                                                   : (final_chunk ? LogitsMode::kLast : LogitsMode::kNone)};
        DS_ASSIGN_OR_RETURN(StepOutput out, step(std::span<const SeqChunk>(&chunk, 1)));
        result.vocab = out.vocab;
        if (req.prompt_logits) {
            result.prompt_logits.insert(result.prompt_logits.end(), out.logits.begin(), out.logits.end());
        }
        if (final_chunk) {
            if (out.rows < 1) {
                return internal_error("generate: the step returned no logits for the last prompt position");
            }
            last_logits.assign(out.logits.end() - out.vocab, out.logits.end());
        }
    }
    result.prefill_seconds = seconds_since(t0);
    const auto t1 = std::chrono::steady_clock::now();

    int64_t pos = P;
    result.finish_reason = "length";
    const int64_t max_tokens = req.params.max_tokens > 0 ? req.params.max_tokens : 16;
    for (int64_t i = 0; i < max_tokens; ++i) {
        SampleResult s = sampler.sample(last_logits);
        sampler.accept(s.token);
        result.tokens.push_back(s.token);
        result.samples.push_back(s);
        const bool is_stop_id = std::find(req.params.stop_token_ids.begin(), req.params.stop_token_ids.end(),
                                          s.token) != req.params.stop_token_ids.end();
        const bool keep_going = on_token ? on_token(s.token) : true;
        if ((s.token == req.eos_id && !req.params.ignore_eos) || is_stop_id || !keep_going) {
            result.finish_reason = "stop";
            break;
        }
        if (i + 1 == max_tokens) {
            break;
        }
        const int32_t tok = s.token;
        SeqChunk chunk{.seq_id = req.seq_id,
                       .tokens = std::span<const int32_t>(&tok, 1),
                       .num_tokens = 1,
                       .start_pos = pos,
                       .logits = LogitsMode::kLast};
        DS_ASSIGN_OR_RETURN(StepOutput out, step(std::span<const SeqChunk>(&chunk, 1)));
        last_logits.assign(out.logits.begin(), out.logits.begin() + out.vocab);
        ++pos;
    }
    result.decode_seconds = seconds_since(t1);
    return result;
}

}  // namespace deepshard::model
