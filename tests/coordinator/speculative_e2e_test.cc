// MTP speculative decoding (issue 13, part 3) on live localhost clusters: deepshard-coordinator
// --speculative mtp + an mpirun shard job, requests through HTTP (plain and SSE) and Thrift. The model is
// written by `deepshard make-model --set num_nextn_predict_layers=1 --mtp-init mirror` (a one-layer
// main model whose MTP module mirrors it, so drafts are accepted often and every path runs:
// accepted drafts, rejected ones rolled back, the bonus token). References:
//  - greedy outputs equal `deepshard generate` (one process, no speculation) token for token;
//  - seeded sampled outputs equal the same cluster layout without --speculative;
//  - drafts were sent and accepted (the /metrics counters), and the coordinator's KV view never
//    disagreed with the job's (rollback of rejected positions is exact on both sides).
// Layouts: one rank, pipeline pp=2 (2 ranks), tensor parallel tp=2 (2 ranks). And the error case: a
// model without an MTP module refuses --speculative mtp with a clear message.
#include <filesystem>
#include <future>

#include <gtest/gtest.h>

#include "tests/coordinator/completion_util.h"
#include "tests/coordinator/live_util.h"
#include "tests/util/subprocess.h"

namespace deepshard {
namespace {

using namespace testing_util;
using json = nlohmann::json;
using std::chrono::seconds;

class SpeculativeTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        ensure_test_env();
        dir_ = new std::string(make_temp_dir("ds_spec_model_"));
        model_ = new std::string(*dir_ + "/tiny-mtp");
        auto r = run_command({binary_path("deepshard"), "make-model", "--preset", "tiny", "--dtype", "bf16", "--seed", "5",
                              "--set", "num_hidden_layers=1", "--set", "first_k_dense_replace=0", "--set",
                              "num_nextn_predict_layers=1", "--mtp-init", "mirror", "--shards", "1", "--out", *model_},
                             seconds(300));
        ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
        // Two main layers for the pipeline (one per stage); the MTP block mirrors the second.
        model2_ = new std::string(*dir_ + "/tiny-mtp-2");
        r = run_command({binary_path("deepshard"), "make-model", "--preset", "tiny", "--dtype", "bf16", "--seed", "6",
                         "--set", "num_hidden_layers=2", "--set", "first_k_dense_replace=0", "--set",
                         "num_nextn_predict_layers=1", "--mtp-init", "mirror", "--shards", "1", "--out", *model2_},
                        seconds(300));
        ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
    }
    static void TearDownTestSuite() {
        std::error_code ec;
        if (dir_ != nullptr) std::filesystem::remove_all(*dir_, ec);
        delete dir_;
        delete model_;
        delete model2_;
        dir_ = model_ = model2_ = nullptr;
    }
    static std::string* dir_;
    static std::string* model_;
    static std::string* model2_;

    struct Case {
        std::vector<int> prompt;
        bool stream;
        double temperature;
        int seed;
    };
    static std::vector<Case> cases() {
        return {{prompt_of(9, 1, 4096), false, 0, 0},
                {prompt_of(23, 2, 4096), true, 0, 0},
                {prompt_of(40, 3, 4096), false, 0, 0},
                {prompt_of(12, 4, 4096), true, 0.8, 11},
                {prompt_of(17, 5, 4096), false, 1.0, 12}};
    }
    static constexpr int kOut = 40;

