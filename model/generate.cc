#include "model/generate.h"

#include <algorithm>
#include <chrono>

#include "common/request_limits.h"

namespace deepshard::model {

namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Prefill in chunks; only the last chunk's last position (or every position) yields logits. With
// `hidden`, every position's hidden state is kept there (the MTP module's input) and the last chunk
// reserves `reserve_ahead` positions past the prompt for the first drafts.
Status prefill(const StepFn& step, const GenerateRequest& req, GenerateResult* result, std::vector<float>* last_logits,
               std::vector<float>* hidden = nullptr, int64_t reserve_ahead = 0) {
    const int64_t P = static_cast<int64_t>(req.prompt.size());
    for (int64_t pos = 0; pos < P; pos += req.prefill_chunk) {
        const int64_t n = std::min(req.prefill_chunk, P - pos);
        const bool final_chunk = pos + n == P;
        SeqChunk chunk{.seq_id = req.seq_id,
                       .tokens = std::span<const int32_t>(req.prompt.data() + pos, static_cast<size_t>(n)),
                       .num_tokens = n,
                       .start_pos = pos,
                       .logits = req.prompt_logits ? LogitsMode::kAll
                                                   : (final_chunk ? LogitsMode::kLast : LogitsMode::kNone),
                       .reserve_ahead = final_chunk ? reserve_ahead : 0,
                       .keep_hidden = hidden != nullptr};
        DS_ASSIGN_OR_RETURN(StepOutput out, step(std::span<const SeqChunk>(&chunk, 1)));
        result->vocab = out.vocab;
        if (req.prompt_logits) {
            result->prompt_logits.insert(result->prompt_logits.end(), out.logits.begin(), out.logits.end());
        }
        if (hidden != nullptr) hidden->insert(hidden->end(), out.hidden.begin(), out.hidden.end());
        if (final_chunk) {
            if (out.rows < 1) {
                return internal_error("generate: the step returned no logits for the last prompt position");
            }
            last_logits->assign(out.logits.end() - out.vocab, out.logits.end());
        }
    }
    return ok_status();
}
// Records one emitted token and tells the caller's callback; false when generation stops with it
// (EOS unless ignored, a stop token id, or the callback said so): finish_reason becomes "stop".
bool record_token(const GenerateRequest& req, const OnToken& on_token, const SampleResult& s, GenerateResult* result) {
    result->tokens.push_back(s.token);
    result->samples.push_back(s);
    const bool is_stop_id = std::find(req.params.stop_token_ids.begin(), req.params.stop_token_ids.end(), s.token) !=
                            req.params.stop_token_ids.end();
    const bool keep_going = on_token ? on_token(s.token) : true;
    if ((s.token == req.eos_id && !req.params.ignore_eos) || is_stop_id || !keep_going) {
        result->finish_reason = "stop";
        return false;
    }
    return true;
}
}  // namespace

