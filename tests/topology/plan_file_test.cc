// The plan file has one reader and one writer (topology/plan_file.h): what the writer writes reads
// back field for field, and bad files are refused naming the file and the field.
#include "topology/plan_file.h"

#include <gtest/gtest.h>

namespace deepshard::topology {
namespace {

PlanFile two_stage() {
    PlanFile f;
    f.world_size = 4;
    f.ranks_per_stage = 2;
    f.attention = "dp";
    f.stages = {{0, 3}, {3, 61}};
    f.expert_placement.assign(256, 0);
    for (int e = 128; e < 256; ++e) f.expert_placement[static_cast<size_t>(e)] = 1;
    f.kv_budget_bytes = int64_t{10} << 30;
    for (int r = 0; r < 4; ++r) {
        f.ranks.push_back({.rank = r, .stage = r / 2, .local = r % 2, .node = r / 2, .host = "n" + std::to_string(r / 2),
                           .gpu = r % 2, .device = "cuda", .numa = r % 2, .nic = "mlx5_0", .cpus = "0-13"});
    }
    return f;
}

TEST(PlanFile, WhatIsWrittenReadsBack) {
    const PlanFile f = two_stage();
    auto back = PlanFile::from_json(f.to_json().dump(), "p.json");
    ASSERT_TRUE(back.ok()) << back.status().message();
    EXPECT_EQ(back->world_size, 4);
    EXPECT_EQ(back->ranks_per_stage, 2);
    EXPECT_EQ(back->attention, "dp");
    ASSERT_EQ(back->stages.size(), 2u);
    EXPECT_EQ(back->stages[1].first_layer, 3);
    EXPECT_EQ(back->stages[1].last_layer, 61);
    EXPECT_EQ(back->expert_placement, f.expert_placement);
    EXPECT_EQ(back->kv_budget_bytes, f.kv_budget_bytes);
    ASSERT_EQ(back->ranks.size(), 4u);
    EXPECT_EQ(back->ranks[3].host, "n1");
    EXPECT_EQ(back->ranks[3].gpu, 1);
    EXPECT_EQ(back->ranks[3].device, "cuda");
    EXPECT_EQ(back->ranks[3].cpus, "0-13");
    EXPECT_EQ(back->to_json(), f.to_json());
}

TEST(PlanFile, RanksAreIndexedByTheirRankField) {
    auto p = PlanFile::from_json(R"({"world_size":2,"ranks":[{"rank":1,"host":"b"},{"rank":0,"host":"a"}]})");
    ASSERT_TRUE(p.ok()) << p.status().message();
    EXPECT_EQ(p->ranks[0].host, "a");
    EXPECT_EQ(p->ranks[1].host, "b");
    EXPECT_EQ(p->ranks_per_stage, 0);  // not given
    EXPECT_EQ(p->kv_budget_bytes, 0);
}

TEST(PlanFile, BadFilesNameTheFileAndField) {
    auto bad = [](const std::string& text) { return std::string(PlanFile::from_json(text, "x.json").status().message()); };
    EXPECT_NE(bad("[").find("x.json"), std::string::npos);
    EXPECT_NE(bad(R"({"world_size":0})").find("world_size"), std::string::npos);
    EXPECT_NE(bad(R"({"world_size":1,"attention":"sp"})").find("attention"), std::string::npos);
    EXPECT_NE(bad(R"({"world_size":1,"kv_budget_bytes":-1})").find("kv_budget_bytes"), std::string::npos);
    EXPECT_NE(bad(R"({"world_size":1,"kv_budget_bytes":"big"})").find("kv_budget_bytes"), std::string::npos);
    EXPECT_NE(bad(R"({"world_size":1,"stages":[{"first_layer":0}]})").find("last_layer"), std::string::npos);
    EXPECT_NE(bad(R"({"world_size":1,"expert_placement":[[0],[1]]})").find("different expert placements"),
              std::string::npos);
    EXPECT_NE(bad(R"({"world_size":1,"ranks":[{"rank":0,"numa":"zero"}]})").find("numa"), std::string::npos);
    EXPECT_NE(bad(R"({"world_size":2,"ranks":[{"rank":0},{"rank":0}]})").find("repeated"), std::string::npos);
}

}  // namespace
}  // namespace deepshard::topology
