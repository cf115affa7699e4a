// --retry end to end: deepshard-coordinator --retry + `mpirun -np 4 deepshard-shard` (pp=2 x tp=2)
// on the tiny-bf16 golden model. Greedy (HTTP plain and SSE), fixed-seed sampled and unseeded
// sampled requests (which get a seed at admission) are running when the whole shard job is killed; /health turns 503, the requests stay queued (one more
// is accepted during the outage), a new shard job registers, /health is 200 again, and every request
// completes with exactly the output of an undisturbed run: no 503, no token streamed twice, none
// missing. Without --retry the same sequence ends every request with 503 (e2e_test.cc checks that),
// so each comparison below fails if retry is broken.
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

// Long enough that every request is certainly mid-generation when the job dies.
constexpr int kMaxTokens = 96;

struct Outcome {
    std::vector<int> tokens;
    std::string finish_reason;
    int64_t completion_tokens = -1;  // usage (plain responses)
    std::string error;               // empty when the request succeeded
};

// Token ids, finish reason and usage of a completion, plain or SSE.
Outcome outcome_of(const HttpResponse& r, bool stream) {
    Outcome o;
    if (r.status != 200) {
        o.error = "HTTP " + std::to_string(r.status) + ": " + r.body + r.error;
        return o;
    }
    if (!stream) {
        json j = r.json();
        if (!j.is_object()) {
            o.error = "not JSON: " + r.body;
            return o;
        }
        o.tokens = j["choices"][0]["token_ids"].get<std::vector<int>>();
        o.finish_reason = j["choices"][0]["finish_reason"].get<std::string>();
        o.completion_tokens = j["usage"]["completion_tokens"].get<int64_t>();
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
            for (int t : c["token_ids"]) o.tokens.push_back(t);
            if (c["finish_reason"].is_string()) o.finish_reason = c["finish_reason"].get<std::string>();
        }
        if (j.contains("usage") && j["usage"].is_object()) {
            o.completion_tokens = j["usage"]["completion_tokens"].get<int64_t>();
        }
    }
    if (!done) o.error += "the stream did not end with [DONE]";
    return o;
}

double metric(const std::string& text, const std::string& name) { return metric_value(text, name); }

class RetryTest : public ::testing::Test {
protected:
    void SetUp() override {
        ensure_test_env();
        const std::string model = source_path("testdata/golden/tiny-bf16");
        const std::string err =
            cluster_.start_coordinator(model, make_temp_dir("ds_coord_retry_"), {"--retry", "--http-threads", "4"});
        ASSERT_EQ(err, "");
        http_ = cluster_.http();
        std::ifstream in(model + "/tokens.json");
        const json g = json::parse(in);
        prompt_ = g["prompt_for_generation"].get<std::vector<int>>();
        golden_ = g["greedy_generated"].get<std::vector<int>>();
    }

    void start_shard_job(const std::string& log_name) { cluster_.start_shard_job(log_name); }
    bool wait_health(int status, seconds timeout) { return cluster_.wait_health(status, timeout); }

    // Polls /metrics (bounded) until `pred` holds for its text.
    template <typename Pred>
    bool wait_metrics(Pred pred, seconds timeout) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        while (std::chrono::steady_clock::now() < deadline) {
            auto m = http_request(http_, "GET", "/metrics", "", {}, seconds(5));
            if (m.status == 200 && pred(m.body)) return true;
            std::this_thread::sleep_for(milliseconds(50));
        }
        return false;
    }

    // `seeded` matters for sampled requests only: without a seed the coordinator assigns one at
    // admission, which is what makes their replay after a restart exact.
    std::string body(bool sampled, bool stream, bool seeded = true) const {
        json b = {{"model", "tiny-bf16"}, {"prompt", prompt_},  {"max_tokens", kMaxTokens},
                  {"ignore_eos", true},   {"stream", stream},   {"stream_options", {{"include_usage", true}}}};
        if (sampled) {
            b["temperature"] = 0.9;
            if (seeded) b["seed"] = 4242;
        } else {
            b["temperature"] = 0;
        }
        if (!stream) b.erase("stream_options");
        return b.dump();
    }

    std::future<Outcome> launch(bool sampled, bool stream, bool seeded = true) {
        const std::string b = body(sampled, stream, seeded);
        return std::async(std::launch::async, [this, b, stream] {
            // The recv deadline has to cover the outage (a new mpirun job loads the model).
            return outcome_of(http_request(http_, "POST", "/v1/completions", b, {}, seconds(300)), stream);
        });
    }

    std::string logs() const { return cluster_.logs(); }

    uint16_t http_ = 0;
    std::vector<int> prompt_, golden_;
    LiveCluster cluster_;
};

