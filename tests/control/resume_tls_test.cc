// The control link across a network blip (a proxy in between drops everything for a second: both
// ends give up on the connection, the leader reconnects and resumes the session; nothing is lost
// or duplicated, no new registration) and over TLS (certificate checks; a man in the middle that
// terminates TLS cannot relay the authentication, thanks to the channel binding in the MACs).
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <memory>
#include <thread>

#include <boost/asio/ssl.hpp>

#include "control/leader_client.h"
#include "control/tls_context.h"
#include "tests/control/control_test_util.h"
#include "tests/util/certs.h"
#include "tests/util/subprocess.h"

namespace deepshard::control {
namespace {

using namespace test;
namespace ssl = asio::ssl;

// Copies bytes from `from` to `to` until either side fails; `drop()` true discards what is read.
template <typename From, typename To>
void pump(std::shared_ptr<From> from, std::shared_ptr<To> to, std::function<bool()> drop,
          std::function<void()> close_both) {
    auto buf = std::make_shared<std::array<char, 16384>>();
    from->async_read_some(asio::buffer(*buf), [from, to, drop, close_both, buf](boost::system::error_code ec, size_t n) {
        if (ec) return close_both();
        if (drop()) return pump(from, to, drop, close_both);
        asio::async_write(*to, asio::buffer(buf->data(), n), [from, to, drop, close_both, buf](
                                                                   boost::system::error_code ec2, size_t) {
            if (ec2) return close_both();
            pump(from, to, drop, close_both);
        });
    });
}

// A TCP proxy in front of 127.0.0.1:target. partition(): a black hole — bytes on existing
// connections are read and dropped, new connections are held unanswered. heal(): the connections
// that were cut are closed (their ends gave up on them long ago), held ones are connected through.
class BlipProxy {
public:
    explicit BlipProxy(uint16_t target) : target_(target), acceptor_(io_) {
        tcp::endpoint ep(asio::ip::make_address("127.0.0.1"), 0);
        acceptor_.open(ep.protocol());
        acceptor_.bind(ep);
        acceptor_.listen();
        accept();
        thread_ = std::thread([this] { io_.run(); });
    }
    ~BlipProxy() {
        io_.stop();
        thread_.join();
    }
    uint16_t port() const { return acceptor_.local_endpoint().port(); }
    void partition() {
        run_on_io([this] {
            partitioned_ = true;
            for (auto& p : pairs_) p->cut = true;
        });
    }
    // Loss in one direction: what the client (the leader) sends vanishes, what the server sends
    // still arrives; new connections are held as in partition().
    void partition_upstream() {
        run_on_io([this] { upstream_cut_ = true; });
    }
    void heal() {
        run_on_io([this] {
            partitioned_ = false;
            upstream_cut_ = false;
            for (auto& p : pairs_) {
                if (p->cut) p->close();
            }
            std::vector<std::shared_ptr<tcp::socket>> held = std::move(held_);
            held_.clear();
            for (auto& s : held) connect_through(s);
        });
    }
    int connections() const { return connections_.load(); }

private:
    struct Pair {
        std::shared_ptr<tcp::socket> a, b;
        bool cut = false;
        void close() {
            boost::system::error_code ec;
            a->close(ec);
            b->close(ec);
        }
    };
    template <typename F>
    void run_on_io(F f) {
        std::promise<void> done;
        asio::post(io_, [&] {
            f();
            done.set_value();
        });
        done.get_future().wait();
    }
    void accept() {
        acceptor_.async_accept([this](boost::system::error_code ec, tcp::socket s) {
            if (ec) return;
            connections_++;
            auto client = std::make_shared<tcp::socket>(std::move(s));
            if (partitioned_ || upstream_cut_) {
                held_.push_back(client);
            } else {
                connect_through(client);
            }
            accept();
        });
    }
    void connect_through(std::shared_ptr<tcp::socket> client) {
        auto server = std::make_shared<tcp::socket>(io_);
        server->async_connect({asio::ip::make_address("127.0.0.1"), target_},
                              [this, client, server](boost::system::error_code ec) {
                                  auto pair = std::make_shared<Pair>(Pair{client, server});
                                  if (ec) return pair->close();
                                  pairs_.push_back(pair);
                                  auto drop = [this, pair] { return partitioned_ || pair->cut; };
                                  auto drop_up = [this, pair] { return partitioned_ || upstream_cut_ || pair->cut; };
                                  auto close = [pair] { pair->close(); };
                                  pump(client, server, drop_up, close);
                                  pump(server, client, drop, close);
                              });
    }

