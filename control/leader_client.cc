#include "control/leader_client.h"

#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>

#include <spdlog/spdlog.h>

#include "control/auth.h"
#include "control/connection.h"
#include "control/session_link.h"
#include "control/tls_context.h"

namespace deepshard::control {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;
namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using internal::FramedConnection;
using internal::ReadPolicy;

namespace {

constexpr size_t kMaxRetainedBytes = 512u << 20;
constexpr milliseconds kRetryDelay{100};

ReadPolicy handshake_policy(MessageType expect) {
    return {type_bit(expect) | type_bit(MessageType::kRefuse), kMaxRefusePayload, 0};
}
ReadPolicy session_policy() {
    return {type_bit(MessageType::kStepBatch) | type_bit(MessageType::kHeartbeat) | type_bit(MessageType::kShutdown),
            kMaxPayload, 0};
}

}  // namespace

struct LeaderClient::Impl : std::enable_shared_from_this<LeaderClient::Impl> {
    struct Attempt;

    LeaderOptions options;
    Hello hello;
    std::string host, port;
    std::shared_ptr<asio::ssl::context> tls;
    asio::io_context io;
    std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
    std::thread thread;
    internal::SessionLink link{kMaxRetainedBytes};
    std::shared_ptr<Attempt> active;  // io thread only

    mutable std::mutex mu;
    std::condition_variable cv;
    std::deque<StepBatch> batches;
    std::optional<std::string> shutdown_reason;
    std::optional<Status> connect_result;
    Status closed;  // non-OK once the session is over
    std::shared_ptr<FramedConnection> conn;
    uint64_t session_id = 0;
    uint32_t grace_ms = 0;
    uint64_t resumes = 0;
    bool leaving = false;

    // One dial: connect (retrying until the deadline), TLS, authenticate both ways, Hello, HelloAck.
    // Runs on the I/O thread; after success it keeps routing the connection's frames to the Impl.
    struct Attempt : std::enable_shared_from_this<Attempt> {
        enum class Stage { kConnecting, kChallenge, kAck, kDone };
        Impl* impl;
        Clock::time_point deadline;
        bool resume;
        tcp::resolver resolver;
        asio::steady_timer deadline_timer;
        asio::steady_timer retry_timer;
        std::optional<tcp::socket> socket;
        std::shared_ptr<FramedConnection> conn;
        Nonce client_nonce{};
        Stage stage = Stage::kConnecting;
        std::string last_error = "no answer";
        bool finished = false;
        Clock::time_point started = Clock::now();

        Attempt(Impl* i, Clock::time_point d, bool r)
            : impl(i), deadline(d), resume(r), resolver(i->io), deadline_timer(i->io), retry_timer(i->io) {}

        std::string where() const { return "the coordinator at " + impl->options.coordinator; }

        void begin() {
            deadline_timer.expires_at(deadline);
            deadline_timer.async_wait([self = shared_from_this()](boost::system::error_code ec) {
                if (ec || self->finished) return;
                self->finish(deadline_exceeded("no registration with " + self->where() + " within " +
                                               std::to_string(std::chrono::duration_cast<milliseconds>(
                                                                  self->deadline - self->started).count()) +
                                               " ms (" + self->last_error + ")"));
            });
            try_once();
        }

        void try_once() {
            if (finished) return;
            stage = Stage::kConnecting;
            resolver.async_resolve(impl->host, impl->port, [self = shared_from_this()](
                                                               boost::system::error_code ec,
                                                               tcp::resolver::results_type eps) {
                if (self->finished) return;
                if (ec) return self->retry("resolving: " + ec.message());
                self->socket.emplace(asio::make_strand(self->impl->io));
                asio::async_connect(*self->socket, eps, [self](boost::system::error_code ec2, const tcp::endpoint&) {
                    if (self->finished) return;
                    if (ec2) return self->retry(ec2.message());
                    self->handshake();
                });
            });
        }

        void retry(const std::string& why) {
            if (finished) return;
            last_error = why;
            if (socket) {
                boost::system::error_code ignore;
                socket->close(ignore);
                socket.reset();
            }
            conn.reset();
            retry_timer.expires_after(kRetryDelay);
            retry_timer.async_wait([self = shared_from_this()](boost::system::error_code ec) {
                if (!ec) self->try_once();
            });
        }

