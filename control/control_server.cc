#include "control/control_server.h"

#include <atomic>
#include <mutex>
#include <thread>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "control/connection.h"

namespace deepshard::control {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using internal::FramedConnection;

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
    ControlServerOptions options;
    ControlListener* listener = nullptr;
    asio::io_context io;
    tcp::acceptor acceptor{io};
    std::thread thread;

    mutable std::mutex mu;
    std::shared_ptr<FramedConnection> leader;  // the registered one
    uint64_t leader_session = 0;
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

    void on_accept(tcp::socket socket) {
        boost::system::error_code ec;
        auto remote = socket.remote_endpoint(ec);
        const std::string peer = ec ? "unknown" : remote.address().to_string() + ":" + std::to_string(remote.port());
        auto conn = FramedConnection::create(std::move(socket), internal::default_connection_options("leader " + peer));
        // Per-connection handshake state lives in the callbacks' captures.
        auto registered = std::make_shared<uint64_t>(0);
        auto timer = std::make_shared<asio::steady_timer>(io, options.handshake_timeout);
        std::weak_ptr<FramedConnection> weak = conn;
        timer->async_wait([weak, registered](boost::system::error_code e) {
            if (e) return;
            if (auto c = weak.lock(); c && *registered == 0) {
                c->close(deadline_exceeded("no Hello from " + c->peer_name() + " within the handshake timeout"));
            }
        });
        auto self = shared_from_this();
        conn->start(
            [self, weak, registered, timer, peer](internal::Frame f) {
                auto c = weak.lock();
                if (!c) return;
                if (*registered == 0) {
                    self->on_handshake(c, std::move(f), registered, timer, peer);
                } else {
                    self->on_session_frame(c, *registered, std::move(f));
                }
            },
            [self, registered, timer](const Status& s) {
                timer->cancel();
                if (*registered != 0) self->on_close(*registered, s);
            });
    }

    void refuse(const std::shared_ptr<FramedConnection>& c, const std::string& reason) {
        spdlog::warn("control port: refusing {}: {}", c->peer_name(), reason);
        Refuse r;
        r.reason = reason;
        std::string frame;
        encode(r, &frame);
        c->send(std::move(frame));
        c->close_after_flush(invalid_argument("refused: " + reason));
    }

    void on_handshake(const std::shared_ptr<FramedConnection>& c, internal::Frame f,
                      const std::shared_ptr<uint64_t>& registered, const std::shared_ptr<asio::steady_timer>& timer,
                      const std::string& peer) {
        if (f.type != MessageType::kHello) {
            c->close(protocol_error("first message from " + c->peer_name() + " is not Hello"));
            return;
        }
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
        uint64_t session = 0;
        {
            std::lock_guard lock(mu);
            if (leader && !leader->is_closed()) {
                session = 0;
            } else {
                session = next_session.fetch_add(1);
                leader = c;
                leader_session = session;
            }
        }
        if (session == 0) {
            refuse(c, "another shard job is already registered with this coordinator");
            return;
        }
        *registered = session;
        timer->cancel();
        HelloAck ack;
        ack.session_id = session;
        std::string frame;
        encode(ack, &frame);
        c->send(std::move(frame));
        LeaderInfo info;
        info.session_id = session;
        info.hello = std::move(hello).value();
        info.peer = peer;
        spdlog::info("shard job {} registered from {} (session {}, {} ranks, {} stages, {} KV blocks x {})",
                     info.hello.job_id, peer, session, info.hello.world_size, info.hello.pipeline_stages,
                     info.hello.kv_blocks, info.hello.kv_block_size);
        listener->on_registered(info);
    }

    void on_session_frame(const std::shared_ptr<FramedConnection>& c, uint64_t session, internal::Frame f) {
        switch (f.type) {
            case MessageType::kStepResult: {
                auto r = decode_step_result(f.payload);
                if (!r.ok()) {
                    c->close(r.status().with_context("from " + c->peer_name()));
                    return;
                }
                listener->on_result(session, std::move(r).value());
                return;
            }
            case MessageType::kShutdown: {
                auto s = decode_shutdown(f.payload);
                c->close(unavailable("the shard job shut down: " + (s.ok() ? s->reason : s.status().message())));
                return;
            }
            default:
                c->close(protocol_error("unexpected message type " + std::to_string(static_cast<int>(f.type)) +
                                        " from " + c->peer_name()));
        }
    }

    void on_close(uint64_t session, const Status& s) {
        {
            std::lock_guard lock(mu);
            if (leader_session == session) {
                leader.reset();
                leader_session = 0;
            }
        }
        spdlog::warn("shard job session {} lost: {}", session, s.message());
        if (!stopping.load()) listener->on_lost(session, s);
    }
};

ControlServer::ControlServer(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

StatusOr<std::unique_ptr<ControlServer>> ControlServer::start(const ControlServerOptions& options,
                                                              ControlListener* listener) {
    std::string host, port;
    DS_RETURN_IF_ERROR(internal::split_host_port(options.listen, &host, &port));
    auto impl = std::make_shared<Impl>();
    impl->options = options;
    impl->listener = listener;
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
    std::shared_ptr<FramedConnection> c;
    {
        std::lock_guard lock(impl_->mu);
        if (impl_->leader_session != session_id || !impl_->leader || impl_->leader->is_closed()) {
            return unavailable("shard job session " + std::to_string(session_id) + " is not registered");
        }
        c = impl_->leader;
    }
    std::string frame;
    encode(batch, &frame);
    c->send(std::move(frame));
    return ok_status();
}

void ControlServer::shutdown_leader(const std::string& reason) {
    std::shared_ptr<FramedConnection> c;
    {
        std::lock_guard lock(impl_->mu);
        c = impl_->leader;
    }
    if (!c) return;
    Shutdown m;
    m.reason = reason;
    std::string frame;
    encode(m, &frame);
    c->send(std::move(frame));
    c->close_after_flush(cancelled("shut down: " + reason));
}

bool ControlServer::has_leader() const {
    std::lock_guard lock(impl_->mu);
    return impl_->leader && !impl_->leader->is_closed();
}

}  // namespace deepshard::control
