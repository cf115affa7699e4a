#include "control/control_server.h"

#include <atomic>
#include <map>
#include <mutex>
#include <thread>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "control/auth.h"
#include "control/connection.h"
#include "control/session_link.h"
#include "control/tls_context.h"

namespace deepshard::control {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using internal::FramedConnection;
using internal::ReadPolicy;
using Clock = std::chrono::steady_clock;

namespace {

// What an unauthenticated peer may send: AuthHello, then AuthProof, nothing else.
constexpr uint64_t kHandshakeBudget = 2 * (kFrameHeaderSize + kMaxHandshakePayload);
constexpr size_t kMaxRetainedBytes = 512u << 20;

ReadPolicy auth_hello_policy() {
    return {type_bit(MessageType::kAuthHello), kMaxHandshakePayload, kHandshakeBudget};
}
ReadPolicy auth_proof_policy() {
    return {type_bit(MessageType::kAuthProof), kMaxHandshakePayload, kHandshakeBudget};
}
ReadPolicy hello_policy() {
    return {type_bit(MessageType::kHello), kMaxHelloPayload, 0};
}
ReadPolicy session_policy() {
    return {type_bit(MessageType::kStepResult) | type_bit(MessageType::kHeartbeat) | type_bit(MessageType::kShutdown),
            kMaxPayload, 0};
}

}  // namespace

std::string compare_plans(const std::string& expected, const std::string& got) {
    try {
        auto a = nlohmann::json::parse(expected);
        auto b = nlohmann::json::parse(got);
        if (a == b) return "";
        return "plan mismatch: the shard job runs a different plan than the coordinator's --plan";
    } catch (const nlohmann::json::exception&) {
        if (expected == got) return "";
        return "plan mismatch: the shard job's plan differs (and is not comparable JSON)";
    }
}

struct ControlServer::Impl : std::enable_shared_from_this<ControlServer::Impl> {
    // One accepted connection until it registers (or fails to).
    struct Pending {
        enum class Stage { kAuthHello, kProof, kHello, kDone };
        uint64_t id = 0;
        std::shared_ptr<FramedConnection> conn;
        Stage stage = Stage::kAuthHello;
        Nonce client_nonce{};
        Nonce server_nonce{};
        std::string peer;
        uint64_t session = 0;  // once registered
        std::unique_ptr<asio::steady_timer> timer;
    };
    // The registered leader's session; outlives a broken link for the grace period.
    struct Session {
        uint64_t id = 0;
        LeaderInfo info;
        internal::SessionLink link{kMaxRetainedBytes};
        std::shared_ptr<FramedConnection> conn;  // null while the link is down
        std::unique_ptr<asio::steady_timer> grace;
        Clock::time_point down_since;
        bool ending = false;  // dropped by us or shut down by the leader: no grace
    };

    ControlServerOptions options;
    ControlListener* listener = nullptr;
    std::shared_ptr<asio::ssl::context> tls;
    asio::io_context io;
    tcp::acceptor acceptor{io};
    std::thread thread;

    mutable std::mutex mu;
    std::shared_ptr<Session> session;
    std::map<uint64_t, std::shared_ptr<Pending>> pending;  // by id: the smallest is the oldest
    uint64_t next_pending = 1;
    ControlServerStats stats;
    std::atomic<uint64_t> next_session{1};
    std::atomic<bool> stopping{false};

    void accept() {
        acceptor.async_accept(asio::make_strand(io), [self = shared_from_this()](boost::system::error_code ec,
                                                                                tcp::socket socket) {
            if (self->stopping.load()) return;
            if (!ec) self->on_accept(std::move(socket));
            else spdlog::warn("control port: accept failed: {}", ec.message());
            self->accept();
        });
    }

    // Warnings about unauthenticated peers are rate-limited: a flood must not flood the log too.
    static bool should_log(uint64_t count) { return count <= 5 || count % 100 == 0; }

