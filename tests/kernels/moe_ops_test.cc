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

// moe_ffn (experts executed by expert, shared expert fused, column-split down projection) against
// a per-pair double reference of the SwiGLU experts, for a decode token, a small batch (direct
// kernels) and a prefill-sized batch (GEMM), with an expert not held here, on every ISA; fast is
// held to the BF16 tolerance and must equal exact where the ISA has no BF16 path.
TEST(MoeOps, ExpertFfnMatchesPerPairReference) {
    testing::IsaGuard guard;
    const int64_t H = 160, I = 96, E = 6, K = 2;
    std::vector<testing::TestWeight> w;
    for (int64_t e = 0; e <= E; ++e) {  // expert E is the shared one
        const DType dt = e % 2 ? DType::kBF16 : DType::kF8E4M3;
        w.emplace_back(dt, I, H, static_cast<uint32_t>(100 + 3 * e));
        w.emplace_back(dt, I, H, static_cast<uint32_t>(101 + 3 * e));
        w.emplace_back(dt, H, I, static_cast<uint32_t>(102 + 3 * e));
    }
    std::vector<WeightView> views;
    for (const auto& t : w) views.push_back(t.view());
    std::vector<ExpertMlp> experts(E);
    for (int64_t e = 0; e < E; ++e) {
        if (e != 3) experts[e] = {&views[3 * e], &views[3 * e + 1], &views[3 * e + 2]};  // 3: not held
    }
    const ExpertMlp shared{&views[3 * E], &views[3 * E + 1], &views[3 * E + 2]};
    // Double reference of one expert on one row.
    auto expert_ref = [&](int64_t e, const float* x, std::vector<double>& out) {
        std::vector<double> act(I);
        for (int64_t i = 0; i < I; ++i) {
            double g = 0, u = 0;
            for (int64_t c = 0; c < H; ++c) {
                g += double(x[c]) * views[3 * e].at(i, c);
                u += double(x[c]) * views[3 * e + 1].at(i, c);
            }
            act[i] = g / (1.0 + std::exp(-g)) * u;
        }
        out.assign(H, 0.0);
        for (int64_t c = 0; c < H; ++c) {
            for (int64_t i = 0; i < I; ++i) out[c] += act[i] * views[3 * e + 2].at(c, i);
        }
    };
    for (int64_t T : {1, 5, 40}) {
        const std::vector<float> x = random_vec(T * H, static_cast<uint32_t>(T));
        std::vector<int32_t> ex(T * K);
        std::vector<float> wt(T * K);
        std::mt19937 rng(static_cast<uint32_t>(T));
        for (int64_t t = 0; t < T; ++t) {
            ex[t * K] = static_cast<int32_t>(rng() % E);
            ex[t * K + 1] = static_cast<int32_t>((ex[t * K] + 1 + rng() % (E - 1)) % E);
            wt[t * K] = 0.3f + 0.1f * static_cast<float>(t % 3);
            wt[t * K + 1] = 1.1f;
        }
        std::vector<int32_t> offsets(E + 1), tokens(T * K);
        std::vector<float> pw(T * K);
        moe_group_by_expert(ex.data(), wt.data(), T, K, static_cast<int32_t>(E), offsets.data(), tokens.data(), pw.data());
        std::vector<double> ref(T * H, 0.0), one;
        double mag = 0;
        for (int64_t t = 0; t < T; ++t) {
            for (int64_t k = 0; k < K; ++k) {
                if (ex[t * K + k] == 3) continue;
                expert_ref(ex[t * K + k], x.data() + t * H, one);
                for (int64_t c = 0; c < H; ++c) ref[t * H + c] += wt[t * K + k] * one[c];
            }
            expert_ref(E, x.data() + t * H, one);
            for (int64_t c = 0; c < H; ++c) {
                ref[t * H + c] += one[c];
                mag = std::max(mag, std::fabs(ref[t * H + c]));
            }
        }
        for (Isa isa : testing::runnable_isas()) {
            set_isa(isa);
            std::vector<float> ye(T * H, 7.0f), yf(T * H, 7.0f);
            moe_ffn(x.data(), T, H, offsets.data(), tokens.data(), pw.data(), experts, &shared, ye.data());
            moe_ffn(x.data(), T, H, offsets.data(), tokens.data(), pw.data(), experts, &shared, yf.data(),
                    Numerics::kFast);
            double worst_e = 0, worst_f = 0;
            for (int64_t i = 0; i < T * H; ++i) {
                worst_e = std::max(worst_e, std::fabs(ye[i] - ref[i]));
                worst_f = std::max(worst_f, std::fabs(yf[i] - ref[i]));
            }
            EXPECT_LT(worst_e, 1e-5 * mag) << isa_name(isa) << " T=" << T;
            EXPECT_LT(worst_f, (fast_is_exact() ? 1e-5 : 2e-2) * mag) << isa_name(isa) << " T=" << T;
            if (fast_is_exact()) {
                EXPECT_EQ(ye, yf) << isa_name(isa);
            }
        }
    }
}

}  // namespace
}  // namespace deepshard::kernels
