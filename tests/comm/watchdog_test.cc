// The watchdog (comm/watchdog.h), on the CPU: waits that finish in time are left alone; a stuck one
// fires once its deadline passes, names the operation, aborts, and reports; an abort that hangs is
// bounded by the grace timer; the default fatal path exits with kExitCode (what deepshard-launch
// restarts). Also: every backend says which memory it takes.
#include "comm/watchdog.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

namespace deepshard::comm {
namespace {

using namespace std::chrono_literals;

struct Recorder {
    std::mutex mu;
    std::vector<std::string> fatal;
    std::atomic<int> aborts{0};
};

Watchdog::Options options(Recorder& r, Millis deadline) {
    Watchdog::Options o;
    o.deadline = deadline;
    o.abort_grace = 300ms;
    o.poll = 2ms;
    o.abort = [&r] { ++r.aborts; };
    o.on_fatal = [&r](const std::string& m) {
        std::lock_guard<std::mutex> l(r.mu);
        r.fatal.push_back(m);
    };
    o.name = "test watchdog";
    return o;
}

TEST(WatchdogTest, CompletedWaitsNeverFire) {
    Recorder r;
    Watchdog w(options(r, 200ms));
    for (int i = 0; i < 20; ++i) {
        std::atomic<bool> done{false};
        auto scope = w.watch("step " + std::to_string(i), [&done] { return done.load(); });
        std::this_thread::sleep_for(3ms);
        done = true;
    }
    // Scopes that end before their deadline (the wait returned) are not watched any more.
    {
        auto scope = w.watch("short wait", [] { return false; });
        std::this_thread::sleep_for(20ms);
    }
    std::this_thread::sleep_for(400ms);
    EXPECT_EQ(w.fired(), 0);
    EXPECT_EQ(r.aborts.load(), 0);
    EXPECT_TRUE(r.fatal.empty());
}

TEST(WatchdogTest, AStuckWaitAbortsAndReportsIt) {
    Recorder r;
    Watchdog w(options(r, 50ms));
    const auto t0 = Clock::now();
    auto scope = w.watch("allreduce of layer 3", [] { return false; });
    while (w.fired() == 0 && Clock::now() - t0 < 5s) std::this_thread::sleep_for(1ms);
    ASSERT_EQ(w.fired(), 1);
    EXPECT_GE(Clock::now() - t0, 50ms) << "fired before its deadline";
    for (int i = 0; i < 200 && r.fatal.empty(); ++i) std::this_thread::sleep_for(2ms);
    std::lock_guard<std::mutex> l(r.mu);
    ASSERT_EQ(r.fatal.size(), 1u);
    EXPECT_EQ(r.aborts.load(), 1);
    EXPECT_NE(r.fatal[0].find("allreduce of layer 3"), std::string::npos) << r.fatal[0];
    EXPECT_NE(r.fatal[0].find("was aborted"), std::string::npos) << r.fatal[0];
    EXPECT_NE(r.fatal[0].find("restarted"), std::string::npos) << r.fatal[0];
}

TEST(WatchdogTest, AHangingAbortIsBoundedByItsGrace) {
    Recorder r;
    auto o = options(r, 30ms);
    auto release = std::make_shared<std::atomic<bool>>(false);
    o.abort = [release] {
        while (!release->load()) std::this_thread::sleep_for(1ms);  // an ncclCommAbort that never returns
    };
    Watchdog w(o);
    const auto t0 = Clock::now();
    auto scope = w.watch("send to rank 5", [] { return false; });
    for (int i = 0; i < 2000 && r.fatal.empty(); ++i) std::this_thread::sleep_for(2ms);
    const auto waited = Clock::now() - t0;
    {
        std::lock_guard<std::mutex> l(r.mu);
        ASSERT_EQ(r.fatal.size(), 1u);
        EXPECT_NE(r.fatal[0].find("did not return within 300 ms"), std::string::npos) << r.fatal[0];
    }
    EXPECT_GE(waited, 330ms) << "deadline + grace";
    release->store(true);  // let the detached abort thread finish
}

TEST(WatchdogTest, TheDefaultFatalPathExitsForTheLauncher) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");  // earlier tests leave a detached abort thread
    EXPECT_EXIT(
        {
            Watchdog::Options o;
            o.deadline = 20ms;
            o.abort_grace = 100ms;
            Watchdog w(o);
            auto scope = w.watch("the decode step", [] { return false; });
            std::this_thread::sleep_for(10s);
        },
        testing::ExitedWithCode(Watchdog::kExitCode), "the decode step");
}

}  // namespace
}  // namespace deepshard::comm
