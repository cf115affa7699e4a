// Prefill/decode disaggregation (issue 13, part 4) on a live localhost cluster: one
// deepshard-coordinator with --prefill-control, a decode job (pp=2: two stages, layers split) on the
// main control port and a prefill job (tp=2: one stage, heads split, another layout) started with
// --kv-listen, on the tiny-bf16 golden model. The same requests (greedy and seeded sampled, plain
// and SSE, HTTP and Thrift, all at once so steps batch several sequences) are served
//  1. by the decode job alone (no prefill job yet): the reference;
//  2. disaggregated: every prompt is prefilled by the prefill job, its KV fetched over UCX by both
//     decode stages, outputs identical to 1 and greedy ones to `deepshard generate`; the /metrics
//     counters show the hand-offs and imported positions, no failed import, equal KV views;
//  3. with a prefill job that cannot stage its exports (--kv-export-mb 0): every fetch fails, the
//     decode job computes the prompts instead, outputs still identical;
//  4. after the prefill job is killed: requests go to the decode job alone, outputs identical.
#include <filesystem>
#include <future>
#include <thread>

#include <gtest/gtest.h>

#include "tests/coordinator/completion_util.h"
#include "tests/coordinator/live_util.h"
#include "tests/util/subprocess.h"

namespace deepshard {
namespace {

using namespace testing_util;
using json = nlohmann::json;
using std::chrono::seconds;

bool wait_metric(uint16_t port, const std::string& name, double value, seconds timeout) {
    const auto until = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < until) {
        if (scrape(port, name) == value) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return false;
}

struct Case {
    std::vector<int> prompt;
    bool stream;
    double temperature;
    int seed;
};

std::vector<Case> cases() {
    // Lengths around and across KV blocks of 16 (the imports end mid-block and on a boundary).
    return {{prompt_of(9, 1, 4096), false, 0, 0},   {prompt_of(33, 2, 4096), true, 0, 0},
            {prompt_of(17, 3, 4096), false, 0, 0},  {prompt_of(40, 4, 4096), true, 0.8, 11},
            {prompt_of(16, 5, 4096), false, 1.0, 12}};
}
constexpr int kOut = 24;

// All cases at once (HTTP) plus one greedy Thrift call, in case order (Thrift last).
std::vector<std::vector<int>> serve_all(const LiveCluster& c) {
    std::vector<std::future<std::vector<int>>> outs;
    const uint16_t http = c.http();
    for (const Case& k : cases()) {
        outs.push_back(std::async(std::launch::async,
                                  [=] { return completion(http, k.prompt, kOut, k.stream, k.temperature, k.seed); }));
    }
    const uint16_t thrift = static_cast<uint16_t>(c.port("thrift"));
    outs.push_back(std::async(std::launch::async, [=] { return thrift_completion(thrift, cases()[2].prompt, kOut, false); }));
    std::vector<std::vector<int>> got;
    for (auto& f : outs) got.push_back(f.get());
    return got;
}

// Phases 1-2 always, 3-4 (failures) when `failures`. Each job has two ranks.
void run_disaggregation(const std::string& decode_layout, const std::string& prefill_layout, bool failures) {
    ensure_test_env();
    const std::string model = source_path("testdata/golden/tiny-bf16");
    const std::string dir = make_temp_dir("ds_pd_");
    // The prefill job's own plan.
    const std::string prefill_plan = dir + "/prefill_plan.json";
    auto planned = run_command({binary_path("deepshard"), "plan", "--model", model, "--layout", prefill_layout,
                                "--numerics", "exact", "--kv-budget-mb", "64", "--out", prefill_plan},
                               seconds(60));
    ASSERT_EQ(planned.exit_code, 0) << planned.out << planned.err;

    LiveCluster cluster;
    ASSERT_EQ(cluster.start_coordinator(model, dir,
                                        {"--name", "m", "--thrift", "127.0.0.1:0", "--prefill-control", "127.0.0.1:0",
                                         "--prefill-plan", prefill_plan, "--pd-min-prompt-tokens", "2",
                                         // Exact accounting of imported positions: no phase reuses an earlier one's KV.
                                         "--no-prefix-cache"},
                                        decode_layout, 2),
              "");
    cluster.start_shard_job("decode.log");
    ASSERT_TRUE(cluster.wait_health(200, seconds(240))) << cluster.logs();
    const uint16_t http = cluster.http();
    const int prefill_port = cluster.port("prefill_control");
    ASSERT_GT(prefill_port, 0);
    EXPECT_EQ(scrape(http, "deepshard_prefill_job_up"), 0);
    if (failures) {
        // A job on the prefill port that exports nothing is refused with the reason, and leaves.
        auto wrong = cluster.start_job(prefill_plan, prefill_port, 2, {}, "prefill-nolisten.log");
        EXPECT_TRUE(wrong->wait_exit(seconds(120)).has_value()) << wrong->log();
        EXPECT_NE(cluster.coordinator().log().find("a prefill job must export its KV"), std::string::npos)
            << cluster.logs();
        EXPECT_EQ(scrape(http, "deepshard_prefill_job_up"), 0);
    }

    // 1. The decode job alone.
    const auto alone = serve_all(cluster);
    EXPECT_EQ(scrape(http, "deepshard_pd_handoffs_total"), 0);
    const auto cs = cases();
    for (size_t i = 0; i < cs.size(); ++i) {
        ASSERT_EQ(alone[i].size(), static_cast<size_t>(kOut)) << "case " << i;
        if (cs[i].temperature == 0) {
            EXPECT_EQ(alone[i], reference(model, cs[i].prompt, kOut)) << "case " << i;
        }
    }
    EXPECT_EQ(alone.back(), alone[2]) << "Thrift and HTTP agree";

    // 2. Disaggregated.
    {
        auto prefill = cluster.start_job(prefill_plan, prefill_port, 2, {"--kv-listen", "127.0.0.1"}, "prefill.log");
        ASSERT_TRUE(wait_metric(http, "deepshard_prefill_job_up", 1, seconds(240)))
            << cluster.logs() << "\nprefill job:\n" << prefill->log();
        const auto pd = serve_all(cluster);
        for (size_t i = 0; i < pd.size(); ++i) {
            EXPECT_EQ(pd[i], alone[i]) << "case " << i << " (logs in " << dir << ")";
        }
        // Every request went through both jobs, and all prompt positions but the last were fetched.
        int64_t imported = 0;
        for (const Case& k : cs) imported += static_cast<int64_t>(k.prompt.size()) - 1;
        imported += static_cast<int64_t>(cs[2].prompt.size()) - 1;  // the Thrift call
        EXPECT_EQ(scrape(http, "deepshard_pd_handoffs_total"), static_cast<double>(cs.size() + 1)) << cluster.logs();
        EXPECT_EQ(scrape(http, "deepshard_kv_imported_tokens_total"), static_cast<double>(imported)) << cluster.logs();
        EXPECT_EQ(scrape(http, "deepshard_kv_import_failures_total"), 0) << cluster.logs();
        EXPECT_EQ(scrape(http, "deepshard_pd_fallbacks_total"), 0);
        EXPECT_GT(scrape(http, "deepshard_prefill_prompt_tokens_total"), 0);
        EXPECT_EQ(scrape(http, "deepshard_kv_view_mismatches_total"), 0) << cluster.logs();
        const json h = http_request(http, "GET", "/health").json();
        EXPECT_FALSE(h.value("prefill_job", std::string()).empty()) << h.dump();
    }  // the prefill job is killed here
    ASSERT_TRUE(wait_metric(http, "deepshard_prefill_job_up", 0, seconds(60))) << cluster.logs();
    std::error_code ec;
    if (!failures) {
        if (!::testing::Test::HasFailure()) std::filesystem::remove_all(dir, ec);
        return;
    }

    // 3. A prefill job whose exports cannot be staged: every fetch fails and is computed instead.
    {
        auto prefill = cluster.start_job(prefill_plan, prefill_port, 2, {"--kv-listen", "127.0.0.1", "--kv-export-mb", "0"},
                                         "prefill-noexport.log");
        ASSERT_TRUE(wait_metric(http, "deepshard_prefill_job_up", 1, seconds(240))) << prefill->log();
        const double failures = scrape(http, "deepshard_kv_import_failures_total");
        const auto fallback = serve_all(cluster);
        for (size_t i = 0; i < fallback.size(); ++i) EXPECT_EQ(fallback[i], alone[i]) << "case " << i;
        EXPECT_EQ(scrape(http, "deepshard_kv_import_failures_total"), failures + static_cast<double>(cs.size() + 1))
            << cluster.logs();
        EXPECT_EQ(scrape(http, "deepshard_kv_view_mismatches_total"), 0) << cluster.logs();
    }
    ASSERT_TRUE(wait_metric(http, "deepshard_prefill_job_up", 0, seconds(60))) << cluster.logs();

    // 4. No prefill job any more: the decode job serves alone again.
    const double handoffs = scrape(http, "deepshard_pd_handoffs_total");
    const auto after = serve_all(cluster);
    for (size_t i = 0; i < after.size(); ++i) EXPECT_EQ(after[i], alone[i]) << "case " << i;
    EXPECT_EQ(scrape(http, "deepshard_pd_handoffs_total"), handoffs);
    if (!::testing::Test::HasFailure()) std::filesystem::remove_all(dir, ec);  // kept with the logs otherwise
}

// Pipeline stages on the decode side (each stage fetches its own layers) from a tensor-parallel
// prefill job (local 0 of its one stage serves every layer); then the failure paths.
TEST(DisaggregationTest, PrefillAndDecodeJobsServeWhatOneJobServes) {
    run_disaggregation("pp=2", "tp=2", true);
}

// Data-parallel attention on both sides: each prefill rank exports its own sequences (the
// coordinator picks the exporter of the leg's KV domain) and each decode rank fetches for the
// sequences it owns.
TEST(DisaggregationTest, DataParallelAttentionOnBothSides) {
    run_disaggregation("pp=1,tp=2,attn=dp", "pp=1,tp=2,attn=dp", false);
}

}  // namespace
}  // namespace deepshard
