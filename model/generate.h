// Single-sequence generation loop over any step function: the in-process Transformer
// (`deepshard generate`) or the distributed shard job's driver mode. Prefill (in chunks), then
// one decode token per step, sampling with model/sampling, stopping on EOS, stop token ids,
// max_tokens, or when the caller's on_token callback says so (stop strings live there, since they
// need the tokenizer).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"
#include "model/sampling.h"
#include "model/engine.h"

namespace deepshard::model {

using StepFn = std::function<StatusOr<StepOutput>(std::span<const SeqChunk>)>;
// The MTP module's drafts (Engine::mtp_draft) for speculative decoding.
using DraftFn = std::function<StatusOr<std::vector<std::vector<int32_t>>>(std::span<const MtpChunk>)>;

struct GenerateRequest {
    uint64_t seq_id = 1;
    std::vector<int32_t> prompt;
    SamplingParams params;
    int32_t eos_id = 1;
    int64_t prefill_chunk = 512;   // tokens per prefill step
    bool prompt_logits = false;    // keep logits of every prompt position (teacher forced)
    // Speculative decoding with the MTP module (needs a DraftFn): drafts per step, 0 = off. Every
    // emitted token is the one plain decoding emits (model/sampling.h verify_drafts), so the output
    // is the same token for token, greedy or seeded.
    int draft_tokens = 0;
};

struct GenerateResult {
    std::vector<int32_t> tokens;          // generated ids (stop token included if it was EOS/stop id)
    std::vector<SampleResult> samples;    // per generated token (logprobs when asked)
    std::string finish_reason;            // "stop" (EOS / stop id / callback) or "length"
    std::vector<float> prompt_logits;     // [prompt, vocab] when prompt_logits
    int64_t vocab = 0;
    double prefill_seconds = 0;
    double decode_seconds = 0;
    // Speculative decoding: drafts sent for verification, drafts accepted, steps that verified drafts.
    int64_t spec_draft_tokens = 0;
    int64_t spec_accepted_tokens = 0;
    int64_t spec_verify_steps = 0;
};

// Called after each sampled token; return false to stop (finish_reason "stop").
using OnToken = std::function<bool(int32_t token)>;

StatusOr<GenerateResult> generate(const StepFn& step, const GenerateRequest& request, const OnToken& on_token = {},
                                  const DraftFn& draft = {});

}  // namespace deepshard::model
