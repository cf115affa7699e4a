// Prefix caching and KV on demand with preemption (issue 13, deliverables 1-2) on live localhost
// clusters: deepshard-coordinator + an mpirun shard job, requests through HTTP (plain and SSE) and
// Thrift. The reference for every greedy output is `deepshard generate` in one process (a cold
// run: no cache, no batching, no preemption).
//  - Prefix cache, tensor-parallel (pp=2 x tp=2) and data-parallel attention (tp=2, attn=dp):
//    requests sharing a long prompt prefix return the reference tokens while the cache serves the
//    shared blocks (hit tokens counted; with DP they must have been routed to the rank holding the
//    prefix, or nothing would hit). The shard job is then killed and replaced: the new job's cache
//    starts empty (the next request hits nothing and still returns the reference), and the
//    coordinator's KV view never disagreed with the job's.
//  - Preemption: a shard job whose KV pool holds ~1.5 of the requests; 6 concurrent streams
//    (greedy and seeded sampling, SSE and plain, HTTP and Thrift) each return exactly their solo
//    output while sequences are preempted and recomputed, every SSE stream intact.
//  - A chat request without max_tokens on a model with the real config's 163,840-token context is
//    admitted and served (KV grows on demand instead of reserving the whole context).
#include <filesystem>
#include <fstream>
#include <future>
#include <thread>

#include <gtest/gtest.h>

#include "tests/coordinator/live_util.h"
#include "tests/util/subprocess.h"

