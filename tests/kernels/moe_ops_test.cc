// The MoE ops of kernels/moe.h: routing against a brute-force transcription of MODEL_SPEC §2 "MoE"
// (full sorts instead of partial ones) on DeepSeek-V3's shape (256 experts, 8 groups, 4 kept, top-8)
// and others; the by-expert grouping, gather, weighted scatter-add and residual add.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/moe.h"
#include "tests/kernels/kernel_test_util.h"

namespace deepshard::kernels {
namespace {

using testing::random_vec;

// Experts and weights of one token, the way the spec states it.
void route_ref(const float* logits, const float* bias, const RouteParams& p, std::vector<int32_t>* ex,
               std::vector<double>* w) {
    const int E = p.num_experts, G = p.n_group, per = E / G;
    std::vector<double> s(E), sb(E);
    double mx = *std::max_element(logits, logits + E), sum = 0;
    for (int e = 0; e < E; ++e) {
        s[e] = p.softmax ? std::exp(static_cast<double>(logits[e]) - mx) : 1.0 / (1.0 + std::exp(-double(logits[e])));
        sum += s[e];
    }
    for (int e = 0; e < E; ++e) {
        if (p.softmax) s[e] /= sum;
        sb[e] = s[e] + (bias ? bias[e] : 0.0);
    }
    if (G > 1) {
        std::vector<std::pair<double, int>> gs;
        for (int g = 0; g < G; ++g) {
            std::vector<double> v(sb.begin() + g * per, sb.begin() + (g + 1) * per);
            std::sort(v.rbegin(), v.rend());
            gs.push_back({bias ? v[0] + (per >= 2 ? v[1] : 0.0) : v[0], g});
        }
        std::sort(gs.begin(), gs.end(), [](auto a, auto b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
        std::vector<bool> keep(G, false);
        for (int i = 0; i < p.topk_group; ++i) keep[gs[i].second] = true;
        for (int e = 0; e < E; ++e) {
            if (!keep[e / per]) sb[e] = -INFINITY;
        }
    }
    std::vector<int> idx(E);
    std::iota(idx.begin(), idx.end(), 0);
    std::sort(idx.begin(), idx.end(), [&](int a, int b) { return sb[a] > sb[b] || (sb[a] == sb[b] && a < b); });
    ex->assign(idx.begin(), idx.begin() + p.top_k);
    w->clear();
    double ws = 0;
    for (int k = 0; k < p.top_k; ++k) ws += s[idx[k]];
    for (int k = 0; k < p.top_k; ++k) {
        const bool norm = !p.softmax && p.norm_topk_prob;
        w->push_back((norm ? s[idx[k]] / ws : s[idx[k]]) * p.routed_scaling_factor);
    }
}

struct RouteCase {
    const char* name;
    RouteParams p;
    bool bias;
};

TEST(MoeOps, RouteMatchesTheSpecOnManyShapes) {
    const RouteCase cases[] = {
        {"deepseek-v3", {256, 8, 4, 8, false, true, 2.5f}, true},
        {"deepseek-v3-no-bias", {256, 8, 4, 8, false, true, 2.5f}, false},
        {"one-group", {64, 1, 1, 6, false, true, 1.0f}, true},
        {"softmax", {64, 4, 2, 6, true, false, 1.0f}, false},
        {"no-renorm", {32, 4, 3, 4, false, false, 1.5f}, true},
    };
    for (const RouteCase& rc : cases) {
        SCOPED_TRACE(rc.name);
        const int64_t T = 37, E = rc.p.num_experts, K = rc.p.top_k, ld = E + 3;
        const std::vector<float> logits = random_vec(T * ld, 41);
        const std::vector<float> bias = random_vec(E, 42);
        std::vector<int32_t> ex(T * K);
        std::vector<float> w(T * K);
        moe_route(logits.data(), T, ld, rc.bias ? bias.data() : nullptr, rc.p, ex.data(), w.data());
        for (int64_t t = 0; t < T; ++t) {
            std::vector<int32_t> rex;
            std::vector<double> rw;
            route_ref(logits.data() + t * ld, rc.bias ? bias.data() : nullptr, rc.p, &rex, &rw);
            for (int64_t k = 0; k < K; ++k) {
                ASSERT_EQ(ex[t * K + k], rex[k]) << "token " << t << " slot " << k;
                ASSERT_NEAR(w[t * K + k], rw[k], 1e-5 * (1 + std::fabs(rw[k])));
            }
        }
    }
}

TEST(MoeOps, RouteBreaksTiesTowardsLowerIds) {
    const RouteParams p{16, 4, 2, 3, false, true, 1.0f};
    const std::vector<float> logits(16, 0.5f);  // every score equal
    std::vector<int32_t> ex(3);
    std::vector<float> w(3);
    moe_route(logits.data(), 1, 16, nullptr, p, ex.data(), w.data());
    EXPECT_EQ(ex, (std::vector<int32_t>{0, 1, 2}));  // groups 0 and 1 kept, lowest ids first
    for (float x : w) EXPECT_NEAR(x, 1.0f / 3, 1e-6);
}

TEST(MoeOps, GroupByExpertIsAStableCountingSort) {
    // 4 tokens, top-2 over 5 experts.
    const std::vector<int32_t> ex = {3, 1, 1, 4, 3, 0, 1, 3};
    const std::vector<float> w = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f, 0.8f};
    std::vector<int32_t> off(6), tok(8);
    std::vector<float> pw(8);
    moe_group_by_expert(ex.data(), w.data(), 4, 2, 5, off.data(), tok.data(), pw.data());
    EXPECT_EQ(off, (std::vector<int32_t>{0, 1, 4, 4, 7, 8}));
    EXPECT_EQ(tok, (std::vector<int32_t>{2, 0, 1, 3, 0, 2, 3, 1}));
    EXPECT_EQ(pw, (std::vector<float>{0.6f, 0.2f, 0.3f, 0.7f, 0.1f, 0.5f, 0.8f, 0.4f}));
}

TEST(MoeOpsDeathTest, ExpertIdOutsideThePoolIsCaught) {
    const std::vector<int32_t> ex = {0, 7};
    const std::vector<float> w = {1, 1};
    std::vector<int32_t> off(5), tok(2);
    std::vector<float> pw(2);
    EXPECT_DEATH(moe_group_by_expert(ex.data(), w.data(), 1, 2, 4, off.data(), tok.data(), pw.data()),
                 "routed to expert 7 of 4");
}

TEST(MoeOps, GatherScatterAndResidual) {
    const int64_t T = 5, H = 7;
    const std::vector<float> x = random_vec(T * (H + 1), 51);
    const std::vector<int32_t> rows = {4, 0, 4};
    std::vector<float> g(3 * H);
    gather_tokens(x.data(), H + 1, rows.data(), 3, H, g.data(), H);
    for (int i = 0; i < 3; ++i) {
        for (int j = 0; j < H; ++j) ASSERT_EQ(g[i * H + j], x[rows[i] * (H + 1) + j]);
    }
    std::vector<float> y(T * H, 1.0f);
    const std::vector<float> w = {2.0f, -1.0f, 0.5f};
    scatter_add_weighted(g.data(), H, 3, H, rows.data(), w.data(), y.data(), H);
    for (int j = 0; j < H; ++j) {
        EXPECT_EQ(y[4 * H + j], (1.0f + 2.0f * g[j]) + 0.5f * g[2 * H + j]);  // in order, row 4 twice
        EXPECT_EQ(y[0 * H + j], 1.0f - g[H + j]);
        EXPECT_EQ(y[2 * H + j], 1.0f);
    }
    std::vector<float> h = {1, 2, 3};
    const std::vector<float> d = {0.5f, -2, 4};
    residual_add(h.data(), d.data(), 3);
    EXPECT_EQ(h, (std::vector<float>{1.5f, 0, 7}));
}

}  // namespace
}  // namespace deepshard::kernels
