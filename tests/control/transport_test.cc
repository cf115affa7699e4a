// ControlServer <-> LeaderClient over loopback TCP: handshake (authenticate, accept, refuse with
// reasons), batches out and results back, heartbeats, loss detection in both directions, deadlines;
// and what a hostile peer can do before it authenticates (issue 12): nothing it sends is read beyond
// the handshake's few bytes, a flood of such peers is capped and costs no memory, the healthy job
// keeps its heartbeats, and without the secret nobody registers.
#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>
#include <thread>

#include "control/leader_client.h"
#include "tests/control/control_test_util.h"

namespace deepshard::control {
namespace {

using namespace test;
using Clock = std::chrono::steady_clock;

class TransportTest : public ::testing::Test {
protected:
    void SetUp() override {
        setenv("DS_HEARTBEAT_MS", "100", 1);
        start(test_server_options());
    }
    void start(const ControlServerOptions& o) {
        server_.reset();
        auto s = ControlServer::start(o, &listener_);
        ASSERT_TRUE(s.ok()) << s.status().to_string();
        server_ = std::move(s).value();
        addr_ = "127.0.0.1:" + std::to_string(server_->port());
    }
    LeaderOptions leader(const std::string& secret = kSecret) const {
        LeaderOptions o;
        o.coordinator = addr_;
        o.secret = secret;
        o.connect_timeout = 3s;
        return o;
    }
    RecordingListener listener_;
    std::unique_ptr<ControlServer> server_;
    std::string addr_;
};

TEST_F(TransportTest, RegistersAndExchangesBatchesAndResults) {
    auto c = LeaderClient::connect(leader(), test_hello());
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
    auto second = LeaderClient::connect(leader(), test_hello());
    ASSERT_FALSE(second.ok());
    EXPECT_NE(second.status().message().find("already registered"), std::string::npos);

    // The leader leaves (it says so on the way out) -> the coordinator knows at once, no grace.
    c->reset();
    ASSERT_TRUE(listener_.wait([&] { return !listener_.lost_.empty(); }, 5s));
    EXPECT_FALSE(server_->has_leader());
    EXPECT_EQ(server_->send_batch(session, StepBatch{}).code(), StatusCode::kUnavailable);

    // A new job can register afterwards.
    auto again = LeaderClient::connect(leader(), test_hello());
    ASSERT_TRUE(again.ok()) << again.status().to_string();
    EXPECT_NE((*again)->session_id(), session);
}

TEST_F(TransportTest, RefusesFingerprintAndPlanMismatchWithReason) {
    Hello h = test_hello();
    h.model_fingerprint = 78;
    auto c = LeaderClient::connect(leader(), h);
    ASSERT_FALSE(c.ok());
    EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(c.status().message().find("fingerprint"), std::string::npos) << c.status().message();

    h = test_hello();
    h.plan_json = R"({"stages":[1,3]})";
    c = LeaderClient::connect(leader(), h);
    ASSERT_FALSE(c.ok());
    EXPECT_NE(c.status().message().find("plan"), std::string::npos) << c.status().message();
    EXPECT_TRUE(listener_.registered_.empty());
}

// Issue 12: "the first job to register receives every prompt". Now: no secret, no registration.
TEST_F(TransportTest, AJobWithoutTheSecretCannotRegister) {
    // A leader with another secret: the coordinator cannot prove the leader's secret, and the
    // leader refuses to go on (nothing of the job is revealed to a wrong coordinator either).
    auto c = LeaderClient::connect(leader("another-secret-of-another-job-0000"), test_hello());
    ASSERT_FALSE(c.ok());
    EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(c.status().message().find("could not prove"), std::string::npos) << c.status().message();

    // An attacker that knows the protocol and the fingerprint (Thrift hands it out) but not the
    // secret: a wrong proof is refused with the reason.
    {
        RawPeer p(server_->port());
        ASSERT_TRUE(p.authenticate("not-the-secret-but-long-enough"));
        FrameHeader h;
        std::string payload;
        ASSERT_TRUE(p.read_frame(&h, &payload));
        ASSERT_EQ(h.type, MessageType::kRefuse);
        auto r = decode_refuse(payload);
        ASSERT_TRUE(r.ok());
        EXPECT_NE(r->reason.find("authentication failed"), std::string::npos) << r->reason;
        EXPECT_TRUE(p.closed_by_peer());
    }
    // Skipping authentication: a Hello as the first frame is dropped unread.
    {
        RawPeer p(server_->port());
        std::string f;
        encode(test_hello(), &f);
        p.send(f);
        EXPECT_TRUE(p.closed_by_peer());
    }
    EXPECT_EQ(listener_.registered(), 0u);
    EXPECT_EQ(server_->stats().auth_failures, 1u);
    // The real job still gets in.
    auto ok = LeaderClient::connect(leader(), test_hello());
    EXPECT_TRUE(ok.ok()) << ok.status().to_string();
}

// Issue 12's probe: 40 unauthenticated connections, each announcing a large payload. Before, the
// coordinator allocated every announced payload (hundreds of MB) and the healthy job lost its
// heartbeats. Now a header beyond the handshake's budget closes the connection before a byte is
// read or reserved, the healthy job keeps its session, and memory does not move.
TEST_F(TransportTest, UnauthenticatedFloodCostsNoMemoryAndKeepsTheJob) {
    auto c = LeaderClient::connect(leader(), test_hello());
    ASSERT_TRUE(c.ok()) << c.status().to_string();
    ASSERT_TRUE(listener_.wait([&] { return listener_.registered_.size() == 1; }));
    const uint64_t before = peak_rss_bytes();

    constexpr int kPeers = 40;
    constexpr uint32_t kAnnounced = 48u << 20;  // 40 x 48 MiB = 1.9 GiB if it were allocated
    std::vector<std::unique_ptr<RawPeer>> peers;
    for (int i = 0; i < kPeers; ++i) {
        peers.push_back(std::make_unique<RawPeer>(server_->port()));
        // Every message type, including the ones only a registered leader may send.
        const auto type = static_cast<MessageType>(1 + i % kMaxMessageType);
        peers.back()->send(raw_header(type, kAnnounced) + std::string(4096, 'x'));
    }
    for (auto& p : peers) EXPECT_TRUE(p->closed_by_peer());
    // Several heartbeat periods with the flood going on: the registered job is untouched.
    auto none = (*c)->next_batch(500ms);
    EXPECT_EQ(none.status().code(), StatusCode::kDeadlineExceeded);
    EXPECT_TRUE((*c)->status().ok()) << (*c)->status().to_string();
    EXPECT_EQ(listener_.lost(), 0u);
    EXPECT_TRUE(server_->has_leader());
    const uint64_t grown = peak_rss_bytes() - before;
    EXPECT_LT(grown, 32u << 20) << "peak RSS grew by " << (grown >> 20) << " MiB";
}

// A peer that authenticated may send a Hello (16 MiB), but no more than that either.
TEST_F(TransportTest, FramesAreBoundedPerConnectionState) {
    RawPeer p(server_->port());
    ASSERT_TRUE(p.authenticate(kSecret));
    p.send(raw_header(MessageType::kHello, kMaxHelloPayload + 1));
    EXPECT_TRUE(p.closed_by_peer());
    // Before authentication even a correctly sized AuthHello may not be followed by anything else.
    RawPeer q(server_->port());
    AuthHello a;
    a.client_nonce = random_nonce();
    std::string f;
    encode(a, &f);
    encode(a, &f);  // a second AuthHello is not the AuthProof that must come next
    q.send(f);
    EXPECT_TRUE(q.closed_by_peer());
    EXPECT_EQ(listener_.registered(), 0u);
}

TEST_F(TransportTest, UnauthenticatedConnectionsAreCappedAndTimedOut) {
    ControlServerOptions o = test_server_options();
    o.max_pending_connections = 4;
    o.handshake_timeout = 1s;
    start(o);
    // Idle connections that never speak: the oldest are pushed out as newer ones arrive.
    std::vector<std::unique_ptr<RawPeer>> idle;
    for (int i = 0; i < 7; ++i) idle.push_back(std::make_unique<RawPeer>(server_->port()));
    for (int i = 0; i < 3; ++i) EXPECT_TRUE(idle[i]->closed_by_peer()) << "connection " << i;
    const auto st = server_->stats();
    EXPECT_LE(st.pending_connections, 4u);
    EXPECT_EQ(st.pending_evicted, 3u);
    // The rest run into the handshake deadline.
    for (int i = 3; i < 7; ++i) EXPECT_TRUE(idle[i]->closed_by_peer()) << "connection " << i;
    EXPECT_GE(server_->stats().handshake_timeouts, 4u);
    // The real job registers although the pending slots were full a moment ago.
    auto c = LeaderClient::connect(leader(), test_hello());
    EXPECT_TRUE(c.ok()) << c.status().to_string();
}

TEST_F(TransportTest, CoordinatorShutdownAndLossReachTheLeader) {
    auto c = LeaderClient::connect(leader(), test_hello());
    ASSERT_TRUE(c.ok()) << c.status().to_string();
    server_->shutdown_leader("maintenance");
    auto b = (*c)->next_batch(2s);
    EXPECT_EQ(b.status().code(), StatusCode::kCancelled);
    EXPECT_NE(b.status().message().find("maintenance"), std::string::npos);

    auto c2 = LeaderClient::connect(leader(), test_hello());
    ASSERT_TRUE(c2.ok()) << c2.status().to_string();
    server_.reset();  // coordinator gone: Shutdown then closed
    auto b2 = (*c2)->next_batch(2s);
    EXPECT_TRUE(b2.status().code() == StatusCode::kCancelled || b2.status().code() == StatusCode::kUnavailable)
        << b2.status().to_string();
}

TEST_F(TransportTest, SilentPeerIsDroppedByHeartbeatCheck) {
    // An authenticated raw client that sends a valid Hello and then never speaks again (a hung
    // leader). With no grace period it is lost as soon as its heartbeats are missed.
    RawPeer p(server_->port());
    ASSERT_TRUE(p.authenticate(kSecret));
    std::string f;
    encode(test_hello(), &f);
    p.send(f);
    ASSERT_TRUE(listener_.wait([&] { return !listener_.registered_.empty(); }));
    ASSERT_TRUE(listener_.wait([&] { return !listener_.lost_.empty(); }, 5s));
    EXPECT_NE(listener_.lost_[0].second.message().find("heartbeat"), std::string::npos)
        << listener_.lost_[0].second.message();
}

TEST_F(TransportTest, BrokenLinkKeepsTheSessionForTheGracePeriodOnly) {
    ControlServerOptions o = test_server_options();
    o.resume_grace = 400ms;
    start(o);
    RawPeer p(server_->port());
    ASSERT_TRUE(p.authenticate(kSecret));
    std::string f;
    encode(test_hello(), &f);
    p.send(f);
    ASSERT_TRUE(listener_.wait([&] { return listener_.registered_.size() == 1; }));
    const uint64_t session = listener_.registered_[0].session_id;
    // Silence: the link is reported down, the session stays (batches are kept for a resume) ...
    ASSERT_TRUE(listener_.wait([&] { return !listener_.links_.empty(); }, 5s));
    EXPECT_FALSE(listener_.links_[0].connected);
    EXPECT_TRUE(server_->send_batch(session, StepBatch{}).ok());
    // ... until the grace period passes without a resume: then the job is lost, saying why.
    ASSERT_TRUE(listener_.wait([&] { return listener_.lost_.size() == 1; }, 5s));
    EXPECT_NE(listener_.lost_[0].second.message().find("not resumed within 400 ms"), std::string::npos)
        << listener_.lost_[0].second.message();
    EXPECT_EQ(server_->send_batch(session, StepBatch{}).code(), StatusCode::kUnavailable);
}

// A leader whose socket closes while the link is busy (a crashed process, or a leader whose own side
// of a lossy link went quiet and that will redial) gets only the short grace, not the whole period.
TEST_F(TransportTest, ALeaderThatExitsIsLostAfterTheShortGraceNotTheWholePeriod) {
    ControlServerOptions o = test_server_options();
    o.resume_grace = 60s;
    o.resume_grace_after_close = 300ms;
    start(o);
    const auto t0 = std::chrono::steady_clock::now();
    {
        RawPeer p(server_->port());
        ASSERT_TRUE(p.authenticate(kSecret));
        std::string f;
        encode(test_hello(), &f);
        p.send(f);
        ASSERT_TRUE(listener_.wait([&] { return listener_.registered_.size() == 1; }));
    }  // the process "crashes": its socket closes while the link is busy, not after silence
    ASSERT_TRUE(listener_.wait([&] { return listener_.lost_.size() == 1; }, 20s));
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 20s);  // far below the 60 s of a quiet link
    EXPECT_NE(listener_.lost_[0].second.message().find("not resumed within 300 ms"), std::string::npos)
        << listener_.lost_[0].second.message();
    EXPECT_FALSE(server_->has_leader());
}

TEST_F(TransportTest, ResumingAnUnknownSessionIsRefused) {
    RawPeer p(server_->port());
    ASSERT_TRUE(p.authenticate(kSecret));
    Hello h = test_hello();
    h.resume_session = 12345;
    std::string f;
    encode(h, &f);
    p.send(f);
    FrameHeader fh;
    std::string payload;
    ASSERT_TRUE(p.read_frame(&fh, &payload));
    ASSERT_EQ(fh.type, MessageType::kRefuse);
    auto r = decode_refuse(payload);
    ASSERT_TRUE(r.ok());
    EXPECT_NE(r->reason.find("unknown or expired"), std::string::npos) << r->reason;
    EXPECT_EQ(listener_.registered(), 0u);
}

TEST_F(TransportTest, GarbageFromPeerIsAProtocolErrorAndServerKeepsServing) {
    RawPeer p(server_->port());
    p.send("GET / HTTP/1.1\r\n\r\n");
    EXPECT_TRUE(p.closed_by_peer());  // the server closes on the bad magic
    auto c = LeaderClient::connect(leader(), test_hello());
    EXPECT_TRUE(c.ok()) << c.status().to_string();
}

TEST(TransportDeadlineTest, ConnectTimesOutWhenNobodyListens) {
    const auto t0 = Clock::now();
    LeaderOptions o;
    o.coordinator = "127.0.0.1:1";
    o.secret = kSecret;
    o.connect_timeout = 300ms;
    auto c = LeaderClient::connect(o, Hello{});
    ASSERT_FALSE(c.ok());
    EXPECT_EQ(c.status().code(), StatusCode::kDeadlineExceeded);
    EXPECT_LT(Clock::now() - t0, 5s);
    o.coordinator = "nonsense";
    EXPECT_EQ(LeaderClient::connect(o, Hello{}).status().code(), StatusCode::kInvalidArgument);
    o.coordinator = "127.0.0.1:1";
    o.secret = "short";
    EXPECT_EQ(LeaderClient::connect(o, Hello{}).status().code(), StatusCode::kInvalidArgument);
}

TEST(ControlServerStartTest, RefusesToStartWithoutASecret) {
    RecordingListener l;
    ControlServerOptions o = test_server_options();
    o.secret = "";
    auto s = ControlServer::start(o, &l);
    ASSERT_FALSE(s.ok());
    EXPECT_NE(s.status().message().find("secret"), std::string::npos);
}

}  // namespace
}  // namespace deepshard::control
