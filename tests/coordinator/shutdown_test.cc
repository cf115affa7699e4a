// Shutdown drains (issue 12 part 4), against the deepshard-coordinator binary with a shard-job
// leader registered (the real LeaderClient answering with made-up tokens):
//  - SIGTERM with requests in flight: the coordinator stops accepting, every accepted request
//    (plain and SSE) finishes normally, every SSE stream ends with its finish chunk and [DONE], the
//    shard job is told to stop, the process exits 0 and nothing is reported lost;
//  - requests that cannot finish within --drain-timeout-s end with a "shutting down" error (an
//    error event and [DONE] on SSE streams), and the process still exits.
// (A clean SIGTERM of the real mpirun shard job is in shard_sigterm_test.cc.)
#include <signal.h>
#include <sys/wait.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <future>

#include "common/secret_file.h"
#include "control/auth.h"
#include "coordinator/model_loader.h"
#include "tests/coordinator/fake_leader.h"
#include "tests/coordinator/live_util.h"
#include "tests/util/subprocess.h"

namespace deepshard {
namespace {

using namespace testing_util;
using namespace std::chrono_literals;
using nlohmann::json;

class ShutdownTest : public ::testing::Test {
protected:
    void start(const std::vector<std::string>& extra_args) {
        setenv("DS_HEARTBEAT_MS", "200", 1);
        ensure_test_env();
        model_ = make_config_only_model("tiny-bf16", /*with_tokenizer=*/false, 1000);
        dir_ = make_temp_dir("ds_shutdown");
        auto m = coordinator::load_model(model_);
        ASSERT_TRUE(m.ok()) << m.status().to_string();
        fingerprint_ = m->info.fingerprint;
        std::vector<std::string> argv{binary_path("deepshard-coordinator"), "--model", model_, "--http", "127.0.0.1:0",
                                      "--thrift", "", "--control", "127.0.0.1:0", "--ports-file", dir_ + "/ports.json",
                                      "--control-secret-file", dir_ + "/control.secret"};
        argv.insert(argv.end(), extra_args.begin(), extra_args.end());
        proc_ = std::make_unique<BackgroundProcess>(argv, dir_ + "/coordinator.log",
                                                    std::vector<std::string>{"DS_HEARTBEAT_MS=200"});
        const json ports = wait_for_json_file(dir_ + "/ports.json", 60s);
        ASSERT_TRUE(ports.is_object()) << proc_->log();
        http_ = ports["http"].get<uint16_t>();
        control_ = ports["control"].get<uint16_t>();
        auto secret = control::read_control_secret_file(dir_ + "/control.secret");
        ASSERT_TRUE(secret.ok()) << secret.status().to_string();
        secret_ = *secret;
    }
    void TearDown() override {
        proc_.reset();
        std::filesystem::remove_all(dir_);
    }
    std::string body(int max_tokens, bool stream) const {
        json b = {{"model", std::filesystem::path(model_).filename().string()},
                  {"prompt", {5, 6, 7}},
                  {"max_tokens", max_tokens},
                  {"ignore_eos", true},
                  {"stream", stream}};
        return b.dump();
    }
    std::future<HttpResponse> launch(int max_tokens, bool stream) {
        return std::async(std::launch::async, [this, b = body(max_tokens, stream)] {
            return http_request(http_, "POST", "/v1/completions", b, {}, 120s);
        });
    }
    bool wait_ok() {
        for (int i = 0; i < 300; ++i) {
            if (http_request(http_, "GET", "/health", "", {}, 5s).status == 200) return true;
            std::this_thread::sleep_for(50ms);
        }
        return false;
    }
    // Until each of `n` requests was in a step batch (all admitted and running).
    static bool wait_running(const FakeLeader& leader, size_t n) {
        for (int i = 0; i < 1500 && leader.seqs_seen() < n; ++i) std::this_thread::sleep_for(20ms);
        return leader.seqs_seen() >= n;
    }
    // Requests the coordinator holds (queued or running), from /metrics.
    bool wait_accepted(int n) {
        auto gauge = [](const std::string& body, const std::string& name) {
            const size_t at = body.find("\n" + name + " ");
            return at == std::string::npos ? 0 : std::atoi(body.c_str() + at + name.size() + 2);
        };
        for (int i = 0; i < 1500; ++i) {
            const HttpResponse m = http_request(http_, "GET", "/metrics", "", {}, 5s);
            if (gauge(m.body, "deepshard_queued_requests") + gauge(m.body, "deepshard_running_sequences") >= n) return true;
            std::this_thread::sleep_for(20ms);
        }
        return false;
    }
    // After SIGTERM: a new request is not served (refused connection, or 503 "shutting down").
    void expect_new_requests_refused() {
        for (int i = 0; i < 200; ++i) {
            const HttpResponse h = http_request(http_, "GET", "/health", "", {}, 5s);
            if (h.status != 200) break;
            std::this_thread::sleep_for(20ms);
        }
        const HttpResponse r = http_request(http_, "POST", "/v1/completions", body(2, false), {}, 10s);
        if (r.status != 0) {
            EXPECT_EQ(r.status, 503) << r.body;
            EXPECT_NE(r.body.find("shutting down"), std::string::npos) << r.body;
        }
    }