    uint16_t target_;
    asio::io_context io_;
    tcp::acceptor acceptor_;
    std::thread thread_;
    bool partitioned_ = false;  // io thread
    bool upstream_cut_ = false;  // io thread
    std::vector<std::shared_ptr<Pair>> pairs_;
    std::vector<std::shared_ptr<tcp::socket>> held_;
    std::atomic<int> connections_{0};
};

StepBatch batch(uint64_t id) {
    StepBatch b;
    b.step_id = id;
    SeqWork w;
    w.seq_id = id;
    w.tokens = {1, 2, 3};
    w.sample = 1;
    w.is_new = 1;
    b.seqs.push_back(w);
    return b;
}

StepResult result_for(const StepBatch& b) {
    StepResult r;
    r.step_id = b.step_id;
    r.outputs.push_back(SeqOutput{b.seqs[0].seq_id, 7, -0.5f, {}, {}});
    return r;
}

// A coordinator (10 s grace, heartbeats every 100 ms: silence for 300 ms = link lost) and a leader
// registered with it through a BlipProxy.
struct ProxiedLink {
    RecordingListener listener;
    std::unique_ptr<ControlServer> server;
    std::unique_ptr<BlipProxy> proxy;
    std::unique_ptr<LeaderClient> leader;
    uint64_t session = 0;

