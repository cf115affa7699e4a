// Issue 12's control-port probes against a live deepshard-coordinator (the binary), with a healthy
// shard-job leader registered (the real LeaderClient, answering with made-up tokens):
//  - forty unauthenticated connections, each announcing a large payload: the coordinator's memory
//    does not move, the healthy job keeps its session (no missed heartbeats, no reconnect) and the
//    service keeps answering;
//  - a job without the control secret cannot register (the first job to register would receive
//    every prompt), whether it knows the protocol or just sends a Hello;
//  - a job that takes a step and never answers it is treated as lost by the step deadline (the
//    request fails with a clear error instead of hanging, the job is told to shut down).
// The coordinator writes the secret file itself (mode 0600) and names it in its ports file.
#include <sys/stat.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "common/secret_file.h"
#include "control/auth.h"
#include "control/protocol.h"
#include "coordinator/model_loader.h"
#include "tests/control/control_test_util.h"
#include "tests/coordinator/fake_leader.h"
#include "tests/coordinator/live_util.h"
#include "tests/util/subprocess.h"

namespace deepshard {
namespace {

using namespace testing_util;
using namespace std::chrono_literals;
using control::test::RawPeer;
using control::test::peak_rss_bytes;
using control::test::raw_header;

class ControlAttackTest : public ::testing::Test {
protected:
    void SetUp() override { start({}); }
    // Both sides (the coordinator and the FakeLeader in this process) heartbeat every 200 ms: silence
    // for 600 ms = link lost.
    void start(const std::vector<std::string>& extra_args) {
        setenv("DS_HEARTBEAT_MS", "200", 1);
        ensure_test_env();
        model_ = make_config_only_model("tiny-bf16", /*with_tokenizer=*/false, 1000);
        dir_ = make_temp_dir("ds_control_attack");
        auto m = coordinator::load_model(model_);
        ASSERT_TRUE(m.ok()) << m.status().to_string();
        fingerprint_ = m->info.fingerprint;
        std::vector<std::string> argv{binary_path("deepshard-coordinator"), "--model", model_, "--http", "127.0.0.1:0",
                                      "--thrift", "", "--control", "127.0.0.1:0", "--ports-file", dir_ + "/ports.json",
                                      "--control-secret-file", dir_ + "/control.secret"};
        argv.insert(argv.end(), extra_args.begin(), extra_args.end());
        proc_ = std::make_unique<BackgroundProcess>(argv, dir_ + "/coordinator.log",
                                                    std::vector<std::string>{"DS_HEARTBEAT_MS=200"});
        ports_ = wait_for_json_file(dir_ + "/ports.json", 60s);
        ASSERT_TRUE(ports_.is_object()) << proc_->log();
        http_ = ports_["http"].get<uint16_t>();
        control_ = ports_["control"].get<uint16_t>();
        auto secret = control::read_control_secret_file(ports_["control_secret_file"].get<std::string>());
        ASSERT_TRUE(secret.ok()) << secret.status().to_string();
        secret_ = *secret;
    }
    void TearDown() override {
        proc_.reset();
        std::filesystem::remove_all(dir_);
    }
    void restart(const std::vector<std::string>& extra_args) {
        TearDown();
        start(extra_args);
    }
    HttpResponse complete(int max_tokens) {
        const std::string name = std::filesystem::path(model_).filename().string();
        return http_request(http_, "POST", "/v1/completions",
                            R"({"model":")" + name + R"(","prompt":[5,6,7],"max_tokens":)" +
                                std::to_string(max_tokens) + R"(,"ignore_eos":true})",
                            {}, 60s);
    }
    nlohmann::json health() { return http_request(http_, "GET", "/health", "", {}, 5s).json(); }
    std::string metric(const std::string& name) {
        const std::string text = http_request(http_, "GET", "/metrics", "", {}, 5s).body;
        const auto at = text.find("\n" + name + " ");
        if (at == std::string::npos) return "";
        const auto end = text.find('\n', at + 1);
        return text.substr(at + name.size() + 2, end - at - name.size() - 2);
    }
    bool wait_status(const std::string& want) {
        for (int i = 0; i < 300; ++i) {
            if (health().value("status", "") == want) return true;
            std::this_thread::sleep_for(50ms);
        }
        return false;
    }