    void on_accept(tcp::socket socket) {
        boost::system::error_code ec;
        auto remote = socket.remote_endpoint(ec);
        const std::string peer = ec ? "unknown" : remote.address().to_string() + ":" + std::to_string(remote.port());
        auto p = std::make_shared<Pending>();
        p->peer = peer;
        p->conn = FramedConnection::create(std::move(socket), internal::default_connection_options("peer " + peer), tls,
                                           /*tls_server=*/true);
        std::shared_ptr<FramedConnection> evicted;
        uint64_t evicted_count = 0;
        {
            std::lock_guard lock(mu);
            if (!pending.empty() && pending.size() >= options.max_pending_connections) {
                evicted = pending.begin()->second->conn;
                pending.erase(pending.begin());
                evicted_count = ++stats.pending_evicted;
            }
            p->id = next_pending++;
            pending[p->id] = p;
        }
        if (evicted) {
            if (should_log(evicted_count)) {
                spdlog::warn("control port: {} unauthenticated connections at once; dropping the oldest ({}) ({} so far)",
                             options.max_pending_connections, evicted->peer_name(), evicted_count);
            }
            evicted->close(resource_exhausted("pushed out by newer unauthenticated connections"));
        }
        p->timer = std::make_unique<asio::steady_timer>(io, options.handshake_timeout);
        std::weak_ptr<Pending> weak = p;
        auto self = shared_from_this();
        p->timer->async_wait([self, weak](boost::system::error_code e) {
            if (e) return;
            auto pp = weak.lock();
            if (!pp || pp->stage == Pending::Stage::kDone) return;
            uint64_t n = 0;
            {
                std::lock_guard lock(self->mu);
                n = ++self->stats.handshake_timeouts;
            }
            if (should_log(n)) {
                spdlog::warn("control port: {} did not complete the handshake within {} ms", pp->conn->peer_name(),
                             self->options.handshake_timeout.count());
            }
            pp->conn->close(deadline_exceeded("no complete handshake from " + pp->conn->peer_name() + " within " +
                                              std::to_string(self->options.handshake_timeout.count()) + " ms"));
        });
        p->conn->start(
            auth_hello_policy(),
            [self, weak](internal::Frame f) {
                auto pp = weak.lock();
                if (!pp) return;
                if (pp->stage == Pending::Stage::kDone) {
                    self->on_session_frame(pp->conn, pp->session, std::move(f));
                } else {
                    self->on_handshake(pp, std::move(f));
                }
            },
            [self, p](const Status& s) {
                // `p` is kept alive by this callback until the connection closes.
                p->timer->cancel();
                {
                    std::lock_guard lock(self->mu);
                    self->pending.erase(p->id);
                }
                if (p->stage == Pending::Stage::kDone) {
                    self->on_session_close(p->session, p->conn.get(), s, p->conn->went_quiet());
                }
            });
    }

    void refuse(const std::shared_ptr<FramedConnection>& c, const std::string& reason, bool quiet = false) {
        if (!quiet) spdlog::warn("control port: refusing {}: {}", c->peer_name(), reason);
        Refuse r;
        r.reason = reason;
        std::string frame;
        encode(r, &frame);
        c->send(std::move(frame));
        c->close_after_flush(invalid_argument("refused: " + reason));
    }

    void on_handshake(const std::shared_ptr<Pending>& p, internal::Frame f) {
        const auto& c = p->conn;
        switch (p->stage) {
            case Pending::Stage::kAuthHello: {
                auto m = decode_auth_hello(f.payload);
                if (!m.ok()) {
                    c->close(m.status().with_context("from " + c->peer_name()));
                    return;
                }
                p->client_nonce = m->client_nonce;
                p->server_nonce = random_nonce();
                AuthChallenge ch;
                ch.server_nonce = p->server_nonce;
                ch.server_mac = auth_mac(options.secret, AuthRole::kCoordinator, p->client_nonce, p->server_nonce,
                                         c->channel_binding());
                std::string frame;
                encode(ch, &frame);
                c->send(std::move(frame));
                p->stage = Pending::Stage::kProof;
                c->set_read_policy(auth_proof_policy());
                return;
            }
            case Pending::Stage::kProof: {
                auto m = decode_auth_proof(f.payload);
                if (!m.ok()) {
                    c->close(m.status().with_context("from " + c->peer_name()));
                    return;
                }
                const Mac want = auth_mac(options.secret, AuthRole::kLeader, p->client_nonce, p->server_nonce,
                                          c->channel_binding());
                if (!mac_equal(want, m->client_mac)) {
                    uint64_t n = 0;
                    {
                        std::lock_guard lock(mu);
                        n = ++stats.auth_failures;
                    }
                    refuse(c,
                           "authentication failed: the shard job does not hold this coordinator's control secret "
                           "(--control-secret-file / DS_CONTROL_SECRET_FILE)",
                           !should_log(n));
                    return;
                }
                p->stage = Pending::Stage::kHello;
                c->set_read_policy(hello_policy());
                return;
            }
            case Pending::Stage::kHello:
                on_hello(p, std::move(f));
                return;
            case Pending::Stage::kDone:
                return;
        }
    }

