// A framed, heartbeating TCP connection for the control protocol (internal to control/; the
// public faces are LeaderClient and ControlServer, which keep Asio out of their headers).
//
// Threading: all socket work runs on one strand of an io_context that the owner runs. send() and
// close() may be called from any thread; they post to the strand. The callbacks run on the strand
// and must not block. The object keeps itself alive while operations are pending (shared_ptr).
//
// Liveness: a Heartbeat frame goes out every `heartbeat_period`; when nothing at all arrives for
// `missed_heartbeats` periods, or a write does not finish within `write_timeout`, the connection
// closes with kUnavailable. Every received frame is header-validated before its payload is read
// (so a bad length never allocates), and heartbeats are validated and consumed here.
#pragma once

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include <utility>  // Boost 1.74 asio/awaitable.hpp uses std::exchange without it

#include <boost/asio.hpp>

#include "control/protocol.h"
#include "common/status.h"

namespace deepshard::control::internal {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

struct Frame {
    MessageType type = MessageType::kHeartbeat;
    std::string payload;
};

struct ConnectionOptions {
    std::chrono::milliseconds heartbeat_period{500};
    int missed_heartbeats = 3;
    std::chrono::milliseconds write_timeout{10000};
    std::string peer_name;  // for messages: "leader 127.0.0.1:4242"
};

// Reads DS_HEARTBEAT_MS / DS_COMM_TIMEOUT_MS.
ConnectionOptions default_connection_options(const std::string& peer_name);

class FramedConnection : public std::enable_shared_from_this<FramedConnection> {
public:
    using OnFrame = std::function<void(Frame)>;
    using OnClose = std::function<void(const Status&)>;

    // `socket` must be connected and bound to a strand executor.
    static std::shared_ptr<FramedConnection> create(tcp::socket socket, ConnectionOptions options);

    // Starts reading and heartbeating. on_close runs exactly once, on the strand.
    void start(OnFrame on_frame, OnClose on_close);
    // Queues an encoded frame; frames go out in order. Dropped silently once closed (on_close tells).
    void send(std::string frame);
    // Closes now (pending writes are abandoned).
    void close(Status reason);
    // Closes once every queued frame has been written (used after Refuse / Shutdown), or after the
    // write timeout at the latest.
    void close_after_flush(Status reason);
    bool is_closed() const { return closed_.load(); }
    const std::string& peer_name() const { return options_.peer_name; }

private:
    FramedConnection(tcp::socket socket, ConnectionOptions options);
    void read_header();
    void read_payload(FrameHeader header);
    void do_write();
    void on_tick();
    void close_now(Status reason);

    tcp::socket socket_;
    ConnectionOptions options_;
    asio::steady_timer timer_;
    OnFrame on_frame_;
    OnClose on_close_;
    uint8_t header_buf_[kFrameHeaderSize] = {};
    std::string payload_;
    std::deque<std::string> write_queue_;
    bool writing_ = false;
    std::chrono::steady_clock::time_point write_started_;
    std::chrono::steady_clock::time_point last_rx_;
    uint64_t heartbeat_seq_ = 0;
    bool close_when_flushed_ = false;
    Status pending_close_;
    std::atomic<bool> closed_{false};
};

// "host:port" (or "[v6]:port") → parts; kInvalidArgument naming the text otherwise.
Status split_host_port(const std::string& host_port, std::string* host, std::string* port);

}  // namespace deepshard::control::internal
