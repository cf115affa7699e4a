// What `deepshard plan` prints is what the shard job registers (issue 14, item 5): a plan made on
// this host without --kv-budget-mb sizes the KV cache from the host's free memory and the workload,
// in the CPU engine's float32 storage; a shard job started from it (no --kv-budget-mb) takes that
// budget, and the KV capacity the coordinator registers equals the plan's, to within one block per
// KV domain. Real processes: deepshard plan, deepshard-coordinator and a 2-rank mpirun job.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "tests/coordinator/live_util.h"
#include "tests/util/subprocess.h"

namespace deepshard {
namespace {

using namespace testing_util;
using namespace std::chrono_literals;

nlohmann::json read_json(const std::string& path) {
    std::ifstream in(path);
    return nlohmann::json::parse(in, nullptr, false);
}

void expect_registered_kv_matches_plan(const std::string& layout, int ranks, std::vector<std::string> plan_args,
                                       const std::string& expect_reason, bool mtp = false) {
    ensure_test_env();
    const std::string dir = make_temp_dir("ds_plan_kv");
    LiveCluster cluster;
    cluster.set_plan_args(std::move(plan_args));
    std::string model = source_path("testdata/golden/tiny-bf16");
    if (mtp) {
        // The same shape with an MTP module: the last stage's engine keeps the module's latent cache in
        // one more layer slot of its blocks, so the plan must divide that stage's budget by one more.
        model = dir + "/tiny-mtp";
        auto r = run_command({binary_path("deepshard"), "make-model", "--preset", "tiny", "--dtype", "bf16", "--seed",
                              "5", "--set", "num_nextn_predict_layers=1", "--shards", "1", "--out", model},
                             120s);
        ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
    }
    ASSERT_EQ(cluster.start_coordinator(model, dir, {}, layout, ranks), "");
    const nlohmann::json plan = read_json(cluster.plan_path());
    ASSERT_TRUE(plan.is_object());
    const int64_t budget = plan.at("kv_budget_bytes").get<int64_t>();
    const int64_t capacity = plan.at("kv_cache").at("capacity_tokens").get<int64_t>();
    // The CPU engine's cache: (kv_lora_rank + qk_rope_head_dim) float32 values per token per layer.
    EXPECT_EQ(plan.at("kv_cache").at("dtype"), "float32");
    EXPECT_EQ(plan.at("kv_cache").at("bytes_per_token_per_layer").get<int64_t>(), (64 + 16) * 4);
    EXPECT_NE(plan.at("kv_cache").at("budget_reason").get<std::string>().find(expect_reason), std::string::npos)
        << plan.at("kv_cache").dump();
    ASSERT_GT(budget, 0);
    ASSERT_GT(capacity, 0);

    cluster.start_shard_job();
    ASSERT_TRUE(cluster.wait_health(200, 180s)) << cluster.logs();
    const auto m = http_request(cluster.http(), "GET", "/metrics", "", {}, 10s);
    ASSERT_EQ(m.status, 200);
    const double blocks = metric_value(m.body, "deepshard_kv_capacity_blocks");
    ASSERT_GT(blocks, 0) << m.body;
    const int64_t block_size = 16;  // deepshard-shard's --kv-block-size default
    const int64_t registered = static_cast<int64_t>(blocks) * block_size;
    const int64_t domains = plan.at("attention") == "dp" ? plan.at("ranks_per_stage").get<int64_t>() : 1;
    EXPECT_LE(registered, capacity) << cluster.logs();
    EXPECT_GT(registered, capacity - domains * block_size) << "plan " << capacity << " tokens, job " << registered
                                                           << "\n"
                                                           << cluster.logs();
    std::printf("[plan-kv] %s: plan %lld tokens (budget %lld B), registered %lld tokens\n", layout.c_str(),
                static_cast<long long>(capacity), static_cast<long long>(budget), static_cast<long long>(registered));
    // Every rank says where its budget came from.
    const std::string shard_log = cluster.shard()->log();
    EXPECT_NE(shard_log.find("budget from the plan"), std::string::npos) << shard_log;
    std::filesystem::remove_all(dir);
}

// The default: what memory leaves, capped at what the (small) workload keeps resident.
TEST(PlanKvTest, TheJobRegistersThePlansKvCapacity) {
    expect_registered_kv_matches_plan(
        "pp=2,tp=1", 2, {"--max-batch-per-rank", "3", "--prompt-tokens", "300", "--output-tokens", "100"},
        "what the workload keeps resident");
}

// A budget fixed at plan time travels in the plan too (DP attention: one KV domain per rank).
TEST(PlanKvTest, AFixedPlanBudgetIsWhatRegisters) {
    expect_registered_kv_matches_plan("pp=1,attn=dp,ep=2", 2, {"--kv-budget-mb", "8"}, "--kv-budget-mb");
}

// A model with an MTP module (loaded on the last stage whether or not --speculative is used): its
// KV layer slot is in the plan's count, so the last stage's tokens still match what registers.
TEST(PlanKvTest, TheMtpModulesKvSlotIsPlanned) {
    expect_registered_kv_matches_plan("pp=2,tp=1", 2, {"--kv-budget-mb", "8"}, "--kv-budget-mb", /*mtp=*/true);
}

}  // namespace
}  // namespace deepshard
