// CUDA MoE gate against the CPU routing of model/transformer.cc for every RouteCase. Expert ids must
// match exactly except where the CPU's own decision margin is below the last-bit noise of the device
// expf (a near-tie that either side may break); those tokens are counted, not compared, and must stay rare.
#include <gtest/gtest.h>

#include <random>

#include "kernels/cuda/cuda_kernels.h"
#include "tests/kernels_cuda/cuda_test_util.h"

namespace deepshard::kernels::cuda {
namespace {

using testing::from_device;
using testing::reference_route;
using testing::route_cases;
using testing::to_device;

TEST(CudaMoeGate, MatchesCpuRouting) {
    DS_REQUIRE_CUDA();
    for (const auto& rc : route_cases()) {
        const int64_t T = 777, E = rc.p.num_experts, K = rc.p.top_k, ld = E + 4;
        std::mt19937 rng(99);
        std::normal_distribution<float> nd(0.0f, 2.0f);
        std::uniform_real_distribution<float> ub(-0.1f, 0.1f);
        std::vector<float> logits(T * ld), bias(E);
        for (float& f : logits) f = nd(rng);
        for (float& f : bias) f = ub(rng);
        for (int64_t i = 0; i < 40 * ld; ++i) logits[i] = std::round(logits[i]);  // exact ties
        auto dl = to_device(logits), db = to_device(bias);
        auto de = to_device(std::vector<int32_t>(T * K, -1));
        auto dw = to_device(std::vector<float>(T * K, 0.0f));
        Status s = moe_gate(dl.as<float>(), T, ld, rc.bias ? db.as<float>() : nullptr, rc.p, de.as<int32_t>(),
                            dw.as<float>(), nullptr);
        ASSERT_TRUE(s.ok()) << rc.name << ": " << s.to_string();
        auto ge = from_device<int32_t>(de, T * K);
        auto gw = from_device<float>(dw, T * K);
        int near_ties = 0;
        for (int64_t t = 0; t < T; ++t) {
            const auto want = reference_route(rc.p, logits.data() + t * ld, rc.bias ? bias.data() : nullptr);
            std::vector<int32_t> got(ge.begin() + t * K, ge.begin() + (t + 1) * K);
            if (want.margin < 1e-5 && want.margin > 0.0) {
                ++near_ties;
                continue;
            }
            ASSERT_EQ(got, want.experts) << rc.name << " token " << t << " (margin " << want.margin << ")";
            for (int64_t k = 0; k < K; ++k) {
                ASSERT_NEAR(gw[t * K + k], want.weights[k], 2e-6f * std::max(1.0f, std::fabs(want.weights[k])))
                    << rc.name << " token " << t << " k " << k;
            }
        }
        EXPECT_LT(near_ties, T / 20) << rc.name << ": too many near-tie tokens to be a fair test";
    }
}

}  // namespace
}  // namespace deepshard::kernels::cuda