    // Runs the cases on a cluster of `layout` (all at once, so steps batch several sequences).
    static std::vector<std::vector<int>> serve(const std::string& model, const std::string& layout, int ranks, const std::vector<std::string>& args,
                                               double* drafts, double* accepted) {
        LiveCluster cluster;
        const std::string dir = make_temp_dir("ds_spec_");
        std::vector<std::string> all = {"--name", "m"};
        all.insert(all.end(), args.begin(), args.end());
        EXPECT_EQ(cluster.start_coordinator(model, dir, all, layout, ranks), "");
        cluster.start_shard_job();
        EXPECT_TRUE(cluster.wait_health(200, seconds(240))) << cluster.logs();
        const uint16_t http = cluster.http();
        std::vector<std::future<std::vector<int>>> outs;
        for (const Case& c : cases()) {
            outs.push_back(std::async(std::launch::async,
                                      [&, c] { return completion(http, c.prompt, kOut, c.stream, c.temperature, c.seed); }));
        }
        std::vector<std::vector<int>> got;
        for (auto& f : outs) got.push_back(f.get());
        EXPECT_EQ(scrape(http, "deepshard_kv_view_mismatches_total"), 0) << cluster.logs();
        *drafts = scrape(http, "deepshard_spec_draft_tokens_total");
        *accepted = scrape(http, "deepshard_spec_accepted_tokens_total");
        return got;
    }

    static void check_layout(const std::string& model, const std::string& layout, int ranks, int k,
                             double min_acceptance) {
        double drafts = 0, accepted = 0;
        const auto spec = serve(model, layout, ranks, {"--speculative", "mtp", "--draft-tokens", std::to_string(k)}, &drafts,
                                &accepted);
        double none_d = 0, none_a = 0;
        const auto plain = serve(model, layout, ranks, {}, &none_d, &none_a);
        EXPECT_EQ(none_d, -1) << "the speculative counters are exported only with --speculative";
        const auto cs = cases();
        for (size_t i = 0; i < cs.size(); ++i) {
            ASSERT_EQ(spec[i].size(), static_cast<size_t>(kOut)) << "case " << i;
            EXPECT_EQ(spec[i], plain[i]) << "case " << i << " (temperature " << cs[i].temperature << ")";
            if (cs[i].temperature == 0) {
                EXPECT_EQ(spec[i], reference(model, cs[i].prompt, kOut)) << "case " << i;
            }
        }
        // Drafts were verified, a real share accepted and some rejected (both paths ran).
        EXPECT_GT(drafts, 50) << layout;
        EXPECT_GT(accepted, min_acceptance * drafts) << layout;
        EXPECT_LT(accepted, drafts) << layout;
        std::printf("[ speculative ] %s k=%d: %.0f drafts, %.0f accepted (%.0f%%)\n", layout.c_str(), k, drafts, accepted,
                    drafts > 0 ? 100 * accepted / drafts : 0.0);
    }
};
std::string* SpeculativeTest::dir_ = nullptr;
std::string* SpeculativeTest::model_ = nullptr;
std::string* SpeculativeTest::model2_ = nullptr;

TEST_F(SpeculativeTest, SingleRankKeepsEveryOutput) {
    check_layout(*model_, "pp=1,tp=1", 1, 3, 0.2);
}

TEST_F(SpeculativeTest, PipelineParallelKeepsEveryOutput) {
    // The mirrored MTP block copies only the second of two layers: few drafts are right (outputs are
    // deterministic, so the count is too), enough to run the accept path across stages.
    check_layout(*model2_, "pp=2,tp=1", 2, 2, 0.0);
}

TEST_F(SpeculativeTest, TensorParallelKeepsEveryOutput) {
    check_layout(*model_, "pp=1,tp=2", 2, 2, 0.2);
}