    std::string model_, dir_, secret_;
    uint64_t fingerprint_ = 0;
    std::unique_ptr<BackgroundProcess> proc_;
    uint16_t http_ = 0, control_ = 0;
};

TEST_F(ShutdownTest, SigtermFinishesEveryAcceptedRequestAndEndsEveryStream) {
    start({"--drain-timeout-s", "120"});
    ASSERT_FALSE(HasFailure());
    FakeLeader::Options slow;
    slow.delay = 100ms;  // 8 tokens take about a second: they are in flight when SIGTERM comes
    FakeLeader leader(control_, secret_, fingerprint_, slow);
    ASSERT_EQ(leader.error(), "");
    ASSERT_TRUE(wait_ok()) << proc_->log();
    std::vector<std::future<HttpResponse>> plain, streams;
    for (int i = 0; i < 3; ++i) {
        plain.push_back(launch(8, false));
        streams.push_back(launch(8, true));
    }
    ASSERT_TRUE(wait_running(leader, 6)) << proc_->log();
    ASSERT_EQ(::kill(proc_->pid(), SIGTERM), 0);
    expect_new_requests_refused();

    for (auto& f : plain) {
        const HttpResponse r = f.get();
        ASSERT_EQ(r.status, 200) << r.body << r.error;
        EXPECT_EQ(r.json()["usage"]["completion_tokens"], 8) << r.body;
        EXPECT_EQ(r.json()["choices"][0]["finish_reason"], "length") << r.body;
    }
    for (auto& f : streams) {
        const HttpResponse r = f.get();
        ASSERT_EQ(r.status, 200) << r.body << r.error;
        const std::vector<std::string> ev = sse_events(r.body);
        ASSERT_GE(ev.size(), 2u) << r.body;
        EXPECT_EQ(ev.back(), "[DONE]") << r.body;
        const json last = json::parse(ev[ev.size() - 2], nullptr, false);
        EXPECT_EQ(last["choices"][0]["finish_reason"], "length") << r.body;
    }
    const auto st = proc_->wait_exit(60s);
    ASSERT_TRUE(st.has_value()) << "the coordinator did not exit after SIGTERM\n" << proc_->log();
    EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << *st << "\n" << proc_->log();
    // The job was told to stop; nothing was reported lost or ended with an error.
    for (int i = 0; i < 500 && leader.ended_with() == StatusCode::kOk; ++i) std::this_thread::sleep_for(10ms);
    EXPECT_EQ(leader.ended_with(), StatusCode::kCancelled);
    const std::string log = proc_->log();
    EXPECT_EQ(log.find("lost"), std::string::npos) << log;
    EXPECT_EQ(log.find("ended with an error"), std::string::npos) << log;
}

TEST_F(ShutdownTest, WhatCannotFinishWithinTheDrainPeriodEndsWithAClearError) {
    start({"--drain-timeout-s", "1", "--step-timeout-min-ms", "600000"});
    ASSERT_FALSE(HasFailure());
    FakeLeader::Options stall;
    stall.stall = true;  // takes the steps, answers none: nothing can finish
    FakeLeader leader(control_, secret_, fingerprint_, stall);
    ASSERT_EQ(leader.error(), "");
    ASSERT_TRUE(wait_ok()) << proc_->log();
    std::vector<std::future<HttpResponse>> plain, streams;
    for (int i = 0; i < 2; ++i) {
        plain.push_back(launch(8, false));
        streams.push_back(launch(8, true));
    }
    // The stalled job holds the first batch(es) forever; the rest wait in the coordinator's queue.
    // Either way all four are accepted and none can finish.
    ASSERT_TRUE(wait_running(leader, 1)) << proc_->log();
    ASSERT_TRUE(wait_accepted(4)) << proc_->log();
    ASSERT_EQ(::kill(proc_->pid(), SIGTERM), 0);
    expect_new_requests_refused();

    for (auto& f : plain) {
        const HttpResponse r = f.get();
        EXPECT_EQ(r.status, 503) << r.body << r.error;
        EXPECT_NE(r.body.find("shutting down"), std::string::npos) << r.body;
    }
    for (auto& f : streams) {
        const HttpResponse r = f.get();
        ASSERT_EQ(r.status, 200) << r.body << r.error;  // the stream had started
        const std::vector<std::string> ev = sse_events(r.body);
        ASSERT_GE(ev.size(), 2u) << "the stream was cut without its last events: " << r.body;
        EXPECT_EQ(ev.back(), "[DONE]") << r.body;
        EXPECT_NE(ev[ev.size() - 2].find("shutting down"), std::string::npos) << r.body;
    }
    const auto st = proc_->wait_exit(60s);
    ASSERT_TRUE(st.has_value()) << "the coordinator did not exit after SIGTERM\n" << proc_->log();
    EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << *st << "\n" << proc_->log();
    for (int i = 0; i < 500 && leader.ended_with() == StatusCode::kOk; ++i) std::this_thread::sleep_for(10ms);
    EXPECT_EQ(leader.ended_with(), StatusCode::kCancelled);
    EXPECT_NE(proc_->log().find("4 request(s) still running"), std::string::npos) << proc_->log();
}

}  // namespace
}  // namespace deepshard
