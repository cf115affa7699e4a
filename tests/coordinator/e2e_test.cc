// End to end on localhost with real processes: deepshard-coordinator + `mpirun -np 4
// deepshard-shard` (pp=2 x tp=2) on the tiny-bf16 golden model.
//  - 32 concurrent requests (HTTP plain + SSE, Thrift Generate + Submit/Poll from the C++ and the
//    Python example clients) all return exactly the single-process greedy tokens;
//  - killing a shard rank mid-generation: the coordinator stays up, /health turns 503 within 2 s,
//    and every request in flight ends with a 503 error (none hangs, none is silently lost).
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

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

struct Golden {
    std::vector<int> prompt;
    std::vector<int> greedy;
};

Golden read_golden(const std::string& model) {
    std::ifstream in(model + "/tokens.json");
    json j = json::parse(in);
    return {j["prompt_for_generation"].get<std::vector<int>>(), j["greedy_generated"].get<std::vector<int>>()};
}

std::string csv(const std::vector<int>& v) {
    std::string s;
    for (int x : v) s += (s.empty() ? "" : ",") + std::to_string(x);
    return s;
}

class CoordinatorE2eTest : public ::testing::Test {
protected:
    void SetUp() override {
        ensure_test_env();
        model_ = source_path("testdata/golden/tiny-bf16");
        const std::string err = cluster_.start_coordinator(model_, make_temp_dir("ds_coord_e2e_"),
                                                           {"--thrift", "127.0.0.1:0", "--http-threads", "4"});
        ASSERT_EQ(err, "");
        http_ = cluster_.http();
        cluster_.start_shard_job();
    }

    // Waits (bounded) until /health is 200.
    bool wait_healthy(seconds timeout) { return cluster_.wait_health(200, timeout); }

    std::string completion_body(const std::vector<int>& prompt, int max_tokens, bool stream) {
        json b = {{"model", "tiny-bf16"}, {"prompt", prompt},  {"max_tokens", max_tokens},
                  {"temperature", 0},     {"ignore_eos", true}, {"stream", stream}};
        return b.dump();
    }

    // Token ids of a completion (plain or SSE); `error` gets the error text when there is one.
    static std::vector<int> tokens_of(const HttpResponse& r, bool stream, std::string* error) {
        std::vector<int> out;
        if (r.status != 200) {
            *error = "HTTP " + std::to_string(r.status) + ": " + r.body + r.error;
            return out;
        }
        if (!stream) {
            json j = r.json();
            for (int t : j["choices"][0]["token_ids"]) out.push_back(t);
            return out;
        }
        for (const std::string& ev : sse_events(r.body)) {
            if (ev == "[DONE]") continue;
            json j = json::parse(ev, nullptr, false);
            if (j.contains("error")) {
                *error = ev;
                continue;
            }
            for (const auto& c : j["choices"]) {
                for (int t : c["token_ids"]) out.push_back(t);
            }
        }
        return out;
    }

    std::string model_;
    uint16_t http_ = 0;
    LiveCluster cluster_;
};

TEST_F(CoordinatorE2eTest, ConcurrentHttpAndThriftMatchGreedyGolden) {
    ASSERT_TRUE(wait_healthy(seconds(180))) << cluster_.logs();
    const Golden g = read_golden(model_);
    const int n = static_cast<int>(g.greedy.size());
    const std::string thrift = "127.0.0.1:" + std::to_string(cluster_.port("thrift"));
    const std::string gen_py = std::string(std::getenv("DS_BINARY_DIR")) + "/gen/py";

    // 32 clients at once: 16 HTTP (half SSE), 8 C++ Thrift (half Submit/Poll), 8 Python Thrift.
    std::vector<std::future<std::pair<std::vector<int>, std::string>>> results;
    for (int i = 0; i < 16; ++i) {
        const bool stream = i % 2 == 1;
        results.push_back(std::async(std::launch::async, [&, stream] {
            auto r = http_request(http_, "POST", "/v1/completions", completion_body(g.prompt, n, stream), {},
                                  seconds(300));
            std::string err;
            auto t = tokens_of(r, stream, &err);
            return std::make_pair(t, err);
        }));
    }
    for (int i = 0; i < 16; ++i) {
        const bool python = i >= 8;
        const bool stream = i % 2 == 1;
        results.push_back(std::async(std::launch::async, [&, python, stream] {
            std::vector<std::string> cmd;
            if (python) {
                cmd = {"/usr/bin/python3", source_path("coordinator/examples/thrift_client.py"), "--gen", gen_py};
            } else {
                cmd = {binary_path("deepshard-thrift-client")};
            }
            for (const std::string& a : {std::string("--server"), thrift, std::string("--tokens"), csv(g.prompt),
                                         std::string("--max-tokens"), std::to_string(n), std::string("--ignore-eos")}) {
                cmd.push_back(a);
            }
            if (stream) cmd.push_back("--stream");
            auto r = run_command(cmd, seconds(300));
            std::vector<int> t;
            if (r.exit_code != 0) return std::make_pair(t, "exit " + std::to_string(r.exit_code) + ": " + r.err);
            json j = json::parse(r.out.substr(r.out.find('{')), nullptr, false);
            if (j.is_discarded()) return std::make_pair(t, "bad output: " + r.out);
            t = j["tokens"].get<std::vector<int>>();
            return std::make_pair(t, std::string());
        }));
    }
    for (size_t i = 0; i < results.size(); ++i) {
        auto [tokens, err] = results[i].get();
        EXPECT_TRUE(err.empty()) << "client " << i << ": " << err;
        EXPECT_EQ(tokens, g.greedy) << "client " << i;
    }
    // The service accounted for them.
    auto metrics = http_request(http_, "GET", "/metrics");
    EXPECT_NE(metrics.body.find("deepshard_shard_job_up 1"), std::string::npos);
}