    void on_hello(const std::shared_ptr<Pending>& p, internal::Frame f) {
        const auto& c = p->conn;
        auto hello = decode_hello(f.payload);
        if (!hello.ok()) {
            refuse(c, hello.status().message());
            return;
        }
        if (hello->version != kVersion) {
            refuse(c, "protocol version " + std::to_string(hello->version) + " is not supported (coordinator speaks " +
                          std::to_string(kVersion) + ")");
            return;
        }
        if (hello->model_fingerprint != options.model_fingerprint) {
            char buf[160];
            std::snprintf(buf, sizeof(buf),
                          "model fingerprint mismatch: shard job has %016llx, coordinator serves %016llx",
                          static_cast<unsigned long long>(hello->model_fingerprint),
                          static_cast<unsigned long long>(options.model_fingerprint));
            refuse(c, buf);
            return;
        }
        if (options.plan_json) {
            std::string why = compare_plans(*options.plan_json, hello->plan_json);
            if (!why.empty()) {
                refuse(c, why);
                return;
            }
        }
        std::shared_ptr<Session> s;
        std::shared_ptr<Session> replaced;  // a session in its grace period, superseded
        std::shared_ptr<FramedConnection> old_conn;
        std::string refusal;
        bool resumed = false;
        {
            std::lock_guard lock(mu);
            if (hello->resume_session != 0) {
                if (!session || session->id != hello->resume_session || session->ending) {
                    refusal = "session " + std::to_string(hello->resume_session) +
                              " is unknown or expired (not resumed within " +
                              std::to_string(options.resume_grace.count()) + " ms); the shard job must restart";
                } else {
                    s = session;
                    old_conn = s->conn;
                    resumed = true;
                }
            } else if (session && !session->ending && session->conn && !session->conn->is_closed()) {
                refusal = "another shard job is already registered with this coordinator";
            } else {
                replaced = session;
                if (replaced) replaced->ending = true;
                s = std::make_shared<Session>();
                s->id = next_session.fetch_add(1);
                s->info.session_id = s->id;
                s->info.peer = p->peer;
                session = s;
            }
            if (refusal.empty()) {
                s->conn = c;
                if (s->grace) s->grace->cancel();
                s->grace.reset();
                if (resumed) ++stats.resumes;
                pending.erase(p->id);
                p->stage = Pending::Stage::kDone;
                p->session = s->id;
            }
        }
        if (!refusal.empty()) {
            refuse(c, refusal);
            return;
        }
        p->timer->cancel();
        if (replaced) {
            if (replaced->grace) replaced->grace->cancel();
            listener->on_lost(replaced->id, unavailable("replaced by a newly registered shard job"));
        }
        if (old_conn && old_conn != c) old_conn->close(cancelled("replaced by a resumed connection"));
        HelloAck ack;
        ack.session_id = s->id;
        ack.resumed = resumed ? 1 : 0;
        ack.received = s->link.received();
        ack.resume_grace_ms = static_cast<uint32_t>(options.resume_grace.count());
        std::string frame;
        encode(ack, &frame);
        c->send(std::move(frame));  // before the link resends anything
        Status bound = s->link.bind(c, resumed ? hello->received : 0);
        if (!bound.ok()) {
            {
                std::lock_guard lock(mu);
                s->ending = true;
            }
            c->close(bound.with_context("resuming session " + std::to_string(s->id)));
            return;
        }
        c->set_read_policy(session_policy());
        std::weak_ptr<Session> ws = s;
        c->start_heartbeats(
            [ws] {
                auto ss = ws.lock();
                return ss ? ss->link.received() : 0;
            },
            [ws](uint64_t a) {
                if (auto ss = ws.lock()) ss->link.on_ack(a);
            });
        if (resumed) {
            const double down_ms =
                std::chrono::duration<double, std::milli>(Clock::now() - s->down_since).count();
            spdlog::info("shard job session {} resumed from {} after {:.0f} ms without a link ({} batches resent)",
                         s->id, p->peer, s->down_since == Clock::time_point{} ? 0.0 : down_ms,
                         s->link.sent() - hello->received);
            listener->on_link(s->id, true, ok_status());
            return;
        }
        s->info.hello = std::move(hello).value();
        spdlog::info("shard job {} registered from {} (session {}, {} ranks, {} stages, {} KV blocks x {}{})",
                     s->info.hello.job_id, p->peer, s->id, s->info.hello.world_size, s->info.hello.pipeline_stages,
                     s->info.hello.kv_blocks, s->info.hello.kv_block_size, c->is_tls() ? ", TLS" : "");
        listener->on_registered(s->info);
    }

