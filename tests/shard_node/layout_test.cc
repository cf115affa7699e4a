#include "shard_node/layout.h"

#include <gtest/gtest.h>

namespace deepshard::shard_node {
namespace {

model::ModelConfig config() {
    model::ModelConfig c;
    c.vocab_size = 4096;
    c.hidden_size = 256;
    c.intermediate_size = 512;
    c.moe_intermediate_size = 128;
    c.num_hidden_layers = 5;
    c.first_k_dense_replace = 1;
    c.num_attention_heads = 8;
    c.n_routed_experts = 16;
    c.n_shared_experts = 1;
    c.num_experts_per_tok = 4;
    return c;
}

TEST(LayoutTest, EvenSplitsLayersAndExperts) {
    const auto c = config();
    Layout l = Layout::even(c, 2, 2, AttentionMode::kTensorParallel);
    ASSERT_TRUE(l.validate(c).ok());
    EXPECT_EQ(l.stages[0].first_layer, 0);
    EXPECT_EQ(l.stages[0].last_layer, 3);
    EXPECT_EQ(l.stages[1].last_layer, 5);
    EXPECT_EQ(l.stage_of(3), 1);
    EXPECT_EQ(l.local_of(3), 1);
    // Rank 3: second stage, second half of heads, vocab and experts; head but no embedding.
    model::ShardSpec s = l.shard_spec(c, 3);
    EXPECT_EQ(s.first_layer, 3);
    EXPECT_FALSE(s.has_embedding);
    EXPECT_TRUE(s.has_head);
    EXPECT_EQ(s.head_begin, 4);
    EXPECT_EQ(s.head_end, 8);
    EXPECT_EQ(s.vocab_begin, 2048);
    EXPECT_EQ(s.tp_rank, 1);
    ASSERT_EQ(s.experts.size(), 16u);
    EXPECT_FALSE(s.experts[7]);
    EXPECT_TRUE(s.experts[8]);
}

TEST(LayoutTest, DataParallelKeepsAllHeadsAndVocab) {
    const auto c = config();
    Layout l = Layout::even(c, 1, 4, AttentionMode::kDataParallel);
    ASSERT_TRUE(l.validate(c).ok());
    model::ShardSpec s = l.shard_spec(c, 2);
    EXPECT_EQ(s.head_end, -1);
    EXPECT_EQ(s.vocab_end, -1);
    EXPECT_EQ(s.tp_size, 1);
    EXPECT_TRUE(s.experts[8]);
    EXPECT_FALSE(s.experts[12]);
}

TEST(LayoutTest, RejectsLayoutsThatDoNotFit) {
    auto c = config();
    Layout l = Layout::even(c, 1, 3, AttentionMode::kTensorParallel);
    Status s = l.validate(c);
    EXPECT_FALSE(s.ok());
    EXPECT_NE(s.message().find("heads"), std::string::npos) << s.message();
    l = Layout::even(c, 2, 1, AttentionMode::kTensorParallel);
    l.stages[1].first_layer = 2;
    EXPECT_NE(l.validate(c).message().find("continue"), std::string::npos);
    l = Layout::even(c, 2, 1, AttentionMode::kTensorParallel);
    l.world_size = 3;
    EXPECT_FALSE(l.validate(c).ok());
}

TEST(LayoutTest, ReadsPlanJson) {
    const auto c = config();
    const std::string plan = R"({"version":1,"world_size":4,"ranks_per_stage":2,"attention":"dp",
        "stages":[{"index":0,"first_layer":0,"last_layer":2,"ranks":[0,1]},{"index":1,"first_layer":2,"last_layer":5,"ranks":[2,3]}],
        "expert_placement":[[0,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1],[0,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1]]})";
    auto l = Layout::from_plan_json(plan, c);
    ASSERT_TRUE(l.ok()) << l.status().to_string();
    EXPECT_EQ(l->attention, AttentionMode::kDataParallel);
    EXPECT_EQ(l->stages[1].first_layer, 2);
    EXPECT_EQ(l->expert_owner[9], 1);
    EXPECT_FALSE(Layout::from_plan_json("{\"world_size\":2}", c).ok());
    EXPECT_FALSE(Layout::from_plan_json("not json", c).ok());
}

TEST(LayoutTest, ReadsEachRanksDevice) {
    const auto c = config();
    const std::string base = R"({"world_size":2,"ranks_per_stage":1,
        "stages":[{"first_layer":0,"last_layer":2},{"first_layer":2,"last_layer":5}],
        "ranks":[)";
    auto l = Layout::from_plan_json(base + R"({"rank":0,"gpu":-1},{"rank":1,"gpu":3,"device":"cuda"}]})", c);
    ASSERT_TRUE(l.ok()) << l.status().to_string();
    EXPECT_EQ(l->device_of(0).device, model::Device::kCpu);  // no device field: the CPU
    EXPECT_EQ(l->device_of(1).device, model::Device::kCuda);
    EXPECT_EQ(l->device_of(1).ordinal, 3);
    // A plan without "ranks" (older files) runs everything on the CPU.
    auto old = Layout::from_plan_json(R"({"world_size":2,"ranks_per_stage":1,
        "stages":[{"first_layer":0,"last_layer":2},{"first_layer":2,"last_layer":5}]})", c);
    ASSERT_TRUE(old.ok()) << old.status().to_string();
    EXPECT_EQ(old->device_of(1).device, model::Device::kCpu);
    auto bad = Layout::from_plan_json(base + R"({"rank":0,"device":"tpu"}]})", c);
    ASSERT_FALSE(bad.ok());
    EXPECT_NE(bad.status().message().find("tpu"), std::string::npos) << bad.status().message();
    bad = Layout::from_plan_json(base + R"({"rank":1,"device":"cuda"}]})", c);
    ASSERT_FALSE(bad.ok());
    EXPECT_NE(bad.status().message().find("gpu index"), std::string::npos) << bad.status().message();
    bad = Layout::from_plan_json(base + R"({"rank":2,"device":"cpu"}]})", c);
    ASSERT_FALSE(bad.ok());
    EXPECT_NE(bad.status().message().find("rank 2"), std::string::npos) << bad.status().message();
}

TEST(LayoutTest, ReadsThePlansNumericsFastByDefault) {
    const auto c = config();
    const std::string stages = R"("world_size":2,"ranks_per_stage":1,
        "stages":[{"first_layer":0,"last_layer":2},{"first_layer":2,"last_layer":5}])";
    auto none = Layout::from_plan_json("{" + stages + "}", c);
    ASSERT_TRUE(none.ok()) << none.status().to_string();
    EXPECT_EQ(none->numerics, kernels::Numerics::kFast);  // the serving default
    auto exact = Layout::from_plan_json("{" + stages + R"(,"numerics":"exact"})", c);
    ASSERT_TRUE(exact.ok()) << exact.status().to_string();
    EXPECT_EQ(exact->numerics, kernels::Numerics::kExact);
    auto fast = Layout::from_plan_json("{" + stages + R"(,"numerics":"fast"})", c);
    ASSERT_TRUE(fast.ok()) << fast.status().to_string();
    EXPECT_EQ(fast->numerics, kernels::Numerics::kFast);
    auto bad = Layout::from_plan_json("{" + stages + R"(,"numerics":"bf16"})", c);
    ASSERT_FALSE(bad.ok());
    EXPECT_NE(bad.status().message().find("numerics"), std::string::npos) << bad.status().message();
    EXPECT_NE(bad.status().message().find("bf16"), std::string::npos) << bad.status().message();
}

}  // namespace
}  // namespace deepshard::shard_node
