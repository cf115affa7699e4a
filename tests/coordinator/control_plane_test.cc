// The coordinator's control plane under stress (issue 12, item 3), with the real Engine and a fake
// shard-job leader (the real LeaderClient; it answers steps with made-up tokens, or not at all):
//  - a long stretch of engine work under the engine lock (here: a consumer callback that blocks
//    for 1.5 s) neither stops heartbeats nor result reception: the leader never sees the
//    coordinator go silent and never has to reconnect;
//  - a step that never comes back loses the job by its deadline (the request fails saying so, or
//    with --retry is re-run on the next job) instead of hanging forever.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <thread>

#include "control/leader_client.h"
#include "coordinator/engine.h"
#include "coordinator/model_loader.h"
#include "tests/coordinator/fake_leader.h"
#include "tests/coordinator/live_util.h"

namespace deepshard::coordinator {
namespace {

using namespace std::chrono_literals;
using testing_util::FakeLeader;

const std::string kSecret = "control-plane-test-secret-0123456789";

class ControlPlaneTest : public ::testing::Test {
protected:
    void SetUp() override {
        setenv("DS_HEARTBEAT_MS", "100", 1);  // silence for 300 ms = link lost
        testing_util::ensure_test_env();
        dir_ = testing_util::make_config_only_model("tiny-bf16", /*with_tokenizer=*/false, 1000);
        auto m = load_model(dir_);
        ASSERT_TRUE(m.ok()) << m.status().to_string();
        model_ = m->info;
    }
    std::unique_ptr<Engine> start(bool retry, std::chrono::milliseconds step_min) {
        EngineOptions eo;
        eo.control.listen = "127.0.0.1:0";
        eo.control.secret = kSecret;
        eo.control.resume_grace = 10s;
        eo.scheduler.retry = retry;
        eo.step_timeout_min = step_min;
        auto e = Engine::start(eo, model_, nullptr);
        EXPECT_TRUE(e.ok()) << e.status().to_string();
        return e.ok() ? std::move(e).value() : nullptr;
    }
    static GenerateParams params(int64_t max_tokens) {
        GenerateParams p;
        p.prompt = {5, 6, 7};
        p.max_tokens = max_tokens;
        p.ignore_eos = true;
        return p;
    }
    static bool wait_registered(Engine& e, uint64_t not_session = 0) {
        for (int i = 0; i < 500; ++i) {
            const HealthInfo h = e.health();
            if (h.available && h.session_id != not_session) return true;
            std::this_thread::sleep_for(20ms);
        }
        return false;
    }
    std::string dir_;
    ModelInfo model_;
};

TEST_F(ControlPlaneTest, HeartbeatsAndResultsDoNotWaitBehindTheEngineLock) {
    auto engine = start(false, 60s);
    ASSERT_TRUE(engine);
    FakeLeader::Options fo;
    fo.hold_first = true;
    FakeLeader leader(engine->control_port(), kSecret, model_.fingerprint, fo);
    ASSERT_EQ(leader.error(), "");
    ASSERT_TRUE(wait_registered(*engine));
    const uint64_t session = engine->health().session_id;

    // A's first token makes the engine thread block for 1.5 s with the engine lock held (15
    // heartbeat periods); B's step result arrives meanwhile.
    auto a = engine->submit(params(3), false);
    ASSERT_TRUE(a.ok()) << a.status().to_string();
    std::atomic<int> calls{0};
    (*a)->subscribe([&calls] {
        if (calls++ == 0) std::this_thread::sleep_for(1500ms);
    });
    for (int i = 0; i < 500 && leader.steps_received() < 1; ++i) std::this_thread::sleep_for(10ms);
    ASSERT_EQ(leader.steps_received(), 1);
    auto b = engine->submit(params(3), false);  // its first step goes out while A's is in flight
    ASSERT_TRUE(b.ok()) << b.status().to_string();

    const auto until = Clock::now() + 30s;
    const RequestSnapshot sa = (*a)->wait(SIZE_MAX, until);
    const RequestSnapshot sb = (*b)->wait(SIZE_MAX, until);
    ASSERT_TRUE(sa.finished && sb.finished);
    EXPECT_EQ(sa.finish_reason, FinishReason::kLength) << sa.error.to_string();
    EXPECT_EQ(sb.finish_reason, FinishReason::kLength) << sb.error.to_string();
    EXPECT_GE(calls.load(), 1);
    // The leader never saw the coordinator go quiet: no reconnect, no resume, same session.
    EXPECT_TRUE(leader.client().status().ok()) << leader.client().status().to_string();
    EXPECT_EQ(leader.client().resumes(), 0u);
    EXPECT_NE(engine->metrics_text().find("deepshard_control_resumes_total 0"), std::string::npos);
    EXPECT_EQ(engine->health().session_id, session);
}

TEST_F(ControlPlaneTest, AStepThatNeverComesBackLosesTheJobByItsDeadline) {
    auto engine = start(false, 700ms);
    ASSERT_TRUE(engine);
    FakeLeader::Options fo;
    fo.stall = true;
    FakeLeader leader(engine->control_port(), kSecret, model_.fingerprint, fo);
    ASSERT_EQ(leader.error(), "");
    ASSERT_TRUE(wait_registered(*engine));
    auto r = engine->submit(params(4), false);
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    const RequestSnapshot s = (*r)->wait(SIZE_MAX, Clock::now() + 30s);
    ASSERT_TRUE(s.finished) << "the request hangs behind a step that never returns";
    EXPECT_EQ(s.finish_reason, FinishReason::kError);
    EXPECT_NE(s.error.message().find("did not come back within"), std::string::npos) << s.error.to_string();
    const HealthInfo h = engine->health();
    EXPECT_FALSE(h.available);
    EXPECT_NE(h.reason.find("did not come back within"), std::string::npos) << h.reason;
    EXPECT_NE(engine->metrics_text().find("deepshard_step_timeouts_total 1"), std::string::npos);
    // The dropped job is told so (it is shut down, not left running against nobody).
    for (int i = 0; i < 200 && leader.client().status().ok(); ++i) {
        if (leader.client().next_batch(10ms).status().code() == StatusCode::kCancelled) break;
    }
}

TEST_F(ControlPlaneTest, WithRetryTheRequestsOfATimedOutJobRunOnTheNextJob) {
    auto engine = start(true, 700ms);
    ASSERT_TRUE(engine);
    FakeLeader::Options stall;
    stall.stall = true;
    auto first = std::make_unique<FakeLeader>(engine->control_port(), kSecret, model_.fingerprint, stall);
    ASSERT_EQ(first->error(), "");
    ASSERT_TRUE(wait_registered(*engine));
    const uint64_t first_session = engine->health().session_id;
    auto r = engine->submit(params(4), false);
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    // The stalled job is dropped by the step deadline; the request waits for the next job.
    for (int i = 0; i < 1000 && engine->health().available; ++i) std::this_thread::sleep_for(10ms);
    ASSERT_FALSE(engine->health().available);
    EXPECT_FALSE((*r)->finished());
    FakeLeader second(engine->control_port(), kSecret, model_.fingerprint, FakeLeader::Options{});
    ASSERT_EQ(second.error(), "");
    const RequestSnapshot s = (*r)->wait(SIZE_MAX, Clock::now() + 30s);
    ASSERT_TRUE(s.finished);
    EXPECT_EQ(s.finish_reason, FinishReason::kLength) << s.error.to_string();
    EXPECT_EQ(s.completion_tokens, 4);
    EXPECT_NE(engine->health().session_id, first_session);
}

}  // namespace
}  // namespace deepshard::coordinator
