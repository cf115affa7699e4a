// CPU MoE ops (kernels/moe.h): the routing decisions of the official model (group-limited top-k over
// biased sigmoid scores) and the by-expert grouping the MoE layer executes experts in.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "common/status.h"
#include "common/thread_pool.h"
#include "kernels/moe.h"

namespace deepshard::kernels {

void moe_route(const float* logits, int64_t T, int64_t ld, const float* bias, const RouteParams& p, int32_t* experts,
               float* weights) {
    const int64_t E = p.num_experts, K = p.top_k, G = p.n_group;
    DS_CHECK(E > 0 && K > 0 && K <= E && G > 0 && E % G == 0 && p.topk_group >= 1 && p.topk_group <= G)
        << "moe_route: bad routing parameters (experts " << E << ", top_k " << K << ", groups " << G << ", kept "
        << p.topk_group << ")";
    const int64_t per_group = E / G;
    ThreadPool::global().parallel_for(T, [&](int64_t tb, int64_t te) {
        std::vector<float> s(E), sb(E), gs(G);
        std::vector<int32_t> idx(E), gidx(G);
        std::vector<char> keep(G);
        for (int64_t t = tb; t < te; ++t) {
            const float* row = logits + t * ld;
            if (p.softmax) {
                float mx = *std::max_element(row, row + E), sum = 0.0f;
                for (int64_t e = 0; e < E; ++e) sum += (s[e] = std::exp(row[e] - mx));
                for (int64_t e = 0; e < E; ++e) s[e] /= sum;
            } else {
                for (int64_t e = 0; e < E; ++e) s[e] = 1.0f / (1.0f + std::exp(-row[e]));
            }
            for (int64_t e = 0; e < E; ++e) sb[e] = s[e] + (bias == nullptr ? 0.0f : bias[e]);
            if (G > 1) {
                for (int64_t gi = 0; gi < G; ++gi) {
                    const float* v = sb.data() + gi * per_group;
                    if (bias == nullptr) {
                        gs[gi] = *std::max_element(v, v + per_group);
                    } else {
                        // Sum of the top two (or the only one) in the group.
                        float m1 = -INFINITY, m2 = -INFINITY;
                        for (int64_t j = 0; j < per_group; ++j) {
                            if (v[j] > m1) {
                                m2 = m1;
                                m1 = v[j];
                            } else if (v[j] > m2) {
                                m2 = v[j];
                            }
                        }
                        gs[gi] = per_group >= 2 ? m1 + m2 : m1;
                    }
                }
                std::iota(gidx.begin(), gidx.end(), 0);
                std::partial_sort(gidx.begin(), gidx.begin() + p.topk_group, gidx.end(), [&](int32_t a, int32_t b) {
                    return gs[a] > gs[b] || (gs[a] == gs[b] && a < b);
                });
                std::fill(keep.begin(), keep.end(), 0);
                for (int64_t i = 0; i < p.topk_group; ++i) keep[gidx[i]] = 1;
                for (int64_t e = 0; e < E; ++e) {
                    if (!keep[e / per_group]) sb[e] = -INFINITY;
                }
            }
            std::iota(idx.begin(), idx.end(), 0);
            std::partial_sort(idx.begin(), idx.begin() + K, idx.end(),
                              [&](int32_t a, int32_t b) { return sb[a] > sb[b] || (sb[a] == sb[b] && a < b); });
            int32_t* ex = experts + t * K;
            float* w = weights + t * K;
            float wsum = 0.0f;
            for (int64_t k = 0; k < K; ++k) {
                ex[k] = idx[k];
                w[k] = s[idx[k]];
                wsum += w[k];
            }
            const bool normalize = !p.softmax && p.norm_topk_prob;
            for (int64_t k = 0; k < K; ++k) {
                if (normalize) w[k] /= wsum;
                w[k] *= p.routed_scaling_factor;
            }
        }
    });
}

void moe_group_by_expert(const int32_t* experts, const float* weights, int64_t T, int64_t K, int32_t num_experts,
                         int32_t* offsets, int32_t* tokens, float* pair_weights) {
    std::fill(offsets, offsets + num_experts + 1, 0);
    for (int64_t i = 0; i < T * K; ++i) {
        DS_CHECK(experts[i] >= 0 && experts[i] < num_experts)
            << "moe_group_by_expert: token " << i / K << " routed to expert " << experts[i] << " of " << num_experts;
        ++offsets[experts[i] + 1];
    }
    for (int32_t e = 0; e < num_experts; ++e) offsets[e + 1] += offsets[e];
    std::vector<int32_t> fill(offsets, offsets + num_experts);
    for (int64_t t = 0; t < T; ++t) {
        for (int64_t k = 0; k < K; ++k) {
            const int32_t e = experts[t * K + k];
            const int32_t at = fill[e]++;
            tokens[at] = static_cast<int32_t>(t);
            pair_weights[at] = weights[t * K + k];
        }
    }
}

void gather_tokens(const float* x, int64_t ldx, const int32_t* rows, int64_t n, int64_t cols, float* out,
                   int64_t ldo) {
    for (int64_t i = 0; i < n; ++i) {
        std::copy(x + rows[i] * ldx, x + rows[i] * ldx + cols, out + i * ldo);
    }
}

void scatter_add_weighted(const float* src, int64_t lds, int64_t n, int64_t cols, const int32_t* rows, const float* w,
                          float* y, int64_t ldy) {
    for (int64_t i = 0; i < n; ++i) {
        float* dst = y + rows[i] * ldy;
        const float wi = w[i];
        const float* s = src + i * lds;
        for (int64_t j = 0; j < cols; ++j) dst[j] += wi * s[j];
    }
}

void residual_add(float* h, const float* x, int64_t n) {
    for (int64_t i = 0; i < n; ++i) h[i] += x[i];
}

}  // namespace deepshard::kernels
