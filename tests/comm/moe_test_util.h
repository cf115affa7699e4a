// Shared by the MoE layout (in-process) and dispatch (multi-rank) tests: deterministic random
// routing per rank, a toy expert function, and the serial reference.
#pragma once

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "comm/ep/moe_layout.h"

namespace deepshard::comm::ep::testing {

struct RankInput {
    size_t num_tokens = 0;
    std::vector<float> hidden;       // [num_tokens, hidden_dim]
    std::vector<int32_t> expert_ids; // [num_tokens, top_k] distinct per token, random order
    std::vector<float> weights;
    Routing routing(int top_k) const { return Routing{num_tokens, top_k, expert_ids, weights}; }
};

inline RankInput make_rank_input(int rank, size_t num_tokens, size_t hidden_dim, int num_experts, int top_k,
                                 uint32_t seed) {
    std::mt19937 rng(seed * 7919u + static_cast<uint32_t>(rank));
    std::uniform_real_distribution<float> val(-1.0f, 1.0f);
    RankInput in;
    in.num_tokens = num_tokens;
    in.hidden.resize(num_tokens * hidden_dim);
    for (auto& v : in.hidden) {
        v = val(rng);
    }
    std::vector<int32_t> experts(static_cast<size_t>(num_experts));
    for (size_t t = 0; t < num_tokens; ++t) {
        for (int e = 0; e < num_experts; ++e) {
            experts[static_cast<size_t>(e)] = e;
        }
        std::shuffle(experts.begin(), experts.end(), rng);
        for (int k = 0; k < top_k; ++k) {
            in.expert_ids.push_back(experts[static_cast<size_t>(k)]);
            in.weights.push_back(std::uniform_real_distribution<float>(0.0f, 1.0f)(rng));
        }
    }
    return in;
}

// Toy expert: y = x * (1 + e/4) + e * h / 100 (elementwise).
inline void apply_expert(int expert, const float* x, size_t hidden_dim, float* y) {
    const float scale = 1.0f + static_cast<float>(expert) * 0.25f;
    for (size_t h = 0; h < hidden_dim; ++h) {
        y[h] = x[h] * scale + static_cast<float>(expert) * static_cast<float>(h) * 0.01f;
    }
}

// Expert outputs for every received row.
inline std::vector<float> run_experts(const ReceivedTokens& rt) {
    std::vector<float> out(rt.num_rows() * rt.hidden_dim);
    for (size_t r = 0; r < rt.num_rows(); ++r) {
        apply_expert(rt.row_expert[r], rt.hidden.data() + static_cast<size_t>(rt.row_token[r]) * rt.hidden_dim,
                     rt.hidden_dim, out.data() + r * rt.hidden_dim);
    }
    return out;
}

// Serial reference: out[t] = sum over experts in ascending id of w * expert(x).
inline std::vector<float> serial_reference(const RankInput& in, size_t hidden_dim, int top_k) {
    const size_t k = static_cast<size_t>(top_k);
    std::vector<float> out(in.num_tokens * hidden_dim, 0.0f);
    std::vector<float> y(hidden_dim);
    for (size_t t = 0; t < in.num_tokens; ++t) {
        std::vector<std::pair<int32_t, float>> ch;
        for (size_t j = 0; j < k; ++j) {
            ch.emplace_back(in.expert_ids[t * k + j], in.weights[t * k + j]);
        }
        std::sort(ch.begin(), ch.end());
        float* o = out.data() + t * hidden_dim;
        for (const auto& [e, w] : ch) {
            apply_expert(e, in.hidden.data() + t * hidden_dim, hidden_dim, y.data());
            for (size_t h = 0; h < hidden_dim; ++h) {
                o[h] += w * y[h];
            }
        }
    }
    return out;
}

}  // namespace deepshard::comm::ep::testing
