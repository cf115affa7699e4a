// Routing-first judgement of an engine that rounds (CPU `fast`: BF16 dot products; CUDA `fast`: FP8 or
// BF16 GEMM activations and a BF16 KV cache) against the exact float32 engine on a golden set (the golden
// READMEs: "for such an engine, compare the routing first and judge the logits only where no expert
// flipped"). Shared by golden_fast_test (CPU) and golden_cuda_test (CUDA); golden_test uses its file helpers.
//
// What is derived, per golden set, from u = the relative error of one rounded matmul stage (BF16:
// 2^-8; FP8 e4m3 activations: 2^-4) by first-order propagation of one relative rounding per rounded
// stage through the residual stream:
//  - router scores: the selection ranks sigmoid(logit) + bias; the router matmul itself stays exact,
//    its input at MoE layer l went through 2 + l rounded stages (embedding path, l blocks, this
//    block's attention), and sigmoid' <= 1/4, so at layers and positions whose inputs saw no different
//    expert choice upstream |score_fast - score_exact| <= 1/4 * u * (2 + l) * sum_k |x_k gate_ek|.
//    The largest measured change is the mode's noise.
//  - routing: a flip needs two scores to cross, i.e. a move of at least half the margin each, so
//    wherever the golden expert margin exceeds 2 * noise and the group margin 4 * noise (a group
//    score sums two expert scores), fast must choose exactly the golden experts. Where the margin is
//    below that a flip is allowed but counted and shown; a flip at a larger margin fails.
//  - logits: at positions where no expert flipped at any layer for this or an earlier position,
//    |fast - exact| <= u * sum_k |h_k W_vk| * (2 + L) for every vocabulary entry v, where h is the
//    final-norm output, W the head and 2 + L counts the rounded stages a logit depends on (head, the
//    L blocks, the embedding path). The measured error and the bound are printed.
//  - greedy decode through the KV cache, both engines side by side: while the routing agrees, the
//    logits stay within the same bound, and fast's token equals the golden one unless the golden
//    top-1/top-2 margin is below twice that step's logit error. At the first step where the routing
//    differs, the router scores of the flipped layer must still be within their bound (so the flip
//    is a near tie the rounding explains, never a wrong expert at a large margin); judging stops
//    there, since a flipped expert legitimately changes everything downstream.
#pragma once

#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/engine.h"
#include "model/shard_weights.h"

namespace deepshard::model::golden {

inline constexpr double kBf16Unit = 0x1p-8;
inline constexpr double kFp8Unit = 0x1p-4;

// testdata/golden/<name> under DS_SOURCE_DIR (or the working directory).
std::string golden_dir(const std::string& name);
// The golden files come from Python's json module, which writes the non-JSON literals Infinity and NaN
// (e.g. `expert_margin` when the group limit alone decides the experts): mapped to values nlohmann parses
// (+-1e308, null) before reading.
nlohmann::json read_json(const std::string& path);

struct RouterCall {
    std::vector<float> input, logits;
};

// What one step reported through the hooks (positions of the step in order).
struct Trace {
    std::vector<float> logits;                                   // [T, V] or [1, V]
    std::vector<float> final_norm;                               // [T, H]
    std::map<int64_t, std::vector<std::set<int32_t>>> experts;   // layer -> per position
    std::map<int64_t, std::vector<RouterCall>> router;           // layer -> per position

    void attach(ForwardHooks& hooks);
    void clear() { *this = Trace{}; }
};

// One prefill of the golden prompt (all logits) with a trace; gtest failures on errors.
Trace traced_prefill(Engine& engine, const std::vector<int32_t>& prompt);

class RoutingJudge {
public:
    // weights: the host weights both engines were built from (router gates, biases, head); unit: u above;
    // label: printed in front of the summaries.
    RoutingJudge(std::shared_ptr<const ShardWeights> weights, double unit, std::string label)
        : weights_(std::move(weights)), unit_(unit), label_(std::move(label)) {}

    // Largest |score_fast - score_exact| over the experts of one router call, and its ratio to the bound.
    std::pair<double, double> score_change(int64_t layer, const RouterCall& exact, const RouterCall& fast) const;
    // Largest |fast - exact| logit over the vocabulary, and its ratio to the bound (h: exact final norm).
    std::pair<double, double> logit_change(const float* h, const float* exact, const float* fast) const;

    // The prefill judgement (header), as gtest expectations; `golden_routing` is moe_routing.json.
    void judge_prefill(const nlohmann::json& golden_routing, const Trace& exact, const Trace& fast) const;
    // The greedy judgement: both engines step the same chunks; `ref_logits` is logits_gen.npy.
    void judge_greedy(Engine& fast, Engine& exact, const std::vector<int32_t>& prompt,
                      const std::vector<int32_t>& expected, const std::vector<float>& ref_logits) const;

private:
    float score(int64_t layer, const std::vector<float>& logits, int64_t e) const;

    std::shared_ptr<const ShardWeights> weights_;
    double unit_;
    std::string label_;
};

}  // namespace deepshard::model::golden