    void start() {
        setenv("DS_HEARTBEAT_MS", "100", 1);
        ControlServerOptions o = test_server_options();
        o.resume_grace = 10s;
        auto s = ControlServer::start(o, &listener);
        ASSERT_TRUE(s.ok()) << s.status().to_string();
        server = std::move(*s);
        proxy = std::make_unique<BlipProxy>(server->port());
        LeaderOptions lo;
        lo.coordinator = "127.0.0.1:" + std::to_string(proxy->port());
        lo.secret = kSecret;
        lo.connect_timeout = 5s;
        auto l = LeaderClient::connect(lo, test_hello());
        ASSERT_TRUE(l.ok()) << l.status().to_string();
        leader = std::move(*l);
        ASSERT_TRUE(listener.wait([&] { return listener.registered_.size() == 1; }));
        session = listener.registered_[0].session_id;
    }
};

TEST(ResumeTest, ABlipLosesAndDuplicatesNothingAndNeedsNoNewRegistration) {
    ProxiedLink t;
    ASSERT_NO_FATAL_FAILURE(t.start());
    RecordingListener& listener = t.listener;
    BlipProxy& proxy = *t.proxy;
    const uint64_t session = t.session;

    // Step 1 round trip; step 2 reaches the leader, whose answer will fall into the partition.
    ASSERT_TRUE(t.server->send_batch(session, batch(1)).ok());
    auto b1 = t.leader->next_batch(5s);
    ASSERT_TRUE(b1.ok()) << b1.status().to_string();
    ASSERT_TRUE(t.leader->send_result(result_for(*b1)).ok());
    ASSERT_TRUE(listener.wait([&] { return listener.results_.size() == 1; }));
    ASSERT_TRUE(t.server->send_batch(session, batch(2)).ok());
    auto b2 = t.leader->next_batch(5s);
    ASSERT_TRUE(b2.ok()) << b2.status().to_string();

    proxy.partition();
    ASSERT_TRUE(t.leader->send_result(result_for(*b2)).ok());     // lost on the wire
    ASSERT_TRUE(t.server->send_batch(session, batch(3)).ok());    // lost on the wire
    // Both ends notice the silence and drop the connection; the coordinator keeps the session.
    ASSERT_TRUE(listener.wait([&] { return !listener.links_.empty(); }, 5s));
    EXPECT_FALSE(listener.links_[0].connected);
    ASSERT_TRUE(t.server->send_batch(session, batch(4)).ok());    // sent while the link is down
    std::this_thread::sleep_for(700ms);                             // a 1-2 s blip in all
    proxy.heal();

    // The leader resumes: it gets 3 and 4 exactly once, the coordinator gets 2 exactly once.
    for (uint64_t want : {3u, 4u}) {
        auto b = t.leader->next_batch(10s);
        ASSERT_TRUE(b.ok()) << b.status().to_string();
        EXPECT_EQ(b->step_id, want);
        ASSERT_TRUE(t.leader->send_result(result_for(*b)).ok());
    }
    ASSERT_TRUE(listener.wait([&] { return listener.results_.size() == 4; }, 10s));
    std::vector<uint64_t> ids;
    for (const auto& r : listener.results_) ids.push_back(r.step_id);
    EXPECT_EQ(ids, (std::vector<uint64_t>{1, 2, 3, 4}));
    // Nothing more is coming (no duplicate), the session is the same one, no loss was reported.
    EXPECT_EQ(t.leader->next_batch(500ms).status().code(), StatusCode::kDeadlineExceeded);
    EXPECT_EQ(listener.results_.size(), 4u);
    EXPECT_EQ(t.leader->session_id(), session);
    EXPECT_EQ(t.leader->resumes(), 1u);
    EXPECT_EQ(t.server->stats().resumes, 1u);
    EXPECT_EQ(listener.registered_.size(), 1u);
    EXPECT_TRUE(listener.lost_.empty());
    ASSERT_GE(listener.links_.size(), 2u);
    EXPECT_TRUE(listener.links_.back().connected);
    EXPECT_TRUE(t.leader->status().ok());
}

// Loss in one direction only: the leader's frames vanish, the coordinator's arrive. The coordinator
// sees silence and closes the link (keeping the session); at the leader's end that close arrives on a
// link that was never quiet. The leader must resume all the same, not give the job up.
TEST(ResumeTest, LossInOneDirectionIsResumedToo) {
    ProxiedLink t;
    ASSERT_NO_FATAL_FAILURE(t.start());
    RecordingListener& listener = t.listener;
    BlipProxy& proxy = *t.proxy;
    const uint64_t session = t.session;
    ASSERT_TRUE(t.server->send_batch(session, batch(1)).ok());
    auto b1 = t.leader->next_batch(5s);
    ASSERT_TRUE(b1.ok()) << b1.status().to_string();

    proxy.partition_upstream();
    ASSERT_TRUE(t.leader->send_result(result_for(*b1)).ok());  // lost on the wire
    ASSERT_TRUE(listener.wait([&] { return !listener.links_.empty(); }, 5s));  // the coordinator gave up the link
    EXPECT_FALSE(listener.links_[0].connected);
    ASSERT_TRUE(t.server->send_batch(session, batch(2)).ok());  // sent while the link is down
    std::this_thread::sleep_for(300ms);
    proxy.heal();

    auto b2 = t.leader->next_batch(10s);
    ASSERT_TRUE(b2.ok()) << b2.status().to_string();
    EXPECT_EQ(b2->step_id, 2u);
    ASSERT_TRUE(t.leader->send_result(result_for(*b2)).ok());
    ASSERT_TRUE(listener.wait([&] { return listener.results_.size() == 2; }, 10s));
    EXPECT_EQ(listener.results_[0].step_id, 1u);
    EXPECT_EQ(listener.results_[1].step_id, 2u);
    EXPECT_EQ(t.leader->resumes(), 1u);
    EXPECT_TRUE(t.leader->status().ok()) << t.leader->status().to_string();
    EXPECT_TRUE(listener.lost_.empty());
    EXPECT_EQ(listener.registered_.size(), 1u);
}

TEST(ResumeTest, APartitionLongerThanTheGracePeriodLosesTheJobOnBothSides) {
    setenv("DS_HEARTBEAT_MS", "100", 1);
    RecordingListener listener;
    ControlServerOptions o = test_server_options();
    o.resume_grace = 600ms;
    auto server = ControlServer::start(o, &listener);
    ASSERT_TRUE(server.ok()) << server.status().to_string();
    BlipProxy proxy((*server)->port());
    LeaderOptions lo;
    lo.coordinator = "127.0.0.1:" + std::to_string(proxy.port());
    lo.secret = kSecret;
    auto leader = LeaderClient::connect(lo, test_hello());
    ASSERT_TRUE(leader.ok()) << leader.status().to_string();
    proxy.partition();
    // The coordinator gives the job up after the grace period ...
    ASSERT_TRUE(listener.wait([&] { return listener.lost_.size() == 1; }, 10s));
    EXPECT_NE(listener.lost_[0].second.message().find("not resumed"), std::string::npos);
    // ... and the leader, whose reconnects go nowhere, gives up too: kUnavailable, not a hang.
    auto b = (*leader)->next_batch(10s);
    EXPECT_EQ(b.status().code(), StatusCode::kUnavailable) << b.status().to_string();
    EXPECT_NE(b.status().message().find("could not resume"), std::string::npos) << b.status().message();
    proxy.heal();
}

// A TLS-terminating man in the middle: TLS with its own certificate towards the leader, TLS
// towards the coordinator, plaintext relayed in between.
class TlsMitm {
public:
    TlsMitm(uint16_t target, const testing_util::CertPair& own) : target_(target), acceptor_(io_) {
        TlsFiles f;
        f.cert = own.cert;
        f.key = own.key;
        server_ctx_ = *make_tls_server_context(f);
        client_ctx_ = *make_tls_client_context(TlsFiles{});
        tcp::endpoint ep(asio::ip::make_address("127.0.0.1"), 0);
        acceptor_.open(ep.protocol());
        acceptor_.bind(ep);
        acceptor_.listen();
        accept();
        thread_ = std::thread([this] { io_.run(); });
    }
    ~TlsMitm() {
        io_.stop();
        thread_.join();
    }
    uint16_t port() const { return acceptor_.local_endpoint().port(); }
    std::atomic<int> relayed{0};

private:
    using Stream = ssl::stream<tcp::socket>;
    void accept() {
        acceptor_.async_accept([this](boost::system::error_code ec, tcp::socket s) {
            if (ec) return;
            auto down = std::make_shared<Stream>(std::move(s), *server_ctx_);
            down->async_handshake(ssl::stream_base::server, [this, down](boost::system::error_code e) {
                if (e) return;
                auto up = std::make_shared<Stream>(tcp::socket(io_), *client_ctx_);
                up->next_layer().async_connect(
                    {asio::ip::make_address("127.0.0.1"), target_}, [this, down, up](boost::system::error_code e2) {
                        if (e2) return;
                        up->async_handshake(ssl::stream_base::client, [this, down, up](boost::system::error_code e3) {
                            if (e3) return;
                            relayed++;
                            auto close = [down, up] {
                                boost::system::error_code ig;
                                down->next_layer().close(ig);
                                up->next_layer().close(ig);
                            };
                            pump(down, up, [] { return false; }, close);
                            pump(up, down, [] { return false; }, close);
                        });
                    });
            });
            accept();
        });
    }
    uint16_t target_;
    asio::io_context io_;
    tcp::acceptor acceptor_;
    std::shared_ptr<ssl::context> server_ctx_, client_ctx_;
    std::thread thread_;
};

class TlsTest : public ::testing::Test {
protected:
    void SetUp() override {
        setenv("DS_HEARTBEAT_MS", "100", 1);
        dir_ = testing_util::make_temp_dir("ds_control_tls");
        cert_ = testing_util::make_self_signed_cert(dir_, "coordinator");
        if (!cert_.error.empty()) GTEST_SKIP() << cert_.error;
        ControlServerOptions o = test_server_options();
        o.tls.cert = cert_.cert;
        o.tls.key = cert_.key;
        auto s = ControlServer::start(o, &listener_);
        ASSERT_TRUE(s.ok()) << s.status().to_string();
        server_ = std::move(s).value();
    }
    void TearDown() override { std::filesystem::remove_all(dir_); }
    LeaderOptions leader(uint16_t port) const {
        LeaderOptions lo;
        lo.coordinator = "127.0.0.1:" + std::to_string(port);
        lo.secret = kSecret;
        lo.connect_timeout = 1500ms;
        return lo;
    }
    std::string dir_;
    testing_util::CertPair cert_;
    RecordingListener listener_;
    std::unique_ptr<ControlServer> server_;
};

TEST_F(TlsTest, LeaderRegistersOverTlsWithTheCertificateChecked) {
    LeaderOptions lo = leader(server_->port());
    lo.tls.ca = cert_.cert;
    auto c = LeaderClient::connect(lo, test_hello());
    ASSERT_TRUE(c.ok()) << c.status().to_string();
    StepBatch b = batch(1);
    ASSERT_TRUE(listener_.wait([&] { return listener_.registered_.size() == 1; }));
    ASSERT_TRUE(server_->send_batch(listener_.registered_[0].session_id, b).ok());
    auto got = (*c)->next_batch(5s);
    ASSERT_TRUE(got.ok()) << got.status().to_string();
    EXPECT_EQ(got->seqs[0].tokens, b.seqs[0].tokens);
}

TEST_F(TlsTest, PlainTextOrAnUntrustedCertificateGetsNowhere) {
    // A leader speaking plain TCP to the TLS port.
    auto plain = LeaderClient::connect(leader(server_->port()), test_hello());
    ASSERT_FALSE(plain.ok());
    EXPECT_EQ(plain.status().code(), StatusCode::kDeadlineExceeded) << plain.status().to_string();
    // A leader that trusts another certificate.
    auto other = testing_util::make_self_signed_cert(dir_, "other");
    ASSERT_TRUE(other.error.empty()) << other.error;
    LeaderOptions lo = leader(server_->port());
    lo.tls.ca = other.cert;
    auto wrong = LeaderClient::connect(lo, test_hello());
    ASSERT_FALSE(wrong.ok());
    EXPECT_NE(wrong.status().message().find("TLS"), std::string::npos) << wrong.status().to_string();
    EXPECT_EQ(listener_.registered_.size(), 0u);
}

TEST_F(TlsTest, AManInTheMiddleCannotRelayTheAuthentication) {
    auto mitm_cert = testing_util::make_self_signed_cert(dir_, "mitm");
    ASSERT_TRUE(mitm_cert.error.empty()) << mitm_cert.error;
    TlsMitm mitm(server_->port(), mitm_cert);
    // The leader speaks TLS but checks no certificate: only the channel binding protects it.
    LeaderOptions lo = leader(mitm.port());
    lo.tls.client = true;
    auto c = LeaderClient::connect(lo, test_hello());
    ASSERT_FALSE(c.ok());
    EXPECT_GE(mitm.relayed.load(), 1) << "the proxy never relayed a connection";
    EXPECT_NE(c.status().message().find("could not prove"), std::string::npos) << c.status().to_string();
    EXPECT_EQ(listener_.registered_.size(), 0u);
    // Directly (same options), the leader gets in.
    LeaderOptions d = leader(server_->port());
    d.tls.client = true;
    auto direct = LeaderClient::connect(d, test_hello());
    EXPECT_TRUE(direct.ok()) << direct.status().to_string();
}

}  // namespace
}  // namespace deepshard::control