    void on_session_frame(const std::shared_ptr<FramedConnection>& c, uint64_t session_id, internal::Frame f) {
        std::shared_ptr<Session> s;
        {
            std::lock_guard lock(mu);
            if (session && session->id == session_id && session->conn == c) s = session;
        }
        if (!s) return;  // a replaced connection's late frame
        switch (f.type) {
            case MessageType::kStepResult: {
                s->link.on_data_received();
                auto r = decode_step_result(f.payload);
                if (!r.ok()) {
                    c->close(r.status().with_context("from " + c->peer_name()));
                    return;
                }
                listener->on_result(session_id, std::move(r).value());
                return;
            }
            case MessageType::kShutdown: {
                auto m = decode_shutdown(f.payload);
                {
                    std::lock_guard lock(mu);
                    s->ending = true;
                }
                // kCancelled: a departure, not a loss (no resume grace, no "lost" warning).
                c->close(cancelled("the shard job shut down: " + (m.ok() ? m->reason : m.status().message())));
                return;
            }
            default:
                c->close(protocol_error("unexpected message type " + std::to_string(static_cast<int>(f.type)) +
                                        " from " + c->peer_name()));
        }
    }

    // The connection of session `session_id` closed (io thread). A link that went quiet first gets
    // the whole grace period; one the leader closed while it was live here gets the short one: that
    // is a crashed leader process, or a leader whose side of a lossy link went quiet and that redials.
    void on_session_close(uint64_t session_id, const FramedConnection* c, const Status& why, bool quiet) {
        std::shared_ptr<Session> s;
        bool grace = false;
        bool ending = false;
        const std::chrono::milliseconds grace_for =
            quiet ? options.resume_grace : std::min(options.resume_grace, options.resume_grace_after_close);
        {
            std::lock_guard lock(mu);
            if (!session || session->id != session_id || session->conn.get() != c) return;  // replaced
            s = session;
            ending = s->ending;
            s->link.unbind(c);
            s->conn.reset();
            grace = !s->ending && !stopping.load() && why.code() == StatusCode::kUnavailable &&
                    grace_for.count() > 0;
            if (grace) {
                s->down_since = Clock::now();
                s->grace = std::make_unique<asio::steady_timer>(io, grace_for);
            } else {
                session.reset();
            }
        }
        if (!grace) {
            // A job that said goodbye, or a coordinator that is stopping, is no loss worth a warning.
            if (ending || stopping.load()) {
                spdlog::info("shard job session {} ended: {}", session_id, why.message());
            } else {
                spdlog::warn("shard job session {} lost: {}", session_id, why.message());
            }
            // Whatever closed the socket after the goodbye (its EOF may win the race), it was one.
            const Status reason = ending && why.code() != StatusCode::kCancelled
                                      ? cancelled("the shard job shut down (" + why.message() + ")")
                                      : why;
            if (!stopping.load()) listener->on_lost(session_id, reason);
            return;
        }
        spdlog::warn("shard job session {}: link lost ({}); keeping the session {} ms for the leader to resume",
                     session_id, why.message(), grace_for.count());
        listener->on_link(session_id, false, why);
        std::weak_ptr<Session> weak = s;
        s->grace->async_wait([self = shared_from_this(), weak, why, grace_for](boost::system::error_code e) {
            if (e) return;
            auto ss = weak.lock();
            if (!ss) return;
            {
                std::lock_guard lock(self->mu);
                if (self->session != ss || ss->conn) return;
                self->session.reset();
            }
            Status lost = unavailable("link lost (" + why.message() + ") and not resumed within " +
                                      std::to_string(grace_for.count()) + " ms");
            spdlog::warn("shard job session {} lost: {}", ss->id, lost.message());
            if (!self->stopping.load()) self->listener->on_lost(ss->id, lost);
        });
    }