// Most drafts per step: the coordinator's --draft-tokens bound (common/request_limits.h).
inline constexpr int kMaxGenerateDrafts = limits::kMaxDraftTokens;
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

    const int64_t P = static_cast<int64_t>(req.prompt.size());
    std::vector<float> last_logits;
    DS_RETURN_IF_ERROR(prefill(step, req, &result, &last_logits));
    result.prefill_seconds = seconds_since(t0);
    const auto t1 = std::chrono::steady_clock::now();

    int64_t pos = P;
    result.finish_reason = "length";
    const int64_t max_tokens = req.params.max_tokens > 0 ? req.params.max_tokens : 16;
    for (int64_t i = 0; i < max_tokens; ++i) {
        SampleResult s = sampler.sample(last_logits);
        sampler.accept(s.token);
        if (!record_token(req, on_token, s, &result)) break;
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

// generate() with MTP speculative decoding (GenerateRequest::draft_tokens > 0), in one process: the
// same steps as the shard job's last stage (shard_node/speculative.cc) for one sequence. Each step
// feeds the last emitted token and the drafts, verifies them (model/sampling.h verify_drafts: every
// emitted token is the one plain decoding emits), runs the MTP module over the committed positions
// and drafts the next step's tokens. Rejected positions need no cleanup: the next chunk starts
// right after the last committed one and overwrites both caches there (SeqChunk::reserve_ahead).
StatusOr<GenerateResult> generate_speculative(const StepFn& step, const DraftFn& draft, const GenerateRequest& req,
                                              const OnToken& on_token) {
    using Clock = std::chrono::steady_clock;
    const int64_t k = req.draft_tokens;
    GenerateResult result;
    Sampler sampler(req.params, req.prompt);
    const auto t0 = Clock::now();

    // Prefill, keeping every position's hidden state: the MTP module's first rows.
    const int64_t P = static_cast<int64_t>(req.prompt.size());
    std::vector<float> prompt_hidden;
    std::vector<float> last_logits;
    DS_RETURN_IF_ERROR(prefill(step, req, &result, &last_logits, &prompt_hidden, k - 1));
    if (prompt_hidden.empty() || prompt_hidden.size() % static_cast<size_t>(P) != 0) {
        return internal_error("generate: the engine kept " + std::to_string(prompt_hidden.size()) +
                              " hidden values for " + std::to_string(P) + " prompt positions (no MTP input)");
    }
    const size_t H = prompt_hidden.size() / static_cast<size_t>(P);
    result.prefill_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    const auto t1 = Clock::now();

    const int64_t max_tokens = req.params.max_tokens > 0 ? req.params.max_tokens : 16;
    result.finish_reason = "length";
    // Records one emitted token; false when generation ends with it.
    auto take = [&](const SampleResult& s) {
        return record_token(req, on_token, s, &result) && static_cast<int64_t>(result.tokens.size()) < max_tokens;
    };
    // Drafts worth asking for: verifying d drafts emits at most d + 1 tokens.
    auto drafts_wanted = [&] {
        return static_cast<int32_t>(std::min<int64_t>(k, max_tokens - static_cast<int64_t>(result.tokens.size()) - 1));
    };

    // The first token comes from the prompt's logits, as in plain decoding.
    SampleResult first = sampler.sample(last_logits);
    sampler.accept(first.token);
    if (!take(first)) {
        result.decode_seconds = std::chrono::duration<double>(Clock::now() - t1).count();
        return result;
    }
    // The MTP module over the prompt: row i pairs position i's hidden state with the token after it.
    std::vector<int32_t> next(req.prompt.begin() + 1, req.prompt.end());
    next.push_back(first.token);
    std::vector<int32_t> drafts;
    {
        MtpChunk m{.seq_id = req.seq_id, .start_pos = 0, .hidden = prompt_hidden, .next_tokens = next,
                   .drafts = drafts_wanted()};
        DS_ASSIGN_OR_RETURN(auto d, draft(std::span<const MtpChunk>(&m, 1)));
        if (d.size() != 1) return internal_error("generate: the MTP module returned drafts for " + std::to_string(d.size()) + " chunks");
        drafts = std::move(d[0]);
    }

    int64_t pos = P;  // position of the last emitted token, the next chunk's first
    std::vector<int32_t> tokens;
    while (true) {
        tokens.assign(1, result.tokens.back());
        tokens.insert(tokens.end(), drafts.begin(), drafts.end());
        const int64_t n = static_cast<int64_t>(tokens.size());
        SeqChunk chunk{.seq_id = req.seq_id,
                       .tokens = tokens,
                       .num_tokens = n,
                       .start_pos = pos,
                       .logits = drafts.empty() ? LogitsMode::kLast : LogitsMode::kAll,
                       .reserve_ahead = k - 1,
                       .keep_hidden = true};
        DS_ASSIGN_OR_RETURN(StepOutput out, step(std::span<const SeqChunk>(&chunk, 1)));
        if (out.rows != (drafts.empty() ? 1 : n) || out.hidden.size() != static_cast<size_t>(n) * H) {
            return internal_error("generate: the engine returned " + std::to_string(out.rows) + " logits rows and " +
                                  std::to_string(out.hidden.size()) + " hidden values for a chunk of " +
                                  std::to_string(n) + " tokens");
        }
        const std::vector<SampleResult> emitted = verify_drafts(sampler, out.logits, out.vocab, drafts);
        if (!drafts.empty()) {
            ++result.spec_verify_steps;
            result.spec_draft_tokens += static_cast<int64_t>(drafts.size());
            result.spec_accepted_tokens += static_cast<int64_t>(emitted.size()) - 1;
        }
        bool more = true;
        for (const SampleResult& s : emitted) {
            if (!(more = take(s))) break;
        }
        if (!more) break;
        // Committed positions pos .. pos + m: their hidden states and the token after each.
        const size_t rows = emitted.size();
        next.assign(tokens.begin() + 1, tokens.begin() + static_cast<int64_t>(rows));
        next.push_back(emitted.back().token);
        MtpChunk m{.seq_id = req.seq_id,
                   .start_pos = pos,
                   .hidden = std::span<const float>(out.hidden.data(), rows * H),
                   .next_tokens = next,
                   .drafts = drafts_wanted()};
        DS_ASSIGN_OR_RETURN(auto d, draft(std::span<const MtpChunk>(&m, 1)));
        if (d.size() != 1) return internal_error("generate: the MTP module returned drafts for " + std::to_string(d.size()) + " chunks");
        drafts = std::move(d[0]);
        pos += static_cast<int64_t>(rows);
    }
    result.decode_seconds = std::chrono::duration<double>(Clock::now() - t1).count();
    return result;
}

}  // namespace deepshard::model