    std::string model_, dir_, secret_;
    uint64_t fingerprint_ = 0;
    std::unique_ptr<BackgroundProcess> proc_;
    nlohmann::json ports_;
    uint16_t http_ = 0, control_ = 0;
};

TEST_F(ControlAttackTest, TheSecretFileIsTheCoordinatorsOwnAndOwnerOnly) {
    struct stat st {};
    ASSERT_EQ(::stat((dir_ + "/control.secret").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    EXPECT_EQ(ports_["control_secret_file"], dir_ + "/control.secret");
    // Not on its command line.
    std::ifstream cmdline("/proc/" + std::to_string(proc_->pid()) + "/cmdline");
    std::string args((std::istreambuf_iterator<char>(cmdline)), std::istreambuf_iterator<char>());
    EXPECT_EQ(args.find(secret_), std::string::npos);
}

TEST_F(ControlAttackTest, FortyUnauthenticatedPeersAnnouncingLargeFramesCostNothing) {
    FakeLeader leader(control_, secret_, fingerprint_, FakeLeader::Options{});
    ASSERT_EQ(leader.error(), "");
    ASSERT_TRUE(wait_status("ok")) << proc_->log();
    const auto session = health()["session_id"];
    const std::string pid = std::to_string(proc_->pid());
    const uint64_t before = peak_rss_bytes(pid);

    std::vector<std::unique_ptr<RawPeer>> peers;
    for (int i = 0; i < 40; ++i) {
        peers.push_back(std::make_unique<RawPeer>(control_));
        ASSERT_TRUE(peers.back()->connected());
        const auto type = static_cast<control::MessageType>(1 + i % control::kMaxMessageType);
        peers.back()->send(raw_header(type, 200u << 20) + std::string(64 << 10, 'x'));
    }
    for (auto& p : peers) EXPECT_TRUE(p->closed_by_peer());
    // Several heartbeat periods more with the job idle, then: same session, never reconnected.
    std::this_thread::sleep_for(1500ms);
    const nlohmann::json h = health();
    EXPECT_EQ(h.value("status", ""), "ok") << h.dump();
    EXPECT_EQ(h["session_id"], session);
    EXPECT_TRUE(leader.client().status().ok()) << leader.client().status().to_string();
    EXPECT_EQ(leader.client().resumes(), 0u);
    EXPECT_EQ(metric("deepshard_shard_losses_total"), "0");
    const uint64_t grown = peak_rss_bytes(pid) - before;
    EXPECT_LT(grown, 64u << 20) << "the coordinator's peak RSS grew by " << (grown >> 20) << " MiB";
    // And the job still works: a request completes.
    const HttpResponse r = complete(3);
    EXPECT_EQ(r.status, 200) << r.body << r.error;
}

TEST_F(ControlAttackTest, AJobWithoutTheSecretCannotRegister) {
    ASSERT_TRUE(wait_status("unavailable"));
    // Knows the protocol and the fingerprint, holds another secret.
    {
        FakeLeader wrong(control_, "some-other-job-secret-0123456789", fingerprint_, FakeLeader::Options{});
        EXPECT_NE(wrong.error().find("could not prove"), std::string::npos) << wrong.error();
    }
    // Skips authentication and sends a Hello straight away.
    {
        RawPeer p(control_);
        control::Hello h;
        h.model_fingerprint = fingerprint_;
        h.kv_blocks = 10;
        h.vocab_size = 1000;
        std::string f;
        control::encode(h, &f);
        p.send(f);
        EXPECT_TRUE(p.closed_by_peer());
    }
    // Answers the challenge with a guess.
    {
        RawPeer p(control_);
        ASSERT_TRUE(p.authenticate("a-guess-at-the-secret-0123456789"));
        control::FrameHeader fh;
        std::string payload;
        ASSERT_TRUE(p.read_frame(&fh, &payload));
        EXPECT_EQ(fh.type, control::MessageType::kRefuse);
        EXPECT_NE(payload.find("authentication failed"), std::string::npos);
    }
    const nlohmann::json h = health();
    EXPECT_EQ(h.value("status", ""), "unavailable") << h.dump();
    EXPECT_EQ(metric("deepshard_shard_registrations_total"), "0");
    EXPECT_EQ(metric("deepshard_control_auth_failures_total"), "1");
    // The job with the secret gets in.
    FakeLeader right(control_, secret_, fingerprint_, FakeLeader::Options{});
    EXPECT_EQ(right.error(), "");
    EXPECT_TRUE(wait_status("ok"));
}

TEST_F(ControlAttackTest, AStuckStepIsALostJobNotAHang) {
    restart({"--step-timeout-min-ms", "1000"});
    ASSERT_FALSE(HasFailure());
    FakeLeader::Options stall;
    stall.stall = true;  // takes every step, answers none (keeps heartbeating)
    FakeLeader leader(control_, secret_, fingerprint_, stall);
    ASSERT_EQ(leader.error(), "");
    ASSERT_TRUE(wait_status("ok")) << proc_->log();
    // Waits at most 60 s; without step deadlines the job heartbeats forever and this never answers.
    const HttpResponse r = complete(4);
    ASSERT_NE(r.status, 0) << "no answer: the request hangs behind a step that never comes back";
    EXPECT_NE(r.status, 200) << r.body;
    EXPECT_NE(r.body.find("did not come back within"), std::string::npos) << r.status << " " << r.body;
    EXPECT_GE(leader.steps_received(), 1);
    const nlohmann::json h = health();
    EXPECT_EQ(h.value("status", ""), "unavailable") << h.dump();
    EXPECT_NE(h.dump().find("did not come back within"), std::string::npos) << h.dump();
    EXPECT_EQ(metric("deepshard_step_timeouts_total"), "1");
    EXPECT_EQ(metric("deepshard_shard_losses_total"), "1");
    // The dropped job is told to stop (not left running against nobody).
    for (int i = 0; i < 500 && leader.ended_with() == StatusCode::kOk; ++i) std::this_thread::sleep_for(10ms);
    EXPECT_EQ(leader.ended_with(), StatusCode::kCancelled);
    // And the service stays up: a new job registers and serves.
    leader.client().shutdown("test done");
    FakeLeader next(control_, secret_, fingerprint_, FakeLeader::Options{});
    ASSERT_EQ(next.error(), "");
    ASSERT_TRUE(wait_status("ok")) << proc_->log();
    EXPECT_EQ(complete(3).status, 200);
}

}  // namespace
}  // namespace deepshard
