// Logits -> next token for one sequence: penalties, temperature, top-k / top-p / min-p truncation,
// a seeded exponential-race draw (the official DeepSeek generate.py method) and optional logprobs.
//
// Pipeline per sample() call, in this order (HF generate's order for the parts it has):
//   1. repetition penalty (CTRL / HF): every distinct token of prompt + generated text has its
//      logit divided by the penalty when positive, multiplied by it when negative;
//   2. frequency and presence penalties (OpenAI): logit -= count * frequency + (count > 0) * presence,
//      counting generated tokens only;
//   3. temperature 0 -> greedy argmax (lowest id on ties); otherwise logits / max(T, 1e-5);
//   4. top-k, then top-p on the top-k renormalised distribution (the minimal nucleus: the fewest
//      most-likely tokens whose mass reaches top_p), then min-p (keep p >= min_p * p_max);
//   5. argmax over the survivors of (logit / T - log E_i) with E_i ~ Exp(1), which is an exact
//      categorical sample from softmax(logit / T) restricted to the survivors.
//
// Logprobs (SampleResult::logprob and top_logprobs) are the log-softmax of the logits after steps
// 1-3, i.e. the penalised model distribution at the request's temperature (temperature 0 counts as
// 1), *before* the top-k / top-p / min-p truncation: logprobs after temperature, as OpenAI-style
// APIs describe them, finite for every token and comparable across truncation settings. They are
// not the model's raw logprobs when a penalty or a temperature other than 1 is in effect.
//
// Determinism: the noise for token i at step t is a pure function of (seed, t, i) (step keys from a
// std::mt19937_64 seeded with the seed, per-token values from the splitmix64 stream of that key),
// so a seeded request produces the same tokens for any batch composition and on every platform
// (short of libm rounding deciding a near-exact tie), and the noise does not depend on which
// tokens survive truncation. Cost: O(vocab) per token; no full-vocabulary sort.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "common/request_limits.h"
#include "common/status.h"

namespace deepshard::model {

// Most top-n logprobs one token may carry (the request-limits table's; same as OpenAI).
inline constexpr int kMaxTopLogprobs = limits::kMaxTopLogprobs;

struct SamplingParams {
    // Ranges: common/request_limits.h (validate() checks them).
    float temperature = 0.0f;         // 0 = greedy
    int32_t top_k = 0;                // 0 = off
    float top_p = 1.0f;               // (0, 1]; 1 = off
    float min_p = 0.0f;               // [0, 1]; 0 = off
    float repetition_penalty = 1.0f;  // > 0; 1 = off
    float frequency_penalty = 0.0f;   // 0 = off
    float presence_penalty = 0.0f;    // 0 = off
    uint64_t seed = 0;                // used when has_seed; otherwise the Sampler seeds itself randomly
    bool has_seed = false;
    int max_tokens = 16;                  // enforced by the caller (generate()); 0 = the caller's default
    bool ignore_eos = false;              // enforced by the caller
    std::vector<std::string> stop;        // stop strings, enforced by the caller (they need the tokenizer)
    std::vector<int32_t> stop_token_ids;  // enforced by the caller
    int logprobs = 0;                     // top-n logprobs per token, 0..kMaxTopLogprobs

    // OK, or kInvalidArgument naming the first bad field ("sampling.top_p: ..."). With
    // vocab_size > 0 also checks that stop_token_ids and logprobs fit the vocabulary.
    Status validate(int64_t vocab_size = 0) const;
};

struct SampleResult {
    int32_t token = -1;
    float logprob = 0.0f;  // of `token`, always filled (see the file comment for which distribution)
    // The `params.logprobs` most likely tokens, most likely first (lower id first on ties).
    std::vector<std::pair<int32_t, float>> top_logprobs;
};

// Sampling state of one sequence: its parameters, seeded RNG and token history (for penalties).
// Not thread-safe; distinct Samplers may be used from distinct threads at once (the O(vocab)
// scratch space is per thread, so an idle Sampler holds only its history).
class Sampler {
public:
    // `params` should have passed validate(); out-of-range values are neutralised (treated as
    // "off" / greedy) instead of crashing. `prompt` feeds the repetition penalty. Ids outside the
    // vocabulary given to sample() are ignored.
    Sampler(const SamplingParams& params, std::span<const int32_t> prompt);

    // Picks the next token from one row of logits (non-empty; NaN counts as -inf). Does not record
    // the token: call accept() with the token actually appended (it may differ, e.g. when forced).
    SampleResult sample(std::span<const float> logits);

    // sample() with the step key given: sample(l) == sample_with_key(l, next_step_key()). For samplers
    // that run elsewhere (the CUDA engine's device sampler draws the key here and decides on the GPU).
    SampleResult sample_with_key(std::span<const float> logits, uint64_t step_key);
    // Draws the next step's key from the seeded RNG (what sample() does first).
    uint64_t next_step_key() { return step_rng_(); }

    // Appends a token to the history that the penalties see.
    void accept(int32_t token);

    // The history the penalties use: distinct prompt + generated ids, and generated id -> count.
    const std::unordered_set<int32_t>& seen() const { return seen_; }
    const std::unordered_map<int32_t, int32_t>& generated() const { return generated_; }

    const SamplingParams& params() const { return params_; }
    uint64_t seed() const { return seed_; }  // the effective seed (random when !has_seed)

private:
    SamplingParams params_;
    uint64_t seed_ = 0;
    std::mt19937_64 step_rng_;                        // one key per sample() call
    std::unordered_set<int32_t> seen_;                // distinct prompt + generated ids
    std::unordered_map<int32_t, int32_t> generated_;  // generated id -> count
};

// Speculative decoding's verification (shard_node/speculative.h states the rule and why it keeps
// greedy and seeded outputs token for token): `rows` are the logits [drafts.size() + 1, vocab] at the
// last known token and at each draft; x_i = sampler.sample(row i), accepted into the sampler and
// emitted, continuing only while x_i equals draft i + 1. Returns the 1..drafts.size() + 1 emitted
// tokens' results.
std::vector<SampleResult> verify_drafts(Sampler& sampler, std::span<const float> rows, int64_t vocab,
                                        std::span<const int32_t> drafts);

}  // namespace deepshard::model
