// A framed, heartbeating TCP (or TLS) connection for the control protocol (internal to control/;
// the public faces are LeaderClient and ControlServer, which keep Asio out of their headers).
//
// Threading: all socket work runs on one strand of an io_context that the owner runs. send() and
// close() may be called from any thread; they post to the strand. The callbacks run on the strand
// and must not block. The object keeps itself alive while operations are pending (shared_ptr).
//
// Bounded reading: every frame header is checked against the current ReadPolicy — which message
// types are allowed now, the largest payload, and how many bytes this connection may still send in
// its current state — before a byte of payload is read. Payloads are read in chunks of at most
// kReadChunk, so memory grows only with the bytes that actually arrived, never with what a header
// announces. The owner tightens the policy for unauthenticated peers and widens it step by step
// (set_read_policy() from inside on_frame applies to the very next frame).
//
// Liveness (once start_heartbeats() ran): a Heartbeat frame goes out every `heartbeat_period`;
// when nothing at all arrives for `missed_heartbeats` periods, or a write does not finish within
// `write_timeout`, the connection closes with kUnavailable. Heartbeats are consumed here.
#pragma once

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include <utility>  // Boost 1.74 asio/awaitable.hpp uses std::exchange without it

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>

#include "common/status.h"
#include "control/protocol.h"

namespace deepshard::control::internal {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

inline constexpr size_t kReadChunk = 1u << 20;

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

// What the peer may send next.
struct ReadPolicy {
    uint32_t allowed = 0;      // set of type_bit(MessageType)
    uint32_t max_payload = 0;  // per frame
    uint64_t budget = 0;       // bytes (headers included) left in this state; 0 = no limit
};

// Reads DS_HEARTBEAT_MS / DS_COMM_TIMEOUT_MS.
ConnectionOptions default_connection_options(const std::string& peer_name);

class FramedConnection : public std::enable_shared_from_this<FramedConnection> {
public:
    using OnFrame = std::function<void(Frame)>;
    using OnClose = std::function<void(const Status&)>;
    using AckSource = std::function<uint64_t()>;
    using OnAck = std::function<void(uint64_t)>;

    // `socket` must be connected and bound to a strand executor. With `tls`, the TLS handshake
    // (as server or client) runs first; frames flow only over the encrypted stream.
    static std::shared_ptr<FramedConnection> create(tcp::socket socket, ConnectionOptions options,
                                                    std::shared_ptr<asio::ssl::context> tls = nullptr,
                                                    bool tls_server = false);

    // Starts the TLS handshake (if any), then reading with `policy`. on_close runs exactly once,
    // on the strand. on_ready (optional) runs once the TLS handshake is done (at once for TCP).
    void start(ReadPolicy policy, OnFrame on_frame, OnClose on_close, std::function<void()> on_ready = nullptr);
    // Strand only (e.g. from on_frame): the policy for the frames that follow.
    void set_read_policy(ReadPolicy policy);
    // Strand only: starts sending heartbeats (carrying ack_source()) and watching for silence;
    // on_ack receives the peer's acknowledgements.
    void start_heartbeats(AckSource ack_source, OnAck on_ack);
    // Queues an encoded frame; frames go out in order. Dropped silently once closed (on_close tells).
    void send(std::string frame);
    void send_shared(std::shared_ptr<const std::string> frame);
    // Closes now (pending writes are abandoned).
    void close(Status reason);
    // Closes once every queued frame has been written (used after Refuse / Shutdown), or after the
    // write timeout at the latest.
    void close_after_flush(Status reason);
    bool is_closed() const { return closed_.load(); }
    const std::string& peer_name() const { return options_.peer_name; }
    bool is_tls() const { return tls_.has_value(); }
    // Strand only, after on_ready: the TLS exporter value ("" over plain TCP).
    const std::string& channel_binding() const { return channel_binding_; }
    // After on_close: whether the link had gone quiet (nothing received for two heartbeat periods)
    // before it closed. A peer process that exits or crashes closes a busy link at once; a link
    // that closes after going quiet (heartbeats lost, or a FIN that arrives after a partition) is a
    // network problem worth waiting out.
    bool went_quiet() const { return went_quiet_.load(); }

private:
    FramedConnection(tcp::socket socket, ConnectionOptions options, std::shared_ptr<asio::ssl::context> tls,
                     bool tls_server);
    tcp::socket& lowest();
    template <typename Buffers, typename Handler>
    void async_read_exact(const Buffers& buffers, Handler&& handler);
    template <typename Buffers, typename Handler>
    void async_write_all(const Buffers& buffers, Handler&& handler);
    void read_header();
    void read_payload(FrameHeader header, size_t got);
    void deliver(FrameHeader header);
    void do_write();
    void arm_timer();
    void on_tick();
    void close_now(Status reason);

    std::optional<tcp::socket> plain_;
    std::optional<asio::ssl::stream<tcp::socket>> tls_;
    std::shared_ptr<asio::ssl::context> tls_context_;  // outlives tls_
    bool tls_server_ = false;
    ConnectionOptions options_;
    asio::steady_timer timer_;
    OnFrame on_frame_;
    OnClose on_close_;
    AckSource ack_source_;
    OnAck on_ack_;
    ReadPolicy policy_;
    uint64_t received_in_state_ = 0;
    std::string channel_binding_;
    uint8_t header_buf_[kFrameHeaderSize] = {};
    std::string payload_;
    std::deque<std::shared_ptr<const std::string>> write_queue_;
    bool writing_ = false;
    std::chrono::steady_clock::time_point write_started_;
    std::chrono::steady_clock::time_point last_rx_;
    uint64_t heartbeat_seq_ = 0;
    bool close_when_flushed_ = false;
    Status pending_close_;
    std::atomic<bool> closed_{false};
    std::atomic<bool> went_quiet_{false};
};

// "host:port" (or "[v6]:port") → parts; kInvalidArgument naming the text otherwise.
Status split_host_port(const std::string& host_port, std::string* host, std::string* port);

}  // namespace deepshard::control::internal
