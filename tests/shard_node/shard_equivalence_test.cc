// The distributed model gives the single process's answers (issue 4): for every layout and every
// golden set, `mpirun -np N deepshard-shard --plan P --tokens ... --json --dump-logits F` must
// produce the golden greedy continuation and prompt logits within the golden tolerance. Those runs
// use `--numerics exact` plans (the float32 reference); the fast default is checked separately:
// the distributed fast model gives the single process's fast answers.
#include <gtest/gtest.h>

#include <cctype>
#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "common/npy.h"
#include "kernels/kernels.h"
#include "tests/util/subprocess.h"

namespace deepshard {
namespace {

using testing_util::binary_path;
using testing_util::run_command;
using testing_util::source_path;

struct Case {
    std::string golden;
    std::string layout;  // `deepshard plan --layout` argument
    int np;
};

std::string name_of(const testing::TestParamInfo<Case>& i) {
    std::string n = i.param.golden + "_" + i.param.layout;
    for (char& ch : n) {
        if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
    }
    return n;
}

class ShardEquivalenceTest : public testing::TestWithParam<Case> {};

TEST_P(ShardEquivalenceTest, MatchesGolden) {
    const Case& c = GetParam();
    const std::string model = source_path("testdata/golden/" + c.golden);
    const std::string dir = testing_util::make_temp_dir("ds_equiv_");
    const std::string plan = dir + "/plan.json";
    auto planned = run_command(
        {binary_path("deepshard"), "plan", "--model", model, "--layout", c.layout, "--numerics", "exact", "--out", plan,
         // a small KV pool: every rank commits the plan's budget when it starts
         "--kv-budget-mb", "64"},
        std::chrono::seconds(60));
    ASSERT_EQ(planned.exit_code, 0) << planned.out << planned.err;

    std::ifstream tin(model + "/tokens.json");
    const auto tokens = nlohmann::json::parse(tin);
    std::string prompt;
    for (int t : tokens["tokens"]) prompt += (prompt.empty() ? "" : ",") + std::to_string(t);

    std::vector<std::string> cmd = testing_util::mpirun_prefix(c.np);
    for (const std::string& a : {binary_path("deepshard-shard"), std::string("--model"), model, std::string("--plan"),
                                 plan, std::string("--tokens"), prompt, std::string("--max-tokens"), std::string("16"),
                                 std::string("--ignore-eos"), std::string("--json"), std::string("--dump-logits"),
                                 dir + "/logits.npy", std::string("--timeout-ms"), std::string("60000")}) {
        cmd.push_back(a);
    }
    auto r = run_command(cmd, std::chrono::seconds(240));
    ASSERT_FALSE(r.timed_out) << r.err;
    ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
    // Rank 0 prints one JSON line.
    const auto line = r.out.substr(r.out.find('{'));
    const auto j = nlohmann::json::parse(line);
    EXPECT_EQ(j["generated_tokens"].get<std::vector<int>>(), tokens["greedy_generated"].get<std::vector<int>>());

    auto got = read_npy_f32(dir + "/logits.npy");
    auto want = read_npy_f32(model + "/logits_prefill.npy");
    ASSERT_TRUE(got.ok()) << got.status().to_string();
    ASSERT_TRUE(want.ok());
    ASSERT_EQ(got->shape, want->shape);
    float worst = 0;
    for (size_t i = 0; i < got->data.size(); ++i) worst = std::max(worst, std::fabs(got->data[i] - want->data[i]));
    EXPECT_LE(worst, 1e-4f);
}

std::vector<Case> cases() {
    std::vector<Case> out;
    for (const char* g : {"tiny-bf16", "small-fp8"}) {
        out.push_back({g, "pp=1,tp=1", 1});
        out.push_back({g, "pp=2,tp=1", 2});
        out.push_back({g, "pp=1,tp=2", 2});
        out.push_back({g, "pp=1,tp=4", 4});
        out.push_back({g, "pp=2,tp=2", 4});
        out.push_back({g, "pp=1,tp=4,attn=dp,ep=4", 4});
        out.push_back({g, "pp=2,tp=2,attn=dp,ep=2", 4});
    }
    return out;
}

float max_abs_diff(const NpyArray& a, const NpyArray& b) {
    float worst = 0;
    for (size_t i = 0; i < a.data.size() && i < b.data.size(); ++i) worst = std::max(worst, std::fabs(a.data[i] - b.data[i]));
    return worst;
}

// Plans are fast by default and deepshard-shard follows the plan (every rank says so); the
// distributed fast model stays as close to the float32 reference as `deepshard generate`'s fast run:
// splitting the matmuls changes which partial sums get rounded to BF16, so the two fast runs differ
// from each other by rounding noise of the same size as each differs from exact (measured: 0.022
// between them, 0.05 from exact on small-fp8); a wrong shard would be off by the logits' own scale.
// --numerics exact on the shard overrides the plan and gives the golden logits again.
TEST(ShardNumericsTest, FastIsThePlanDefaultAndTheShardFlagOverridesIt) {
    const std::string model = source_path("testdata/golden/small-fp8");
    const std::string dir = testing_util::make_temp_dir("ds_numerics_");
    const std::string plan = dir + "/plan.json";
    auto planned = run_command({binary_path("deepshard"), "plan", "--model", model, "--layout", "pp=1,tp=2", "--out", plan,
                                "--kv-budget-mb", "64"},
                               std::chrono::seconds(60));
    ASSERT_EQ(planned.exit_code, 0) << planned.out << planned.err;
    std::ifstream pin(plan);
    EXPECT_EQ(nlohmann::json::parse(pin).value("numerics", ""), "fast");
    std::ifstream tin(model + "/tokens.json");
    const auto tokens = nlohmann::json::parse(tin);
    std::string prompt;
    for (int t : tokens["tokens"]) prompt += (prompt.empty() ? "" : ",") + std::to_string(t);

    auto shard = [&](int np, const std::string& out, std::vector<std::string> extra) {
        std::vector<std::string> cmd = testing_util::mpirun_prefix(np);
        for (const std::string& a : {binary_path("deepshard-shard"), std::string("--model"), model, std::string("--plan"),
                                     plan, std::string("--tokens"), prompt, std::string("--max-tokens"), std::string("1"),
                                     std::string("--dump-logits"), out, std::string("--timeout-ms"), std::string("60000")}) {
            cmd.push_back(a);
        }
        cmd.insert(cmd.end(), extra.begin(), extra.end());
        return run_command(cmd, std::chrono::seconds(240));
    };
    auto fast = shard(2, dir + "/fast.npy", {});
    ASSERT_EQ(fast.exit_code, 0) << fast.out << fast.err;
    size_t ranks_fast = 0;
    // "(numerics fast, isa amx)": each CPU rank names its numerics and the ISA its kernels run.
    for (size_t p = fast.err.find("(numerics fast, isa "); p != std::string::npos;
         p = fast.err.find("(numerics fast, isa ", p + 1)) {
        ++ranks_fast;
    }
    EXPECT_EQ(ranks_fast, 2u) << fast.err;
    auto single = run_command({binary_path("deepshard"), "generate", "--model", model, "--tokens", prompt, "--max-tokens",
                               "1", "--dump-logits", dir + "/single.npy"},
                              std::chrono::seconds(120));
    ASSERT_EQ(single.exit_code, 0) << single.err;
    EXPECT_NE(single.err.find("numerics fast"), std::string::npos) << single.err;
    auto exact = shard(2, dir + "/exact.npy", {"--numerics", "exact"});
    ASSERT_EQ(exact.exit_code, 0) << exact.out << exact.err;
    EXPECT_NE(exact.err.find("(numerics exact, isa "), std::string::npos) << exact.err;

    auto got_fast = read_npy_f32(dir + "/fast.npy");
    auto got_single = read_npy_f32(dir + "/single.npy");
    auto got_exact = read_npy_f32(dir + "/exact.npy");
    auto golden = read_npy_f32(model + "/logits_prefill.npy");
    ASSERT_TRUE(got_fast.ok() && got_single.ok() && got_exact.ok() && golden.ok());
    ASSERT_EQ(got_fast->shape, golden->shape);
    ASSERT_EQ(got_single->shape, golden->shape);
    ASSERT_EQ(got_exact->shape, golden->shape);
    EXPECT_LE(max_abs_diff(*got_exact, *golden), 1e-4f);
    const float fast_vs_exact = max_abs_diff(*got_fast, *golden);
    const float single_vs_exact = max_abs_diff(*got_single, *golden);
    const float dist_vs_single = max_abs_diff(*got_fast, *got_single);
    std::printf("fast: max |distributed - exact| %.3g, |single process - exact| %.3g, |distributed - single| %.3g\n",
                fast_vs_exact, single_vs_exact, dist_vs_single);
    if (kernels::fast_is_exact()) {
        EXPECT_LE(fast_vs_exact, 1e-4f) << "without BF16 dot products fast is exact";
    } else {
        EXPECT_GT(fast_vs_exact, 1e-4f) << "the shard ran exact although the plan says fast";
        EXPECT_GT(single_vs_exact, 1e-4f) << "generate ran exact by default";
        EXPECT_LE(fast_vs_exact, 2 * single_vs_exact);
        EXPECT_LE(dist_vs_single, 2 * single_vs_exact);
    }
}

INSTANTIATE_TEST_SUITE_P(Layouts, ShardEquivalenceTest, testing::ValuesIn(cases()), name_of);

}  // namespace
}  // namespace deepshard