    // Ends `s` (by us): Shutdown to its leader if connected, else on_lost at once.
    void end_session(uint64_t only_id, const std::string& reason) {
        std::shared_ptr<Session> s;
        std::shared_ptr<FramedConnection> c;
        {
            std::lock_guard lock(mu);
            if (!session || (only_id != 0 && session->id != only_id)) return;
            s = session;
            s->ending = true;
            c = s->conn;
            if (!c) session.reset();
        }
        if (!c) {
            // The link is down: there is nobody to tell; the loss is reported from the I/O thread.
            asio::post(io, [self = shared_from_this(), s, reason] {
                if (s->grace) s->grace->cancel();
                if (!self->stopping.load()) self->listener->on_lost(s->id, cancelled("dropped: " + reason));
            });
            return;
        }
        Shutdown m;
        m.reason = reason;
        std::string frame;
        encode(m, &frame);
        c->send(std::move(frame));
        c->close_after_flush(cancelled("shut down: " + reason));
    }
};

ControlServer::ControlServer(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

StatusOr<std::unique_ptr<ControlServer>> ControlServer::start(const ControlServerOptions& options,
                                                              ControlListener* listener) {
    std::string host, port;
    DS_RETURN_IF_ERROR(internal::split_host_port(options.listen, &host, &port));
    if (options.secret.size() < kMinSecretBytes) {
        return invalid_argument("the control port needs the job's shared secret (at least " +
                                std::to_string(kMinSecretBytes) + " bytes)");
    }
    if (options.max_pending_connections < 1) return invalid_argument("max_pending_connections must be >= 1");
    auto impl = std::make_shared<Impl>();
    impl->options = options;
    impl->listener = listener;
    if (options.tls.server_enabled()) {
        DS_ASSIGN_OR_RETURN(impl->tls, make_tls_server_context(options.tls));
    }
    try {
        tcp::endpoint ep(asio::ip::make_address(host), static_cast<uint16_t>(std::stoi(port)));
        impl->acceptor.open(ep.protocol());
        impl->acceptor.set_option(tcp::acceptor::reuse_address(true));
        impl->acceptor.bind(ep);
        impl->acceptor.listen();
    } catch (const boost::system::system_error& e) {
        return unavailable("control port " + options.listen + ": " + e.what());
    }
    impl->accept();
    Impl* raw = impl.get();
    impl->thread = std::thread([raw] {
        for (;;) {
            try {
                raw->io.run();
                return;
            } catch (const std::exception& e) {
                spdlog::error("control server I/O thread: {}", e.what());
            }
        }
    });
    return std::unique_ptr<ControlServer>(new ControlServer(std::move(impl)));
}

ControlServer::~ControlServer() {
    impl_->stopping.store(true);
    shutdown_leader("coordinator shutting down");
    asio::post(impl_->io, [impl = impl_] {
        boost::system::error_code ec;
        impl->acceptor.close(ec);
    });
    // Give the Shutdown frame a moment to leave before stopping the loop.
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    impl_->io.stop();
    if (impl_->thread.joinable()) impl_->thread.join();
}

uint16_t ControlServer::port() const {
    boost::system::error_code ec;
    return impl_->acceptor.local_endpoint(ec).port();
}

Status ControlServer::send_batch(uint64_t session_id, const StepBatch& batch) {
    std::shared_ptr<Impl::Session> s;
    {
        std::lock_guard lock(impl_->mu);
        if (!impl_->session || impl_->session->id != session_id || impl_->session->ending) {
            return unavailable("shard job session " + std::to_string(session_id) + " is not registered");
        }
        s = impl_->session;
    }
    std::string frame;
    encode(batch, &frame);
    Status st = s->link.send_data(std::move(frame));
    if (!st.ok()) {
        drop_leader(session_id, st.message());
        return unavailable(st.message());
    }
    return ok_status();
}

void ControlServer::shutdown_leader(const std::string& reason) {
    impl_->end_session(0, reason);
}

void ControlServer::drop_leader(uint64_t session_id, const std::string& reason) {
    if (session_id == 0) return;
    impl_->end_session(session_id, reason);
}

bool ControlServer::has_leader() const {
    std::lock_guard lock(impl_->mu);
    return impl_->session && !impl_->session->ending;
}

ControlServerStats ControlServer::stats() const {
    std::lock_guard lock(impl_->mu);
    ControlServerStats s = impl_->stats;
    s.pending_connections = impl_->pending.size();
    return s;
}

}  // namespace deepshard::control