TEST_F(RetryTest, KilledShardJobIsReplacedAndEveryRequestFinishesUnchanged) {
    start_shard_job("shard1.log");
    ASSERT_TRUE(wait_health(200, seconds(240))) << logs();

    // The outputs of an undisturbed run.
    const Outcome ref_greedy = launch(false, false).get();
    const Outcome ref_sampled = launch(true, false).get();
    ASSERT_TRUE(ref_greedy.error.empty()) << ref_greedy.error;
    ASSERT_TRUE(ref_sampled.error.empty()) << ref_sampled.error;
    ASSERT_EQ(ref_greedy.tokens.size(), static_cast<size_t>(kMaxTokens));
    ASSERT_EQ(ref_sampled.tokens.size(), static_cast<size_t>(kMaxTokens));
    ASSERT_EQ(std::vector<int>(ref_greedy.tokens.begin(), ref_greedy.tokens.begin() + golden_.size()), golden_);
    // Sampling really samples (otherwise the seeded case would only repeat the greedy one).
    ASSERT_NE(ref_sampled.tokens, ref_greedy.tokens);

    auto baseline = http_request(http_, "GET", "/metrics", "", {}, seconds(5));
    const double tokens_before = metric(baseline.body, "deepshard_generation_tokens_total");
    ASSERT_GE(tokens_before, 2.0 * kMaxTokens) << baseline.body;

    // {sampled, stream}
    const std::vector<std::pair<bool, bool>> kinds = {{false, false}, {false, true}, {false, false},
                                                      {false, true},  {true, false}, {true, true}};
    std::vector<std::future<Outcome>> inflight;
    for (auto [sampled, stream] : kinds) inflight.push_back(launch(sampled, stream));
    // Sampled requests that bring no seed (plain and SSE): they get one at admission, so their
    // replay reproduces what was already streamed instead of failing the request.
    std::vector<std::future<Outcome>> unseeded;
    unseeded.push_back(launch(true, false, /*seeded=*/false));
    unseeded.push_back(launch(true, true, /*seeded=*/false));
    const double n = static_cast<double>(kinds.size() + unseeded.size());
    // All admitted and a few tokens each generated (streams have sent some) before the kill.
    ASSERT_TRUE(wait_metrics(
        [&](const std::string& m) {
            return metric(m, "deepshard_running_sequences") == n &&
                   metric(m, "deepshard_generation_tokens_total") >= tokens_before + 4 * n;
        },
        seconds(120)))
        << logs();
    for (size_t i = 0; i < inflight.size(); ++i) {
        ASSERT_EQ(inflight[i].wait_for(seconds(0)), std::future_status::timeout)
            << "request " << i << " finished before the shard job was killed; the test would prove nothing";
    }
    for (auto& u : unseeded) {
        ASSERT_EQ(u.wait_for(seconds(0)), std::future_status::timeout) << "an unseeded request finished too early";
    }

    cluster_.shard()->kill_now();  // mpirun and all four ranks
    EXPECT_TRUE(wait_health(503, seconds(60))) << "/health never reported the lost job\n" << logs();
    // The requests are back in the queue, waiting, not failed.
    EXPECT_TRUE(wait_metrics([&](const std::string& m) { return metric(m, "deepshard_queued_requests") == n; },
                             seconds(30)))
        << logs();
    // --retry accepts work while no job is registered.
    inflight.push_back(launch(false, true));
    const std::vector<std::pair<bool, bool>> all_kinds = [&] {
        auto k = kinds;
        k.push_back({false, true});
        return k;
    }();
    EXPECT_TRUE(wait_metrics([&](const std::string& m) { return metric(m, "deepshard_queued_requests") == n + 1; },
                             seconds(30)))
        << logs();
    for (size_t i = 0; i < inflight.size(); ++i) {
        EXPECT_EQ(inflight[i].wait_for(seconds(0)), std::future_status::timeout)
            << "request " << i << " ended while no shard job was registered";
    }

    start_shard_job("shard2.log");
    EXPECT_TRUE(wait_health(200, seconds(240))) << logs();

    for (size_t i = 0; i < inflight.size(); ++i) {
        const auto [sampled, stream] = all_kinds[i];
        const Outcome o = inflight[i].get();
        SCOPED_TRACE("request " + std::to_string(i) + (sampled ? " sampled" : " greedy") +
                     (stream ? " SSE" : " plain"));
        EXPECT_TRUE(o.error.empty()) << o.error;
        EXPECT_EQ(o.tokens, sampled ? ref_sampled.tokens : ref_greedy.tokens);
        EXPECT_EQ(o.finish_reason, "length");
        EXPECT_EQ(o.completion_tokens, kMaxTokens);
    }
    for (size_t i = 0; i < unseeded.size(); ++i) {
        const Outcome o = unseeded[i].get();
        SCOPED_TRACE(std::string("unseeded sampled request, ") + (i == 1 ? "SSE" : "plain"));
        EXPECT_TRUE(o.error.empty()) << o.error;  // a replay that diverged would fail the request
        EXPECT_EQ(o.tokens.size(), static_cast<size_t>(kMaxTokens));  // SSE: none streamed twice or lost
        EXPECT_EQ(o.completion_tokens, kMaxTokens);
        EXPECT_EQ(o.finish_reason, "length");
    }
    auto m = http_request(http_, "GET", "/metrics", "", {}, seconds(5));
    EXPECT_EQ(metric(m.body, "deepshard_shard_losses_total"), 1) << m.body;
    EXPECT_EQ(metric(m.body, "deepshard_shard_registrations_total"), 2) << m.body;
    EXPECT_EQ(metric(m.body, "deepshard_shard_job_up"), 1) << m.body;
    EXPECT_TRUE(cluster_.coordinator().running());
}

}  // namespace
}  // namespace deepshard
