#include "control/leader_client.h"

#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <variant>

#include <spdlog/spdlog.h>

#include "control/connection.h"

namespace deepshard::control {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;
namespace asio = boost::asio;
using tcp = asio::ip::tcp;

struct LeaderClient::Impl {
    asio::io_context io;
    std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
    std::thread thread;
    std::shared_ptr<internal::FramedConnection> conn;
    uint64_t session_id = 0;

    // Inbox filled by the I/O thread.
    mutable std::mutex mu;
    std::condition_variable cv;
    std::deque<StepBatch> batches;
    std::optional<HelloAck> ack;
    std::optional<std::string> refused;
    std::optional<std::string> shutdown_reason;
    Status closed;  // non-OK once the connection is gone

    void on_frame(internal::Frame f) {
        Status bad;
        std::unique_lock lock(mu);
        switch (f.type) {
            case MessageType::kHelloAck: {
                auto m = decode_hello_ack(f.payload);
                if (!m.ok()) {
                    bad = m.status();
                } else if (ack) {
                    bad = protocol_error("second HelloAck");
                } else {
                    ack = *m;
                }
                break;
            }
            case MessageType::kRefuse: {
                auto m = decode_refuse(f.payload);
                refused = m.ok() ? m->reason : "(unreadable reason: " + m.status().message() + ")";
                break;
            }
            case MessageType::kStepBatch: {
                auto m = decode_step_batch(f.payload);
                if (!m.ok()) {
                    bad = m.status();
                } else if (!ack) {
                    bad = protocol_error("StepBatch before HelloAck");
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
                bad = protocol_error("unexpected message type " + std::to_string(static_cast<int>(f.type)) +
                                     " from the coordinator");
        }
        lock.unlock();
        cv.notify_all();
        if (!bad.ok()) conn->close(bad.with_context("from the coordinator"));
    }

    void on_close(const Status& s) {
        {
            std::lock_guard lock(mu);
            closed = s.ok() ? unavailable("connection closed") : s;
        }
        cv.notify_all();
    }
};

LeaderClient::LeaderClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

LeaderClient::~LeaderClient() {
    if (impl_->conn) impl_->conn->close(unavailable("leader client destroyed"));
    impl_->work.reset();
    // Pending handlers finish quickly once the socket is closed; stop() bounds the wait regardless.
    if (impl_->thread.joinable()) {
        auto deadline = Clock::now() + milliseconds(500);
        while (!impl_->io.stopped() && Clock::now() < deadline) std::this_thread::sleep_for(milliseconds(5));
        impl_->io.stop();
        impl_->thread.join();
    }
}

StatusOr<std::unique_ptr<LeaderClient>> LeaderClient::connect(const std::string& host_port, const Hello& hello,
                                                              milliseconds deadline) {
    std::string host, port;
    DS_RETURN_IF_ERROR(internal::split_host_port(host_port, &host, &port));
    const auto until = Clock::now() + deadline;
    auto impl = std::make_unique<Impl>();
    tcp::socket socket(asio::make_strand(impl->io));
    std::string last_error = "no attempt";
    // Connect, retrying while the coordinator is not listening yet. Each attempt runs the
    // io_context on this thread, bounded by what is left of the deadline.
    for (;;) {
        const auto left = std::chrono::duration_cast<milliseconds>(until - Clock::now());
        if (left <= milliseconds(0)) {
            return deadline_exceeded("connecting to the coordinator at " + host_port + " timed out after " +
                                     std::to_string(deadline.count()) + " ms (" + last_error + ")");
        }
        boost::system::error_code result = asio::error::would_block;
        tcp::resolver resolver(impl->io);
        resolver.async_resolve(host, port, [&](boost::system::error_code ec, tcp::resolver::results_type eps) {
            if (ec) {
                result = ec;
                return;
            }
            asio::async_connect(socket, eps, [&](boost::system::error_code ec2, const tcp::endpoint&) { result = ec2; });
        });
        impl->io.restart();
        impl->io.run_for(left);
        if (result == asio::error::would_block) {
            boost::system::error_code ignore;
            socket.close(ignore);
            impl->io.restart();
            impl->io.poll();  // let the cancelled handlers run before `result` goes out of scope
            last_error = "no answer";
            continue;
        }
        if (!result) break;
        last_error = result.message();
        boost::system::error_code ignore;
        socket.close(ignore);
        std::this_thread::sleep_for(std::min(milliseconds(100), std::max(milliseconds(1), left)));
    }
    impl->io.restart();

    Impl* raw = impl.get();
    impl->conn = internal::FramedConnection::create(std::move(socket),
                                                    internal::default_connection_options("coordinator " + host_port));
    impl->conn->start([raw](internal::Frame f) { raw->on_frame(std::move(f)); },
                      [raw](const Status& s) { raw->on_close(s); });
    std::string frame;
    encode(hello, &frame);
    impl->conn->send(std::move(frame));
    impl->work.emplace(impl->io.get_executor());
    impl->thread = std::thread([raw] {
        try {
            raw->io.run();
        } catch (const std::exception& e) {
            spdlog::error("control I/O thread: {}", e.what());
        }
    });
    std::unique_ptr<LeaderClient> client(new LeaderClient(std::move(impl)));
    Impl& im = *client->impl_;
    std::unique_lock lock(im.mu);
    im.cv.wait_until(lock, until, [&] { return im.ack || im.refused || !im.closed.ok() || im.shutdown_reason; });
    if (im.refused) {
        return invalid_argument("the coordinator at " + host_port + " refused registration: " + *im.refused);
    }
    if (im.ack) {
        im.session_id = im.ack->session_id;
        return client;
    }
    if (im.shutdown_reason) {
        return cancelled("the coordinator shut the job down during the handshake: " + *im.shutdown_reason);
    }
    if (!im.closed.ok()) return im.closed.with_context("handshake with the coordinator at " + host_port);
    return deadline_exceeded("no HelloAck from the coordinator at " + host_port + " within " +
                             std::to_string(deadline.count()) + " ms");
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
    impl_->conn->send(std::move(frame));
    return ok_status();
}

void LeaderClient::shutdown(const std::string& reason) {
    Shutdown m;
    m.reason = reason;
    std::string frame;
    encode(m, &frame);
    impl_->conn->send(std::move(frame));
    impl_->conn->close_after_flush(cancelled("leader shut down: " + reason));
}

uint64_t LeaderClient::session_id() const {
    return impl_->session_id;
}

Status LeaderClient::status() const {
    std::lock_guard lock(impl_->mu);
    return impl_->closed;
}

}  // namespace deepshard::control
