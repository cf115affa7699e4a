// ControlServer <-> LeaderClient over loopback TCP: handshake (accept, refuse with reasons),
// batches out and results back, heartbeats, loss detection in both directions, deadlines.
#include <gtest/gtest.h>

#include <utility>  // Boost 1.74 asio/awaitable.hpp uses std::exchange without it

#include <boost/asio.hpp>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>

#include "control/control_server.h"
#include "control/leader_client.h"

namespace deepshard::control {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

class RecordingListener : public ControlListener {
public:
    void on_registered(const LeaderInfo& l) override {
        std::lock_guard lock(mu_);
        registered_.push_back(l);
        cv_.notify_all();
    }
    void on_result(uint64_t, StepResult r) override {
        std::lock_guard lock(mu_);
        results_.push_back(std::move(r));
        cv_.notify_all();
    }
    void on_lost(uint64_t session, const Status& s) override {
        std::lock_guard lock(mu_);
        lost_.emplace_back(session, s);
        cv_.notify_all();
    }
    template <typename P>
    bool wait(P pred, std::chrono::milliseconds d = 5s) {
        std::unique_lock lock(mu_);
        return cv_.wait_for(lock, d, [&] { return pred(); });
    }
    std::mutex mu_;
    std::condition_variable cv_;
    std::vector<LeaderInfo> registered_;
    std::vector<StepResult> results_;
    std::vector<std::pair<uint64_t, Status>> lost_;
};

class TransportTest : public ::testing::Test {
protected:
    void SetUp() override {
        setenv("DS_HEARTBEAT_MS", "100", 1);
        ControlServerOptions o;
        o.listen = "127.0.0.1:0";
        o.model_fingerprint = 77;
        o.plan_json = R"({"stages": [1, 2], "mode": "tp"})";
        o.handshake_timeout = 1s;
        auto s = ControlServer::start(o, &listener_);
        ASSERT_TRUE(s.ok()) << s.status().to_string();
        server_ = std::move(s).value();
        addr_ = "127.0.0.1:" + std::to_string(server_->port());
    }
    Hello hello() const {
        Hello h;
        h.model_fingerprint = 77;
        h.plan_json = R"({"mode":"tp","stages":[1,2]})";  // same content, different bytes
        h.world_size = 2;
        h.pipeline_stages = 2;
        h.kv_blocks = 100;
        h.vocab_size = 1000;
        h.job_id = "test";
        return h;
    }
    RecordingListener listener_;
    std::unique_ptr<ControlServer> server_;
    std::string addr_;
};

TEST_F(TransportTest, RegistersAndExchangesBatchesAndResults) {
    auto c = LeaderClient::connect(addr_, hello(), 2s);
    ASSERT_TRUE(c.ok()) << c.status().to_string();
    ASSERT_TRUE(listener_.wait([&] { return !listener_.registered_.empty(); }));
    const uint64_t session = listener_.registered_[0].session_id;
    EXPECT_EQ((*c)->session_id(), session);
    EXPECT_EQ(listener_.registered_[0].hello.pipeline_stages, 2u);
    EXPECT_TRUE(server_->has_leader());

    for (uint64_t i = 1; i <= 3; ++i) {
        StepBatch b;
        b.step_id = i;
        SeqWork w;
        w.seq_id = i;
        w.tokens = {1, 2};
        w.sample = 1;
        w.is_new = 1;
        b.seqs.push_back(w);
        ASSERT_TRUE(server_->send_batch(session, b).ok());
    }
    for (uint64_t i = 1; i <= 3; ++i) {
        auto b = (*c)->next_batch(2s);
        ASSERT_TRUE(b.ok()) << b.status().to_string();
        EXPECT_EQ(b->step_id, i);
        StepResult r;
        r.step_id = b->step_id;
        r.outputs.push_back(SeqOutput{b->seqs[0].seq_id, 5, -0.1f, {}, {}});
        ASSERT_TRUE((*c)->send_result(r).ok());
    }
    ASSERT_TRUE(listener_.wait([&] { return listener_.results_.size() == 3; }));
    EXPECT_EQ(listener_.results_[2].step_id, 3u);

    // Idle: heartbeats keep both sides alive well past 3 periods.
    auto none = (*c)->next_batch(600ms);
    EXPECT_EQ(none.status().code(), StatusCode::kDeadlineExceeded);
    EXPECT_TRUE(listener_.lost_.empty());
    EXPECT_TRUE((*c)->status().ok());

    // A second job is refused while this one is registered.
    auto second = LeaderClient::connect(addr_, hello(), 2s);
    ASSERT_FALSE(second.ok());
    EXPECT_NE(second.status().message().find("already registered"), std::string::npos);

    // Leader goes away -> the coordinator notices quickly.
    const auto t0 = Clock::now();
    c->reset();
    ASSERT_TRUE(listener_.wait([&] { return !listener_.lost_.empty(); }, 2s));
    EXPECT_LT(Clock::now() - t0, 2s);
    EXPECT_FALSE(server_->has_leader());
    EXPECT_EQ(server_->send_batch(session, StepBatch{}).code(), StatusCode::kUnavailable);

    // A new job can register afterwards.
    auto again = LeaderClient::connect(addr_, hello(), 2s);
    ASSERT_TRUE(again.ok()) << again.status().to_string();
    EXPECT_NE((*again)->session_id(), session);
}

TEST_F(TransportTest, RefusesFingerprintAndPlanMismatchWithReason) {
    Hello h = hello();
    h.model_fingerprint = 78;
    auto c = LeaderClient::connect(addr_, h, 2s);
    ASSERT_FALSE(c.ok());
    EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(c.status().message().find("fingerprint"), std::string::npos) << c.status().message();

    h = hello();
    h.plan_json = R"({"stages":[1,3]})";
    c = LeaderClient::connect(addr_, h, 2s);
    ASSERT_FALSE(c.ok());
    EXPECT_NE(c.status().message().find("plan"), std::string::npos) << c.status().message();
    EXPECT_TRUE(listener_.registered_.empty());
}

TEST_F(TransportTest, CoordinatorShutdownAndLossReachTheLeader) {
    auto c = LeaderClient::connect(addr_, hello(), 2s);
    ASSERT_TRUE(c.ok()) << c.status().to_string();
    server_->shutdown_leader("maintenance");
    auto b = (*c)->next_batch(2s);
    EXPECT_EQ(b.status().code(), StatusCode::kCancelled);
    EXPECT_NE(b.status().message().find("maintenance"), std::string::npos);

    auto c2 = LeaderClient::connect(addr_, hello(), 2s);
    ASSERT_TRUE(c2.ok()) << c2.status().to_string();
    server_.reset();  // coordinator gone: Shutdown then closed
    auto b2 = (*c2)->next_batch(2s);
    EXPECT_TRUE(b2.status().code() == StatusCode::kCancelled || b2.status().code() == StatusCode::kUnavailable)
        << b2.status().to_string();
}

TEST_F(TransportTest, SilentPeerIsDroppedByHeartbeatCheck) {
    // A raw client that sends a valid Hello and then never speaks again (a hung leader).
    boost::asio::io_context io;
    boost::asio::ip::tcp::socket s(io);
    s.connect({boost::asio::ip::make_address("127.0.0.1"), server_->port()});
    std::string f;
    encode(hello(), &f);
    boost::asio::write(s, boost::asio::buffer(f));
    ASSERT_TRUE(listener_.wait([&] { return !listener_.registered_.empty(); }));
    const auto t0 = Clock::now();
    ASSERT_TRUE(listener_.wait([&] { return !listener_.lost_.empty(); }, 3s));
    EXPECT_LT(Clock::now() - t0, 2s);
    EXPECT_NE(listener_.lost_[0].second.message().find("heartbeat"), std::string::npos)
        << listener_.lost_[0].second.message();
}

TEST_F(TransportTest, GarbageFromPeerIsAProtocolErrorAndServerKeepsServing) {
    boost::asio::io_context io;
    boost::asio::ip::tcp::socket s(io);
    s.connect({boost::asio::ip::make_address("127.0.0.1"), server_->port()});
    boost::asio::write(s, boost::asio::buffer(std::string("GET / HTTP/1.1\r\n\r\n")));
    char buf[64];
    boost::system::error_code ec;
    s.read_some(boost::asio::buffer(buf), ec);  // the server closes on the bad magic
    EXPECT_TRUE(ec);
    auto c = LeaderClient::connect(addr_, hello(), 2s);
    EXPECT_TRUE(c.ok()) << c.status().to_string();
}

TEST(TransportDeadlineTest, ConnectTimesOutWhenNobodyListens) {
    const auto t0 = Clock::now();
    auto c = LeaderClient::connect("127.0.0.1:1", Hello{}, 300ms);
    ASSERT_FALSE(c.ok());
    EXPECT_EQ(c.status().code(), StatusCode::kDeadlineExceeded);
    EXPECT_LT(Clock::now() - t0, 2s);
    EXPECT_EQ(LeaderClient::connect("nonsense", Hello{}, 300ms).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace deepshard::control