        void handshake() {
            conn = FramedConnection::create(std::move(*socket),
                                            internal::default_connection_options("coordinator " +
                                                                                 impl->options.coordinator),
                                            impl->tls, /*tls_server=*/false);
            socket.reset();
            stage = Stage::kChallenge;
            client_nonce = random_nonce();
            auto self = shared_from_this();
            auto c = conn;
            conn->start(
                handshake_policy(MessageType::kAuthChallenge),
                [self, c](internal::Frame f) { self->on_frame(c, std::move(f)); },
                [self, c](const Status& s) { self->on_close(c, s); },
                [self, c] {
                    AuthHello m;
                    m.client_nonce = self->client_nonce;
                    std::string frame;
                    encode(m, &frame);
                    c->send(std::move(frame));
                });
        }

        void on_frame(const std::shared_ptr<FramedConnection>& c, internal::Frame f) {
            if (stage == Stage::kDone) {
                impl->on_session_frame(c, std::move(f));
                return;
            }
            if (finished || c != conn) return;
            if (f.type == MessageType::kRefuse) {
                auto m = decode_refuse(f.payload);
                finish(invalid_argument(where() + " refused registration: " +
                                        (m.ok() ? m->reason : "(unreadable reason: " + m.status().message() + ")")));
                return;
            }
            if (stage == Stage::kChallenge && f.type == MessageType::kAuthChallenge) {
                auto m = decode_auth_challenge(f.payload);
                if (!m.ok()) return finish(m.status().with_context("from " + where()));
                const Mac want = auth_mac(impl->options.secret, AuthRole::kCoordinator, client_nonce, m->server_nonce,
                                          c->channel_binding());
                if (!mac_equal(want, m->server_mac)) {
                    return finish(invalid_argument(
                        where() + " could not prove it holds this job's control secret (a different coordinator, a "
                                  "different secret file, or someone in between)"));
                }
                AuthProof proof;
                proof.client_mac = auth_mac(impl->options.secret, AuthRole::kLeader, client_nonce, m->server_nonce,
                                            c->channel_binding());
                Hello h = impl->hello;
                if (resume) {
                    std::lock_guard lock(impl->mu);
                    h.resume_session = impl->session_id;
                }
                h.received = resume ? impl->link.received() : 0;
                std::string frames;
                encode(proof, &frames);
                encode(h, &frames);
                c->send(std::move(frames));
                c->set_read_policy(handshake_policy(MessageType::kHelloAck));
                stage = Stage::kAck;
                return;
            }
            if (stage == Stage::kAck && f.type == MessageType::kHelloAck) {
                auto m = decode_hello_ack(f.payload);
                if (!m.ok()) return finish(m.status().with_context("from " + where()));
                if ((m->resumed != 0) != resume) {
                    return finish(protocol_error(where() + (resume ? " did not resume the session"
                                                                   : " claims to resume a session we did not ask for")));
                }
                stage = Stage::kDone;
                finished = true;
                deadline_timer.cancel();
                impl->on_dialed(shared_from_this(), ok_status(), *m);
                return;
            }
            finish(protocol_error("unexpected " + std::string(message_type_name(f.type)) + " from " + where() +
                                  " during the handshake"));
        }

        void on_close(const std::shared_ptr<FramedConnection>& c, const Status& s) {
            if (stage == Stage::kDone) {
                impl->on_session_close(c, s);
                return;
            }
            if (finished || c != conn) return;
            // Closed during the handshake (e.g. pushed out by a flood of other connections): try again.
            conn.reset();
            retry(s.message());
        }

        void finish(Status s) {
            if (finished) return;
            finished = true;
            deadline_timer.cancel();
            retry_timer.cancel();
            boost::system::error_code ignore;
            resolver.cancel();
            if (socket) socket->close(ignore);
            if (conn) conn->close(s);
            impl->on_dialed(shared_from_this(), s, HelloAck{});
        }
    };

    void dial(Clock::time_point deadline, bool resume) {
        active = std::make_shared<Attempt>(this, deadline, resume);
        active->begin();
    }

