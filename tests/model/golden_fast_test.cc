// The `fast` numerics mode (BF16 dot products) against the official float32 golden sets, judged
// routing first (tests/model/routing_judge.h derives every bound, with u = 2^-8 for BF16). Both modes
// run the same prompt; the exact engine is the float32 reference (golden_test.cc holds it to the
// official outputs). On CPUs without AVX512-BF16, fast == exact (kernels.h) and the test checks exactly that.
#include <gtest/gtest.h>

#include <algorithm>

#include "common/npy.h"
#include "kernels/kernels.h"
#include "model/checkpoint.h"
#include "model/engine.h"
#include "model/shard_weights.h"
#include "tests/model/routing_judge.h"

namespace deepshard::model {
namespace {

using golden::RoutingJudge;
using golden::Trace;

class GoldenFastTest : public testing::TestWithParam<std::string> {
protected:
    void SetUp() override {
        dir_ = golden::golden_dir(GetParam());
        auto ck = Checkpoint::open(dir_);
        ASSERT_TRUE(ck.ok()) << ck.status().to_string();
        auto w = ShardWeights::load(std::shared_ptr<const Checkpoint>(std::move(ck).value()), ShardSpec{});
        ASSERT_TRUE(w.ok()) << w.status().to_string();
        weights_ = *w;
        tokens_ = golden::read_json(dir_ + "/tokens.json");
    }

    std::unique_ptr<Engine> make(kernels::Numerics numerics) {
        EngineOptions opt;
        opt.kv_budget_bytes = 64 << 20;
        opt.kv_block_size = 4;
        opt.numerics = numerics;
        auto e = create_engine(Device::kCpu, weights_, opt);
        EXPECT_TRUE(e.ok()) << e.status().to_string();
        return e.ok() ? std::move(e).value() : nullptr;
    }

    Trace prefill(kernels::Numerics numerics) {
        auto engine = make(numerics);
        if (engine == nullptr) return {};
        return golden::traced_prefill(*engine, tokens_["tokens"].get<std::vector<int32_t>>());
    }

    RoutingJudge judge() const { return RoutingJudge(weights_, golden::kBf16Unit, GetParam()); }

    std::string dir_;
    std::shared_ptr<const ShardWeights> weights_;
    nlohmann::json tokens_;
};

TEST_P(GoldenFastTest, RoutingFirstThenLogitsAgainstTheFloat32Reference) {
    const Trace exact = prefill(kernels::Numerics::kExact);
    const Trace fast = prefill(kernels::Numerics::kFast);
    ASSERT_FALSE(exact.logits.empty());
    if (kernels::fast_is_exact()) {
        EXPECT_EQ(fast.logits, exact.logits) << "without BF16 dot products fast must compute exactly what exact does";
        return;
    }
    judge().judge_prefill(golden::read_json(dir_ + "/moe_routing.json"), exact, fast);
}

TEST_P(GoldenFastTest, GreedyDecodeThroughTheKvCacheAgreesUntilARoutingNearTie) {
    auto fast = make(kernels::Numerics::kFast);
    auto exact = make(kernels::Numerics::kExact);
    ASSERT_NE(fast, nullptr);
    ASSERT_NE(exact, nullptr);
    auto ref = read_npy_f32(dir_ + "/logits_gen.npy");
    ASSERT_TRUE(ref.ok());
    judge().judge_greedy(*fast, *exact, tokens_["prompt_for_generation"].get<std::vector<int32_t>>(),
                         tokens_["greedy_generated"].get<std::vector<int32_t>>(), ref->data);
}

INSTANTIATE_TEST_SUITE_P(Golden, GoldenFastTest, testing::Values("tiny-bf16", "small-fp8"),
                         [](const testing::TestParamInfo<std::string>& i) {
                             std::string n = i.param;
                             std::replace(n.begin(), n.end(), '-', '_');
                             return n;
                         });

}  // namespace
}  // namespace deepshard::model