// A keep-alive client that pipelines two completions in one write: the second request's bytes sit
// in the socket while the first runs, so the server's "did the client leave?" watch sees data, not
// EOF. Both must be answered, in order, with the golden tokens (the session must stay alive without
// a pending readiness wait, and must not mistake pipelined bytes for a disconnect).
TEST_F(CoordinatorE2eTest, PipelinedKeepAliveRequestsAreBothAnswered) {
    ASSERT_TRUE(wait_healthy(seconds(180))) << cluster_.logs();
    const Golden g = read_golden(model_);
    const int n = static_cast<int>(g.greedy.size());
    const std::string body = completion_body(g.prompt, n, false);
    std::string one = "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
    int fd = connect_local(http_);
    ASSERT_GE(fd, 0);
    timeval tv{30, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    const std::string both = one + one;
    ASSERT_EQ(send(fd, both.data(), both.size(), MSG_NOSIGNAL), static_cast<ssize_t>(both.size()));
    // Read until two complete responses (Content-Length framed) arrived, or the deadline.
    std::string raw;
    std::vector<std::string> bodies;
    char buf[65536];
    while (bodies.size() < 2) {
        const size_t hdr_end = raw.find("\r\n\r\n");
        if (hdr_end != std::string::npos) {
            std::string lower = raw.substr(0, hdr_end);
            for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
            const size_t cl = lower.find("content-length: ");
            ASSERT_NE(cl, std::string::npos) << raw;
            const size_t len = std::stoul(lower.substr(cl + 16));
            ASSERT_EQ(raw.rfind("HTTP/1.1 200", 0), 0u) << raw;
            if (raw.size() >= hdr_end + 4 + len) {
                bodies.push_back(raw.substr(hdr_end + 4, len));
                raw.erase(0, hdr_end + 4 + len);
                continue;
            }
        }
        const ssize_t got = recv(fd, buf, sizeof(buf), 0);
        ASSERT_GT(got, 0) << "connection ended after " << bodies.size() << " response(s); pending: " << raw;
        raw.append(buf, static_cast<size_t>(got));
    }
    close(fd);
    for (const std::string& b : bodies) {
        json j = json::parse(b);
        EXPECT_EQ(j["choices"][0]["token_ids"].get<std::vector<int>>(), g.greedy) << b;
    }
}

TEST_F(CoordinatorE2eTest, LosingAShardRankFailsInFlightRequestsWith503) {
    ASSERT_TRUE(wait_healthy(seconds(180))) << cluster_.logs();
    const Golden g = read_golden(model_);
    // Long generations, so they are certainly in flight when the rank dies.
    std::vector<std::future<HttpResponse>> inflight;
    for (int i = 0; i < 4; ++i) {
        const bool stream = i % 2 == 1;
        inflight.push_back(std::async(std::launch::async, [&, stream] {
            return http_request(http_, "POST", "/v1/completions", completion_body(g.prompt, 3000, stream), {},
                                seconds(120));
        }));
    }
    // Wait until they run (bounded), then kill one rank of the job.
    const auto deadline = std::chrono::steady_clock::now() + seconds(60);
    while (std::chrono::steady_clock::now() < deadline) {
        auto m = http_request(http_, "GET", "/metrics");
        if (m.body.find("deepshard_running_sequences 4") != std::string::npos) break;
        std::this_thread::sleep_for(milliseconds(100));
    }
    std::this_thread::sleep_for(milliseconds(500));
    const auto ranks = cluster_.shard()->descendants("deepshard-shard");
    ASSERT_EQ(ranks.size(), 4u) << cluster_.logs();
    ASSERT_EQ(::kill(ranks.back(), SIGKILL), 0);
    const auto killed_at = std::chrono::steady_clock::now();

    // The loss must be noticed from the job's own exit (mpirun ends the job, the leader's link
    // closes), well before the 60 s step-deadline floor would catch it; 20 s leaves room for a
    // loaded CI machine without letting the deadline path pass for prompt detection.
    bool unavailable = false;
    while (std::chrono::steady_clock::now() - killed_at < seconds(20)) {
        if (http_request(http_, "GET", "/health", "", {}, seconds(2)).status == 503) {
            unavailable = true;
            break;
        }
        std::this_thread::sleep_for(milliseconds(50));
    }
    EXPECT_TRUE(unavailable) << "/health still 200 twenty seconds after a rank was killed";

    for (size_t i = 0; i < inflight.size(); ++i) {
        const bool stream = i % 2 == 1;
        HttpResponse r = inflight[i].get();
        if (!stream) {
            EXPECT_EQ(r.status, 503) << r.body << r.error;
            EXPECT_NE(r.body.find("shard job lost"), std::string::npos) << r.body;
        } else {
            // The stream had started (200); it must end with an error event naming the loss.
            EXPECT_EQ(r.status, 200) << r.body << r.error;
            EXPECT_NE(r.body.find("shard job lost"), std::string::npos) << r.body;
            EXPECT_NE(r.body.find("[DONE]"), std::string::npos) << r.body;
        }
    }
    // The coordinator is still up and says why.
    auto health = http_request(http_, "GET", "/health");
    EXPECT_EQ(health.status, 503);
    EXPECT_TRUE(cluster_.coordinator().running());
    // New requests are refused cleanly.
    auto late = http_request(http_, "POST", "/v1/completions", completion_body(g.prompt, 4, false));
    EXPECT_EQ(late.status, 503) << late.body;
}

}  // namespace
}  // namespace deepshard