TEST_F(SpeculativeTest, PreemptionAndPrefixCacheKeepEveryOutput) {
    // 8 KV blocks of 16 tokens: one request (24 + 40 tokens + 2 draft positions = 5 blocks) fits,
    // two do not, so sequences are preempted (their drafts' blocks with them) and recomputed, partly
    // from the prefix cache (two prompts share their first 32 tokens).
    LiveCluster cluster;
    const std::string dir = make_temp_dir("ds_spec_preempt_");
    ASSERT_EQ(cluster.start_coordinator(*model_, dir, {"--name", "m", "--speculative", "mtp", "--draft-tokens", "3",
                                                       "--http-threads", "6", "--thrift", "127.0.0.1:0"},
                                        "pp=1,tp=1", 1),
              "");
    cluster.set_shard_args({"--kv-blocks", "8"});
    cluster.start_shard_job();
    ASSERT_TRUE(cluster.wait_health(200, seconds(240))) << cluster.logs();
    const uint16_t http = cluster.http();
    std::vector<std::vector<int>> prompts;
    for (int i = 0; i < 4; ++i) prompts.push_back(prompt_of(24, 40 + i, 4096));
    const auto shared = prompt_of(32, 77, 4096);
    for (int i = 0; i < 2; ++i) {
        auto p = shared;
        const auto tail = prompt_of(4, 90 + i, 4096);
        p.insert(p.end(), tail.begin(), tail.end());
        prompts.push_back(p);
    }
    const uint16_t thrift = static_cast<uint16_t>(cluster.port("thrift"));
    std::vector<std::future<std::vector<int>>> outs;
    for (size_t i = 0; i < prompts.size(); ++i) {
        // HTTP plain and SSE, and two through Thrift (Generate and Submit/Poll).
        outs.push_back(std::async(std::launch::async, [&, i] {
            return i >= 2 && i < 4 ? thrift_completion(thrift, prompts[i], 40, i == 3)
                                   : completion(http, prompts[i], 40, i % 2 == 1);
        }));
    }
    for (size_t i = 0; i < prompts.size(); ++i) {
        EXPECT_EQ(outs[i].get(), reference(*model_, prompts[i], 40)) << "request " << i;
    }
    EXPECT_GT(scrape(http, "deepshard_preemptions_total"), 0) << cluster.logs();
    EXPECT_GT(scrape(http, "deepshard_spec_accepted_tokens_total"), 0);
    EXPECT_EQ(scrape(http, "deepshard_kv_view_mismatches_total"), 0) << cluster.logs();
    // Alone on the job, one shared-prefix request caches the prefix and the other starts from it.
    EXPECT_EQ(completion(http, prompts[4], 40, false), reference(*model_, prompts[4], 40));
    const double hits = scrape(http, "deepshard_prefix_cache_hit_tokens_total");
    EXPECT_EQ(completion(http, prompts[5], 40, true), reference(*model_, prompts[5], 40));
    EXPECT_GE(scrape(http, "deepshard_prefix_cache_hit_tokens_total"), hits + 32) << cluster.logs();
    EXPECT_EQ(scrape(http, "deepshard_kv_view_mismatches_total"), 0) << cluster.logs();
}

