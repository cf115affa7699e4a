// MoE ops (MODEL_SPEC §2 "MoE"): routing of tokens to experts, grouping the (token, expert) pairs of
// a step by expert, gathering an expert's tokens into a dense block and scattering its weighted
// outputs back. The CUDA twins are in kernels/cuda (moe_gate.cu: moe_gate, same RouteParams).
// Pure functions of their arguments (no model/ types), float32 throughout.
#pragma once

#include <cstdint>
#include <span>

#include "kernels/kernels.h"
#include "kernels/weight_view.h"

namespace deepshard::kernels {

// Routing parameters from config.json (shared with the CUDA gate, see cuda/device_math.h).
struct RouteParams {
    int32_t num_experts = 0;      // E (n_routed_experts)
    int32_t n_group = 1;          // groups of E / n_group contiguous experts
    int32_t topk_group = 1;       // groups kept
    int32_t top_k = 0;            // num_experts_per_tok
    bool softmax = false;         // scoring_func "softmax" instead of "sigmoid"
    bool norm_topk_prob = true;   // renormalize the chosen weights (sigmoid scoring only)
    float routed_scaling_factor = 1.0f;
};

// Routes T tokens: logits [T, E] with row stride ld (router outputs x . gate^T), bias [E]
// (e_score_correction_bias, used for selection only) or nullptr. Scores are sigmoid (or softmax);
// groups ranked by the sum of their top two biased scores (their max without a bias), the best
// topk_group kept, then the top_k biased scores of the kept groups chosen (larger first, lower id on
// ties); weights are the unbiased scores of the chosen, normalized (sigmoid + norm_topk_prob) and
// multiplied by routed_scaling_factor. Writes experts [T, top_k] (selection order) and weights.
void moe_route(const float* logits, int64_t T, int64_t ld, const float* bias, const RouteParams& p, int32_t* experts,
               float* weights);

// Groups the T*K routed pairs by expert (a stable counting sort): for expert e, entries
// [offsets[e], offsets[e+1]) of `tokens` / `pair_weights` are its tokens in increasing token order and
// their routing weights. offsets has num_experts + 1 entries; tokens and pair_weights T*K. Expert ids
// outside [0, num_experts) are a DS_CHECK failure.
void moe_group_by_expert(const int32_t* experts, const float* weights, int64_t T, int64_t K, int32_t num_experts,
                         int32_t* offsets, int32_t* tokens, float* pair_weights);

// out[i, :] = x[rows[i], :] for i < n (cols values; row strides ldx, ldo).
void gather_tokens(const float* x, int64_t ldx, const int32_t* rows, int64_t n, int64_t cols, float* out, int64_t ldo);

// y[rows[i], :] += w[i] * src[i, :] for i < n, in increasing i (so accumulation order is the caller's).
void scatter_add_weighted(const float* src, int64_t lds, int64_t n, int64_t cols, const int32_t* rows, const float* w,
                          float* y, int64_t ldy);

// One SwiGLU MLP (routed or shared expert): Expert(x) = (silu(x W1^T) * (x W3^T)) W2^T with W1, W3 =
// [inter, H] and W2 = [H, inter]. w1 == nullptr: an expert this rank does not hold.
struct ExpertMlp {
    const WeightView* w1 = nullptr;
    const WeightView* w3 = nullptr;
    const WeightView* w2 = nullptr;
};

// The MoE feed-forward of T tokens, executed by expert: y[t, :] = sum over t's routed pairs, in
// ascending expert id, of weight * Expert_e(x[t]), then + Shared(x[t]) when `shared` is given (the
// official accumulation order). The pairs come grouped by moe_group_by_expert (offsets, tokens,
// pair_weights); experts[e] for e < experts.size(), pairs of experts not held are skipped.
// Every held expert's weights are read once for all its tokens, in two parallel regions: the
// gate/up products + SiLU of every active expert (and the shared one), then the down projections
// split by columns of y, each column block summing all experts in order (deterministic, no atomics).
// y [T, H] (row stride H) is overwritten.
#if __cplusplus >= 202002L  // std::span; the .cu files include this header as C++17 (nvcc)
void moe_ffn(const float* x, int64_t T, int64_t H, const int32_t* offsets, const int32_t* tokens,
             const float* pair_weights, std::span<const ExpertMlp> experts, const ExpertMlp* shared, float* y,
             Numerics numerics = Numerics::kExact);
#endif

// h[i] += x[i] for i < n (the residual connection).
void residual_add(float* h, const float* x, int64_t n);

}  // namespace deepshard::kernels