    // io thread: an attempt ended (`s` OK: the connection is registered / resumed).
    void on_dialed(const std::shared_ptr<Attempt>& a, const Status& s, const HelloAck& ack) {
        if (active == a) active.reset();
        if (!a->resume) {
            {
                std::lock_guard lock(mu);
                connect_result = s;
                if (s.ok()) {
                    session_id = ack.session_id;
                    grace_ms = ack.resume_grace_ms;
                    conn = a->conn;
                }
            }
            cv.notify_all();
            if (s.ok()) start_session(a->conn, ack.received);
            return;
        }
        if (!s.ok()) {
            lose(unavailable("lost the coordinator at " + options.coordinator + " and could not resume within " +
                             std::to_string(grace_ms) + " ms: " + s.message()));
            return;
        }
        bool leave = false;
        {
            std::lock_guard lock(mu);
            conn = a->conn;
            ++resumes;
            leave = leaving;
        }
        spdlog::info("control: resumed session {} with the coordinator at {}", session_id, options.coordinator);
        start_session(a->conn, ack.received);
        if (leave) send_shutdown(a->conn, "leader shutting down");
    }

    void start_session(const std::shared_ptr<FramedConnection>& c, uint64_t peer_received) {
        Status bound = link.bind(c, peer_received);
        if (!bound.ok()) {
            c->close(bound.with_context("resuming the session"));
            return;
        }
        c->set_read_policy(session_policy());
        Impl* self = this;
        c->start_heartbeats([self] { return self->link.received(); }, [self](uint64_t a) { self->link.on_ack(a); });
    }

    void on_session_frame(const std::shared_ptr<FramedConnection>& c, internal::Frame f) {
        Status bad;
        {
            std::unique_lock lock(mu);
            if (c != conn) return;
            switch (f.type) {
                case MessageType::kStepBatch: {
                    link.on_data_received();
                    auto m = decode_step_batch(f.payload);
                    if (!m.ok()) {
                        bad = m.status();
                    } else {
                        batches.push_back(std::move(m).value());
                    }
                    break;
                }
                case MessageType::kShutdown: {
                    auto m = decode_shutdown(f.payload);
                    shutdown_reason = m.ok() ? m->reason : "(unreadable reason)";
                    break;
                }
                default:
                    bad = protocol_error("unexpected " + std::string(message_type_name(f.type)) + " from the coordinator");
            }
        }
        cv.notify_all();
        if (!bad.ok()) c->close(bad.with_context("from the coordinator"));
    }

    void on_session_close(const std::shared_ptr<FramedConnection>& c, const Status& s) {
        bool reconnect = false;
        {
            std::lock_guard lock(mu);
            if (c != conn) return;
            link.unbind(c.get());
            conn.reset();
            // Any break the coordinator did not announce with a Shutdown is worth a resume, not only
            // one that went quiet here: with loss in one direction the coordinator's side goes quiet
            // first, and it closes a link that looks live from this end while it keeps the session.
            // A coordinator that dropped the session refuses the resume at once; one that is gone
            // leaves the redial failing until the grace period ends.
            reconnect = !leaving && !shutdown_reason && s.code() == StatusCode::kUnavailable && grace_ms > 0;
            if (!reconnect) closed = s.ok() ? unavailable("connection closed") : s;
        }
        cv.notify_all();
        if (!reconnect) return;
        spdlog::warn("control: link to the coordinator at {} lost ({}); resuming session {} (up to {} ms)",
                     options.coordinator, s.message(), session_id, grace_ms);
        dial(Clock::now() + milliseconds(grace_ms), /*resume=*/true);
    }

    void lose(const Status& s) {
        {
            std::lock_guard lock(mu);
            if (closed.ok()) closed = s;
        }
        cv.notify_all();
    }