// `deepshard generate --speculative mtp` in one process: greedy and seeded sampled outputs equal the
// same command without it, token for token, at k = 1 and 3, with prefill in several chunks; drafts
// were accepted and rejected (both paths ran). Refusals name what is wrong.
TEST_F(SpeculativeTest, GenerateInOneProcessKeepsEveryOutput) {
    auto run = [](const std::vector<std::string>& extra) {
        std::vector<std::string> argv = {binary_path("deepshard"), "generate", "--model", *model_, "--tokens",
                                         "5,6,7,8,9,10,11", "--prefill-chunk", "3", "--max-tokens", "48",
                                         "--ignore-eos", "--json", "--numerics", "exact"};
        argv.insert(argv.end(), extra.begin(), extra.end());
        auto r = run_command(argv, seconds(300));
        EXPECT_EQ(r.exit_code, 0) << r.err;
        json j = json::parse(r.out.substr(std::min(r.out.find('{'), r.out.size())), nullptr, false);
        EXPECT_FALSE(j.is_discarded()) << r.out;
        return j;
    };
    for (const std::vector<std::string>& sampling :
         {std::vector<std::string>{}, std::vector<std::string>{"--temperature", "0.7", "--top-k", "3", "--seed", "11"}}) {
        const json plain = run(sampling);
        ASSERT_TRUE(plain.contains("generated_tokens"));
        EXPECT_FALSE(plain.contains("speculative"));
        for (const char* k : {"1", "3"}) {
            std::vector<std::string> args = sampling;
            args.insert(args.end(), {"--speculative", "mtp", "--draft-tokens", k});
            const json spec = run(args);
            ASSERT_TRUE(spec.contains("speculative")) << spec.dump();
            EXPECT_EQ(spec["generated_tokens"], plain["generated_tokens"]) << "k=" << k << " " << sampling.size();
            const json& st = spec["speculative"];
            EXPECT_GT(st["draft_tokens"].get<int>(), 10) << st.dump();
            EXPECT_GT(st["accepted_tokens"].get<int>(), 0) << st.dump();
            EXPECT_LT(st["accepted_tokens"].get<int>(), st["draft_tokens"].get<int>()) << st.dump();
            std::printf("[ speculative ] generate k=%s %s: %s\n", k, sampling.empty() ? "greedy" : "sampled",
                        st.dump().c_str());
        }
    }
    auto refused = [](const std::vector<std::string>& extra, const std::string& why,
                      const std::string& model = *model_) {
        std::vector<std::string> argv = {binary_path("deepshard"), "generate", "--model", model, "--tokens", "5,6"};
        argv.insert(argv.end(), extra.begin(), extra.end());
        auto r = run_command(argv, seconds(120));
        EXPECT_NE(r.exit_code, 0);
        EXPECT_NE(r.err.find(why), std::string::npos) << r.err;
    };
    refused({"--draft-tokens", "2"}, "--draft-tokens needs --speculative mtp");
    refused({"--speculative", "eagle"}, "the only method is \"mtp\"");
    refused({"--speculative", "mtp", "--draft-tokens", "40"}, "must be 1..16");
    refused({"--speculative", "mtp"}, "has no MTP module", source_path("testdata/golden/tiny-bf16"));
}

TEST_F(SpeculativeTest, ModelWithoutMtpRefusesSpeculative) {
    const std::string dir = make_temp_dir("ds_spec_err_");
    auto r = run_command({binary_path("deepshard-coordinator"), "--model", source_path("testdata/golden/tiny-bf16"),
                          "--http", "127.0.0.1:0", "--control", "127.0.0.1:0", "--thrift", "", "--speculative", "mtp"},
                         seconds(60));
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE((r.out + r.err).find("has no MTP module (config.json num_nextn_predict_layers = 0)"), std::string::npos)
        << r.out << r.err;
    auto bad = run_command({binary_path("deepshard-coordinator"), "--model", *model_, "--http", "127.0.0.1:0",
                            "--control", "127.0.0.1:0", "--thrift", "", "--speculative", "eagle"},
                           seconds(60));
    EXPECT_NE(bad.exit_code, 0);
    EXPECT_NE((bad.out + bad.err).find("the only method is \"mtp\""), std::string::npos) << bad.out << bad.err;
    // Data-parallel attention is refused up front (the job could not run the drafts).
    const std::string plan = dir + "/dp.json";
    auto p = run_command({binary_path("deepshard"), "plan", "--model", *model_, "--layout", "pp=1,tp=2,attn=dp", "--out",
                          plan},
                         seconds(60));
    ASSERT_EQ(p.exit_code, 0) << p.out << p.err;
    auto dp = run_command({binary_path("deepshard-coordinator"), "--model", *model_, "--plan", plan, "--http",
                           "127.0.0.1:0", "--control", "127.0.0.1:0", "--thrift", "", "--speculative", "mtp"},
                          seconds(60));
    EXPECT_NE(dp.exit_code, 0);
    EXPECT_NE((dp.out + dp.err).find("not implemented with data-parallel attention"), std::string::npos)
        << dp.out << dp.err;
}

}  // namespace
}  // namespace deepshard
