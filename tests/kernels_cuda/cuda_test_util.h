// Helpers of the CUDA kernel tests: device detection with a visible skip, host<->device copies, and
// the CPU routing reference (a verbatim transcription of the routing loop of model/transformer.cc
// Impl::moe, which is private there) plus the decision margins used to tell real mismatches from
// last-bit near-ties (test-backend-ops style).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_handles.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_math.h"

namespace deepshard::kernels::cuda::testing {

// Skips the current test, visibly, when no CUDA device can be used.
#define DS_REQUIRE_CUDA()                                                              \
    do {                                                                               \
        std::string _ds_why;                                                           \
        if (::deepshard::kernels::cuda::device_count(&_ds_why) == 0) {                 \
            GTEST_SKIP() << "no CUDA device: " << _ds_why;                             \
        }                                                                              \
    } while (0)

template <typename T>
DeviceBuffer to_device(const std::vector<T>& v) {
    auto b = DeviceBuffer::create(std::max<size_t>(1, v.size() * sizeof(T)));
    EXPECT_TRUE(b.ok()) << b.status().to_string();
    if (!b.ok()) return DeviceBuffer();
    Status s = b->upload(v.data(), v.size() * sizeof(T));
    EXPECT_TRUE(s.ok()) << s.to_string();
    return std::move(b).value();
}

template <typename T>
std::vector<T> from_device(const DeviceBuffer& b, size_t n) {
    std::vector<T> v(n);
    Status s = cudaDeviceSynchronize() == cudaSuccess ? b.download(v.data(), n * sizeof(T))
                                                     : Status(StatusCode::kCuda, "cudaDeviceSynchronize failed");
    EXPECT_TRUE(s.ok()) << s.to_string();
    return v;
}

struct RouteResult {
    std::vector<int32_t> experts;
    std::vector<float> weights;
    double margin = INFINITY;  // smallest score gap at a selection boundary (group or expert)
};

// The CPU routing of model/transformer.cc (scores, bias for selection only, group limit, top-k,
// normalized + scaled weights), for one token.
inline RouteResult reference_route(const RouteParams& c, const float* row, const float* bias_or_null) {
    const int64_t E = c.num_experts, K = c.top_k, G = c.n_group, per_group = E / G;
    const bool has_bias = bias_or_null != nullptr;
    std::vector<float> s(E), sb(E), gs(G);
    std::vector<int32_t> idx(E), gidx(G);
    RouteResult out;
    if (c.softmax) {
        float mx = *std::max_element(row, row + E), sum = 0.0f;
        for (int64_t e = 0; e < E; ++e) sum += (s[e] = std::exp(row[e] - mx));
        for (int64_t e = 0; e < E; ++e) s[e] /= sum;
    } else {
        for (int64_t e = 0; e < E; ++e) s[e] = 1.0f / (1.0f + std::exp(-row[e]));
    }
    for (int64_t e = 0; e < E; ++e) sb[e] = s[e] + (has_bias ? bias_or_null[e] : 0.0f);
    if (G > 1) {
        for (int64_t gi = 0; gi < G; ++gi) {
            const float* v = sb.data() + gi * per_group;
            if (!has_bias) {
                gs[gi] = *std::max_element(v, v + per_group);
            } else {
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
        std::sort(gidx.begin(), gidx.end(),
                  [&](int32_t p, int32_t q) { return gs[p] > gs[q] || (gs[p] == gs[q] && p < q); });
        if (c.topk_group < G) {
            out.margin = std::min(out.margin, static_cast<double>(gs[gidx[c.topk_group - 1]]) - gs[gidx[c.topk_group]]);
        }
        std::vector<bool> keep(G, false);
        for (int64_t i = 0; i < c.topk_group; ++i) keep[gidx[i]] = true;
        for (int64_t e = 0; e < E; ++e) {
            if (!keep[e / per_group]) sb[e] = -INFINITY;
        }
    }
    std::iota(idx.begin(), idx.end(), 0);
    std::sort(idx.begin(), idx.end(), [&](int32_t p, int32_t q) { return sb[p] > sb[q] || (sb[p] == sb[q] && p < q); });
    for (int64_t k = 0; k + 1 < std::min<int64_t>(K + 1, E); ++k) {
        const double gap = static_cast<double>(sb[idx[k]]) - sb[idx[k + 1]];
        if (std::isfinite(gap)) out.margin = std::min(out.margin, gap);
    }
    float wsum = 0.0f;
    for (int64_t k = 0; k < K; ++k) {
        out.experts.push_back(idx[k]);
        out.weights.push_back(s[idx[k]]);
        wsum += s[idx[k]];
    }
    const bool normalize = !c.softmax && c.norm_topk_prob;
    for (int64_t k = 0; k < K; ++k) {
        if (normalize) out.weights[k] /= wsum;
        out.weights[k] *= c.routed_scaling_factor;
    }
    return out;
}

// Routing test cases: DeepSeek-V3's gate and variations of every parameter.
struct RouteCase {
    const char* name;
    RouteParams p;
    bool bias;
};
inline std::vector<RouteCase> route_cases() {
    auto rp = [](int32_t E, int32_t G, int32_t tg, int32_t K, bool softmax, bool norm, float scale) {
        RouteParams p;
        p.num_experts = E;
        p.n_group = G;
        p.topk_group = tg;
        p.top_k = K;
        p.softmax = softmax;
        p.norm_topk_prob = norm;
        p.routed_scaling_factor = scale;
        return p;
    };
    return {
        {"deepseek_v3", rp(256, 8, 4, 8, false, true, 2.5f), true},
        {"no_bias_max_group_score", rp(256, 8, 4, 8, false, true, 2.5f), false},
        {"one_group", rp(64, 1, 1, 6, false, true, 1.0f), true},
        {"no_norm", rp(64, 4, 2, 4, false, false, 1.5f), true},
        {"softmax", rp(64, 4, 2, 4, true, true, 1.0f), false},
        {"one_expert_per_group", rp(16, 16, 5, 3, false, true, 2.0f), true},
        {"k_equals_kept", rp(32, 4, 2, 16, false, true, 1.0f), true},
    };
}

}  // namespace deepshard::kernels::cuda::testing