namespace deepshard {
namespace {

using namespace testing_util;
using json = nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;

std::string csv(const std::vector<int>& v) {
    std::string s;
    for (int x : v) s += (s.empty() ? "" : ",") + std::to_string(x);
    return s;
}

// `deepshard generate` in one process: the cold greedy (or seeded) continuation of `prompt`.
std::vector<int> reference(const std::string& model, const std::vector<int>& prompt, int n) {
    auto r = run_command({binary_path("deepshard"), "generate", "--model", model, "--tokens", csv(prompt), "--max-tokens",
                          std::to_string(n), "--ignore-eos", "--json", "--numerics", "exact"},  // as the cluster's plan
                         seconds(300));
    EXPECT_EQ(r.exit_code, 0) << r.err;
    json j = json::parse(r.out.substr(std::min(r.out.find('{'), r.out.size())), nullptr, false);
    if (j.is_discarded() || !j.contains("generated_tokens")) {
        ADD_FAILURE() << "deepshard generate printed: " << r.out;
        return {};
    }
    return j["generated_tokens"].get<std::vector<int>>();
}

struct Outcome {
    std::vector<int> tokens;
    std::string finish_reason;
    std::string error;
    int events = 0;  // SSE events carrying tokens
};

Outcome outcome_of(const HttpResponse& r, bool stream) {
    Outcome o;
    if (r.status != 200) {
        o.error = "HTTP " + std::to_string(r.status) + ": " + r.body + r.error;
        return o;
    }
    if (!stream) {
        json j = r.json();
        o.tokens = j["choices"][0]["token_ids"].get<std::vector<int>>();
        o.finish_reason = j["choices"][0]["finish_reason"].get<std::string>();
        return o;
    }
    bool done = false;
    for (const std::string& ev : sse_events(r.body)) {
        if (ev == "[DONE]") {
            done = true;
            continue;
        }
        json j = json::parse(ev, nullptr, false);
        if (j.is_discarded() || j.contains("error")) {
            o.error += "event: " + ev + "\n";
            continue;
        }
        for (const auto& c : j["choices"]) {
            if (c.contains("token_ids") && !c["token_ids"].empty()) ++o.events;
            for (int t : c["token_ids"]) o.tokens.push_back(t);
            if (c["finish_reason"].is_string()) o.finish_reason = c["finish_reason"].get<std::string>();
        }
    }
    if (!done) o.error += "the stream did not end with [DONE]";
    return o;
}

Outcome http_completion(uint16_t port, const std::vector<int>& prompt, int n, bool stream, double temperature = 0,
                        int seed = 0) {
    json b = {{"model", "m"},          {"prompt", prompt}, {"max_tokens", n},         {"ignore_eos", true},
              {"stream", stream},      {"temperature", temperature}, {"return_token_ids", true}};
    if (temperature > 0) b["seed"] = seed;
    return outcome_of(http_request(port, "POST", "/v1/completions", b.dump(), {}, seconds(600)), stream);
}

Outcome thrift_completion(uint16_t port, const std::vector<int>& prompt, int n, bool stream) {
    std::vector<std::string> cmd = {binary_path("deepshard-thrift-client"), "--server", "127.0.0.1:" + std::to_string(port),
                                    "--tokens", csv(prompt), "--max-tokens", std::to_string(n), "--ignore-eos"};
    if (stream) cmd.push_back("--stream");
    auto r = run_command(cmd, seconds(600));
    Outcome o;
    if (r.exit_code != 0) {
        o.error = "thrift client exit " + std::to_string(r.exit_code) + ": " + r.err + r.out;
        return o;
    }
    json j = json::parse(r.out.substr(std::min(r.out.find('{'), r.out.size())), nullptr, false);
    if (j.is_discarded()) {
        o.error = "thrift client printed: " + r.out;
        return o;
    }
    o.tokens = j["tokens"].get<std::vector<int>>();
    o.finish_reason = j["finish_reason"].get<std::string>();
    return o;
}

double scrape(uint16_t port, const std::string& name) {
    auto m = http_request(port, "GET", "/metrics", "", {}, seconds(10));
    return metric_value(m.body, name);
}

// A prompt of `n` ids in [3, vocab) starting from a seed value (distinct seeds, distinct prompts).
std::vector<int> prompt_of(int n, int seed, int vocab) {
    std::vector<int> p;
    uint32_t x = 2654435761u * static_cast<uint32_t>(seed + 1);
    for (int i = 0; i < n; ++i) {
        x = x * 1664525u + 1013904223u;
        p.push_back(3 + static_cast<int>((x >> 8) % static_cast<uint32_t>(vocab - 3)));
    }
    return p;
}

class ServingTest : public ::testing::Test {
protected:
    void SetUp() override {
        ensure_test_env();
        model_ = source_path("testdata/golden/tiny-bf16");
    }
    std::string model_;
};

// Shared-prefix requests through HTTP and Thrift, a shard-job replacement, the same again.
void run_prefix_cache_case(const std::string& model, const std::string& layout, int ranks) {
    LiveCluster cluster;
    const std::string dir = make_temp_dir("ds_serving_prefix_");
    ASSERT_EQ(cluster.start_coordinator(model, dir, {"--retry", "--name", "m", "--thrift", "127.0.0.1:0", "--http-threads", "4"},
                                        layout, ranks),
              "");
    cluster.start_shard_job("shard1.log");
    ASSERT_TRUE(cluster.wait_health(200, seconds(240))) << cluster.logs();
    const uint16_t http = cluster.http();
    const uint16_t thrift = static_cast<uint16_t>(cluster.port("thrift"));

    // 70 shared tokens (4 full blocks of 16) + a distinct tail of 5 per request.
    const int kOut = 12;
    const std::vector<int> shared = prompt_of(70, 1, 4096);
    std::vector<std::vector<int>> prompts;
    for (int i = 0; i < 5; ++i) {
        auto p = shared;
        const auto tail = prompt_of(5, 100 + i, 4096);
        p.insert(p.end(), tail.begin(), tail.end());
        prompts.push_back(p);
    }
    std::vector<std::vector<int>> want;
    for (const auto& p : prompts) want.push_back(reference(model, p, kOut));

    // The first request fills the cache (cold)...
    Outcome first = http_completion(http, prompts[0], kOut, false);
    ASSERT_TRUE(first.error.empty()) << first.error;
    EXPECT_EQ(first.tokens, want[0]);
    const double hits0 = scrape(http, "deepshard_prefix_cache_hit_tokens_total");
    EXPECT_EQ(hits0, 0) << "the cache was empty";
    EXPECT_GE(scrape(http, "deepshard_kv_cached_blocks"), 4);
    // ...the others, at once over HTTP (plain, SSE) and Thrift (Generate, Submit/Poll), start from it.
    std::vector<std::future<Outcome>> outs;
    outs.push_back(std::async(std::launch::async, [&] { return http_completion(http, prompts[1], kOut, false); }));
    outs.push_back(std::async(std::launch::async, [&] { return http_completion(http, prompts[2], kOut, true); }));
    outs.push_back(std::async(std::launch::async, [&] { return thrift_completion(thrift, prompts[3], kOut, false); }));
    outs.push_back(std::async(std::launch::async, [&] { return thrift_completion(thrift, prompts[4], kOut, true); }));
    for (size_t i = 0; i < outs.size(); ++i) {
        Outcome o = outs[i].get();
        EXPECT_TRUE(o.error.empty()) << "request " << i + 1 << ": " << o.error;
        EXPECT_EQ(o.tokens, want[i + 1]) << "request " << i + 1;
    }
    // Every one of them skipped the 4 shared blocks (with DP only the rank that holds them could).
    EXPECT_GE(scrape(http, "deepshard_prefix_cache_hit_tokens_total"), 4 * 64) << cluster.logs();
    EXPECT_EQ(scrape(http, "deepshard_kv_view_mismatches_total"), 0) << cluster.logs();

    // The shard job dies; a new one registers with an empty cache.
    cluster.shard()->kill_now();
    ASSERT_TRUE(cluster.wait_health(503, seconds(60))) << cluster.logs();
    cluster.start_shard_job("shard2.log");
    ASSERT_TRUE(cluster.wait_health(200, seconds(240))) << cluster.logs();
    EXPECT_EQ(scrape(http, "deepshard_kv_cached_blocks"), 0);
    const double hits_before = scrape(http, "deepshard_prefix_cache_hit_tokens_total");
    Outcome again = http_completion(http, prompts[1], kOut, true);
    EXPECT_TRUE(again.error.empty()) << again.error;
    EXPECT_EQ(again.tokens, want[1]);
    EXPECT_EQ(scrape(http, "deepshard_prefix_cache_hit_tokens_total"), hits_before) << "the new job's cache was not empty";
    Outcome warm = http_completion(http, prompts[2], kOut, false);
    EXPECT_EQ(warm.tokens, want[2]);
    EXPECT_GE(scrape(http, "deepshard_prefix_cache_hit_tokens_total"), hits_before + 64);
    EXPECT_EQ(scrape(http, "deepshard_kv_view_mismatches_total"), 0) << cluster.logs();
}

TEST_F(ServingTest, PrefixCacheTensorParallelKeepsGreedyOutputs) {
    run_prefix_cache_case(model_, "pp=2,tp=2", 4);
}

TEST_F(ServingTest, PrefixCacheDataParallelRoutesToThePrefixHolder) {
    run_prefix_cache_case(model_, "pp=1,tp=2,attn=dp", 2);
}

TEST_F(ServingTest, PreemptionKeepsEveryOutputAndStream) {
    LiveCluster cluster;
    const std::string dir = make_temp_dir("ds_serving_preempt_");
    ASSERT_EQ(cluster.start_coordinator(model_, dir, {"--name", "m", "--thrift", "127.0.0.1:0", "--http-threads", "8"},
                                        "pp=2,tp=1", 2),
              "");
    // 10 blocks of 16 tokens per rank: one request (20 + 64 tokens = 6 blocks) fits alone, two do not.
    cluster.set_shard_args({"--kv-blocks", "10"});
    cluster.start_shard_job();
    ASSERT_TRUE(cluster.wait_health(200, seconds(240))) << cluster.logs();
    const uint16_t http = cluster.http();
    const uint16_t thrift = static_cast<uint16_t>(cluster.port("thrift"));
    const int kOut = 64;

    struct Kind {
        bool thrift;
        bool stream;
        double temperature;
    };
    const std::vector<Kind> kinds = {{false, true, 0},   {false, false, 0}, {true, true, 0},
                                     {false, true, 0.9}, {true, false, 0},  {false, true, 0.8}};
    std::vector<std::vector<int>> prompts;
    for (size_t i = 0; i < kinds.size(); ++i) prompts.push_back(prompt_of(20, 200 + static_cast<int>(i), 4096));
    auto run = [&](size_t i) {
        const Kind& k = kinds[i];
        return k.thrift ? thrift_completion(thrift, prompts[i], kOut, k.stream)
                        : http_completion(http, prompts[i], kOut, k.stream, k.temperature, 7 + static_cast<int>(i));
    };
    // Solo runs, one at a time (nothing to preempt); greedy ones equal `deepshard generate`.
    std::vector<Outcome> solo;
    for (size_t i = 0; i < kinds.size(); ++i) {
        solo.push_back(run(i));
        ASSERT_TRUE(solo[i].error.empty()) << solo[i].error;
        ASSERT_EQ(solo[i].tokens.size(), static_cast<size_t>(kOut));
        if (kinds[i].temperature == 0) {
            EXPECT_EQ(solo[i].tokens, reference(model_, prompts[i], kOut)) << i;
        }
    }
    EXPECT_EQ(scrape(http, "deepshard_preemptions_total"), 0);

    std::vector<std::future<Outcome>> outs;
    for (size_t i = 0; i < kinds.size(); ++i) outs.push_back(std::async(std::launch::async, run, i));
    for (size_t i = 0; i < kinds.size(); ++i) {
        Outcome o = outs[i].get();
        SCOPED_TRACE("request " + std::to_string(i));
        EXPECT_TRUE(o.error.empty()) << o.error;
        EXPECT_EQ(o.tokens, solo[i].tokens);
        EXPECT_EQ(o.finish_reason, "length");
        if (kinds[i].stream && !kinds[i].thrift) {
            EXPECT_GE(o.events, 2) << "the stream came in one piece";
        }
    }
    EXPECT_GT(scrape(http, "deepshard_preemptions_total"), 0) << "the pool never ran out: the test proves nothing\n"
                                                              << cluster.logs();
    EXPECT_GT(scrape(http, "deepshard_recomputed_tokens_total"), 0);
    EXPECT_EQ(scrape(http, "deepshard_kv_exhausted_sequences_total"), 0);
    EXPECT_EQ(scrape(http, "deepshard_kv_view_mismatches_total"), 0) << cluster.logs();
}

TEST_F(ServingTest, ChatWithoutMaxTokensOnTheFullContextIsServed) {
    // The real config's context, on a tiny model with the DeepSeek-V3 tokenizer.
    std::ifstream cfg_in(source_path("configs/deepseek-v3-671b.json"));
    const int64_t context = json::parse(cfg_in)["max_position_embeddings"].get<int64_t>();
    ASSERT_EQ(context, 163840);
    const std::string dir = make_temp_dir("ds_serving_ctx_");
    const std::string model = dir + "/m";
    auto made = run_command({binary_path("deepshard"), "make-model", "--preset", "tiny", "--out", model, "--set",
                             "vocab_size=129280", "--set", "max_position_embeddings=" + std::to_string(context),
                             "--tokenizer", source_path("testdata/tokenizer")},
                            seconds(600));
    ASSERT_EQ(made.exit_code, 0) << made.err;
    LiveCluster cluster;
    ASSERT_EQ(cluster.start_coordinator(model, dir, {}, "pp=1,tp=1", 1), "");
    cluster.start_shard_job();
    ASSERT_TRUE(cluster.wait_health(200, seconds(240))) << cluster.logs();
    const uint16_t http = cluster.http();

    auto chat = [&](const json& extra) {
        json b = {{"model", "m"},
                  {"messages", {{{"role", "user"}, {"content", "Tell me a long story."}}}},
                  {"temperature", 0},
                  {"return_token_ids", true}};
        b.update(extra);
        return http_request(http, "POST", "/v1/chat/completions", b.dump(), {}, seconds(600));
    };
    // The greedy start of the answer, then the same request without max_tokens: it may run to the
    // context's end, so it is stopped by a token id seen in the first answer (on the token id's
    // first occurrence, which the ids before it show).
    auto head = chat({{"max_tokens", 12}, {"ignore_eos", true}});
    ASSERT_EQ(head.status, 200) << head.body;
    const auto first = head.json()["choices"][0]["token_ids"].get<std::vector<int>>();
    ASSERT_EQ(first.size(), 12u);
    const int stop = first[8];
    const size_t at = static_cast<size_t>(std::find(first.begin(), first.end(), stop) - first.begin());
    auto full = chat({{"stop_token_ids", {stop}}, {"ignore_eos", true}});
    ASSERT_EQ(full.status, 200) << full.body << cluster.logs();
    const json j = full.json();
    EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
    const auto got = j["choices"][0]["token_ids"].get<std::vector<int>>();
    EXPECT_EQ(got, std::vector<int>(first.begin(), first.begin() + static_cast<int64_t>(at) + 1));
    // Admission took the prompt's blocks, not the context's: the job holds far fewer than 163840 / 16.
    EXPECT_LT(scrape(http, "deepshard_kv_used_blocks"), 64);
    EXPECT_EQ(scrape(http, "deepshard_kv_view_mismatches_total"), 0);
}

}  // namespace
}  // namespace deepshard