    void send_shutdown(const std::shared_ptr<FramedConnection>& c, const std::string& reason) {
        Shutdown m;
        m.reason = reason;
        std::string frame;
        encode(m, &frame);
        c->send(std::move(frame));
        c->close_after_flush(cancelled("leader shut down: " + reason));
    }
};

LeaderClient::LeaderClient(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

LeaderClient::~LeaderClient() {
    shutdown("leader client destroyed");
    impl_->work.reset();
    // Pending handlers finish quickly once the socket is closed; stop() bounds the wait regardless.
    if (impl_->thread.joinable()) {
        auto deadline = Clock::now() + milliseconds(500);
        while (!impl_->io.stopped() && Clock::now() < deadline) std::this_thread::sleep_for(milliseconds(5));
        impl_->io.stop();
        impl_->thread.join();
    }
}

StatusOr<std::unique_ptr<LeaderClient>> LeaderClient::connect(const LeaderOptions& options, const Hello& hello) {
    auto impl = std::make_shared<Impl>();
    DS_RETURN_IF_ERROR(internal::split_host_port(options.coordinator, &impl->host, &impl->port));
    if (options.secret.size() < kMinSecretBytes) {
        return invalid_argument("the leader needs the job's control secret to register (see --control-secret-file)");
    }
    if (options.tls.client_enabled()) {
        DS_ASSIGN_OR_RETURN(impl->tls, make_tls_client_context(options.tls));
    }
    impl->options = options;
    impl->hello = hello;
    impl->hello.resume_session = 0;
    impl->hello.received = 0;
    impl->work.emplace(impl->io.get_executor());
    Impl* raw = impl.get();
    impl->thread = std::thread([raw] {
        for (;;) {
            try {
                raw->io.run();
                return;
            } catch (const std::exception& e) {
                spdlog::error("control I/O thread: {}", e.what());
            }
        }
    });
    std::unique_ptr<LeaderClient> client(new LeaderClient(impl));
    const auto until = Clock::now() + options.connect_timeout;
    asio::post(impl->io, [raw, until] { raw->dial(until, /*resume=*/false); });
    std::unique_lock lock(impl->mu);
    // The attempt has its own deadline; the extra second only covers a stuck I/O thread.
    impl->cv.wait_until(lock, until + std::chrono::seconds(1), [&] { return impl->connect_result.has_value(); });
    if (!impl->connect_result) {
        return deadline_exceeded("no HelloAck from the coordinator at " + options.coordinator + " within " +
                                 std::to_string(options.connect_timeout.count()) + " ms");
    }
    Status s = *impl->connect_result;
    if (!s.ok()) {
        lock.unlock();
        return s;
    }
    if (impl->shutdown_reason) {
        return cancelled("the coordinator shut the job down during the handshake: " + *impl->shutdown_reason);
    }
    return client;
}

StatusOr<StepBatch> LeaderClient::next_batch(milliseconds deadline) {
    Impl& im = *impl_;
    std::unique_lock lock(im.mu);
    im.cv.wait_for(lock, deadline, [&] { return !im.batches.empty() || !im.closed.ok() || im.shutdown_reason; });
    // Batches that arrived before a Shutdown/close are still handed out: they were sent in order.
    if (!im.batches.empty()) {
        StepBatch b = std::move(im.batches.front());
        im.batches.pop_front();
        return b;
    }
    if (im.shutdown_reason) return cancelled(*im.shutdown_reason);
    if (!im.closed.ok()) return Status(StatusCode::kUnavailable, "coordinator lost: " + im.closed.message());
    return deadline_exceeded("no step batch within " + std::to_string(deadline.count()) + " ms");
}

Status LeaderClient::send_result(const StepResult& result) {
    {
        std::lock_guard lock(impl_->mu);
        if (!impl_->closed.ok()) return Status(StatusCode::kUnavailable, "coordinator lost: " + impl_->closed.message());
    }
    std::string frame;
    encode(result, &frame);
    Status s = impl_->link.send_data(std::move(frame));
    if (!s.ok()) return unavailable("coordinator lost: " + s.message());
    return ok_status();
}

void LeaderClient::shutdown(const std::string& reason) {
    std::shared_ptr<FramedConnection> c;
    {
        std::lock_guard lock(impl_->mu);
        if (impl_->leaving) return;
        impl_->leaving = true;
        c = impl_->conn;
    }
    if (c) impl_->send_shutdown(c, reason);
    // A reconnect in progress stops here.
    asio::post(impl_->io, [raw = impl_.get()] {
        if (raw->active) raw->active->finish(cancelled("leader shut down"));
    });
}

uint64_t LeaderClient::session_id() const {
    std::lock_guard lock(impl_->mu);
    return impl_->session_id;
}

Status LeaderClient::status() const {
    std::lock_guard lock(impl_->mu);
    return impl_->closed;
}

uint64_t LeaderClient::resumes() const {
    std::lock_guard lock(impl_->mu);
    return impl_->resumes;
}

}  // namespace deepshard::control
