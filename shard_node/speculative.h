// Speculative decoding on the shard job's last stage (issue 13, part 3): the verification rule and
// the per-chunk outcome the pipeline reports (shard_node/pipeline.h drives it; the MTP module that
// drafts is model::Engine::mtp_draft).
//
// The rule. A chunk ends with k drafts d_1..d_k after the last known token; the main model's logits
// at its last k+1 positions are p_0..p_k (p_i predicts the token after d_i, p_0 the one after the
// known token). For i = 0, 1, ...: x_i = the sequence's sampler applied to p_i (exactly the call
// non-speculative decoding would make for that token: same penalties, same step key); emit x_i;
// continue only while i < k and x_i == d_{i+1}. So 1..k+1 tokens are emitted, each one the token
// plain decoding emits at that position: greedy requests take the longest matching prefix plus the
// model's own next token, and seeded sampled requests stay token-for-token identical too. For a
// deterministic (greedy) draft this is the standard speculative-sampling rule (accept d with
// probability min(1, p(d)/q(d)) = p(d) since q is one-hot; on rejection draw from the normalized
// max(0, p - q), i.e. p without d): "draw x ~ p, accept iff x == d" has exactly that law.
// speculative_accept() below is the general rule for a draft distribution q, used by the tests to
// check that claim; the pipeline drafts greedily and uses verify_drafts().
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "model/sampling.h"

namespace deepshard::shard_node {

// The rule itself (model/sampling.h, shared with `deepshard generate --speculative mtp`).
using model::verify_drafts;

// The general speculative-sampling step (Leviathan et al. 2023; Chen et al. 2023) for one draft
// token d drawn from q: accept with probability min(1, p(d)/q(d)); otherwise return a draw from the
// normalized max(0, p - q). p and q are probability vectors of equal length. Returns the token and
// whether the draft was accepted.
struct AcceptDecision {
    int32_t token = -1;
    bool accepted = false;
};
AcceptDecision speculative_accept(std::span<const float> p, std::span<const float> q, int32_t draft,
                                  std::mt19937_64& rng);

// What a chunk with SeqWork.propose produced on the last stage.
struct SpecOutcome {
    bool active = false;
    std::vector<model::SampleResult> emitted;  // the sampled chunk's tokens (1..num_draft+1)
    std::vector<int32_t> drafts;               // for the next step
};

}  // namespace deepshard::shard_node
