// The distributed model gives the single process's answers (issue 4): for every layout and every
// golden set, `mpirun -np N deepshard-shard --plan P --tokens ... --json --dump-logits F` must
// produce the golden greedy continuation and prompt logits within the golden tolerance.
#include <gtest/gtest.h>

#include <cctype>
#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "common/npy.h"
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
    auto planned = run_command({binary_path("deepshard"), "plan", "--model", model, "--layout", c.layout, "--out", plan},
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

INSTANTIATE_TEST_SUITE_P(Layouts, ShardEquivalenceTest, testing::ValuesIn(cases()), name_of);

}  // namespace
}  // namespace deepshard
