#include "control/connection.h"

#include <spdlog/spdlog.h>

#include "common/env.h"
#include "control/tls_context.h"

namespace deepshard::control::internal {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

ConnectionOptions default_connection_options(const std::string& peer_name) {
    ConnectionOptions o;
    o.heartbeat_period = heartbeat_period();
    o.write_timeout = std::max(milliseconds(100), comm_timeout());
    o.peer_name = peer_name;
    return o;
}

Status split_host_port(const std::string& host_port, std::string* host, std::string* port) {
    const size_t colon = host_port.rfind(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 == host_port.size()) {
        return invalid_argument("address '" + host_port + "' is not HOST:PORT");
    }
    *host = host_port.substr(0, colon);
    *port = host_port.substr(colon + 1);
    if (host->size() >= 2 && host->front() == '[' && host->back() == ']') {
        *host = host->substr(1, host->size() - 2);
    }
    for (char c : *port) {
        if (c < '0' || c > '9') {
            return invalid_argument("address '" + host_port + "' has a non-numeric port");
        }
    }
    if (port->size() > 5 || std::stoi(*port) > 65535) {
        return invalid_argument("address '" + host_port + "' has a port above 65535");
    }
    return ok_status();
}

std::shared_ptr<FramedConnection> FramedConnection::create(tcp::socket socket, ConnectionOptions options,
                                                           std::shared_ptr<asio::ssl::context> tls, bool tls_server) {
    return std::shared_ptr<FramedConnection>(
        new FramedConnection(std::move(socket), std::move(options), std::move(tls), tls_server));
}

FramedConnection::FramedConnection(tcp::socket socket, ConnectionOptions options,
                                   std::shared_ptr<asio::ssl::context> tls, bool tls_server)
    : tls_context_(std::move(tls)), tls_server_(tls_server), options_(std::move(options)),
      timer_(socket.get_executor()) {
    boost::system::error_code ec;
    socket.set_option(tcp::no_delay(true), ec);  // small frames, latency matters
    if (tls_context_) {
        tls_.emplace(std::move(socket), *tls_context_);
    } else {
        plain_.emplace(std::move(socket));
    }
}

tcp::socket& FramedConnection::lowest() {
    return tls_ ? tls_->next_layer() : *plain_;
}

template <typename Buffers, typename Handler>
void FramedConnection::async_read_exact(const Buffers& buffers, Handler&& handler) {
    if (tls_) {
        asio::async_read(*tls_, buffers, std::forward<Handler>(handler));
    } else {
        asio::async_read(*plain_, buffers, std::forward<Handler>(handler));
    }
}

template <typename Buffers, typename Handler>
void FramedConnection::async_write_all(const Buffers& buffers, Handler&& handler) {
    if (tls_) {
        asio::async_write(*tls_, buffers, std::forward<Handler>(handler));
    } else {
        asio::async_write(*plain_, buffers, std::forward<Handler>(handler));
    }
}

void FramedConnection::start(ReadPolicy policy, OnFrame on_frame, OnClose on_close, std::function<void()> on_ready) {
    asio::post(lowest().get_executor(), [self = shared_from_this(), policy, on_frame = std::move(on_frame),
                                         on_close = std::move(on_close), on_ready = std::move(on_ready)]() mutable {
        if (self->closed_.load()) {
            on_close(unavailable("connection to " + self->options_.peer_name + " closed before start"));
            return;
        }
        self->on_frame_ = std::move(on_frame);
        self->on_close_ = std::move(on_close);
        self->policy_ = policy;
        self->last_rx_ = Clock::now();
        if (!self->tls_) {
            if (on_ready) on_ready();
            if (!self->closed_.load()) self->read_header();
            return;
        }
        const auto side = self->tls_server_ ? asio::ssl::stream_base::server : asio::ssl::stream_base::client;
        self->tls_->async_handshake(side, [self, on_ready = std::move(on_ready)](boost::system::error_code ec) {
            if (self->closed_.load()) return;
            if (ec) {
                self->close_now(unavailable("TLS handshake with " + self->options_.peer_name + " failed (" +
                                            ec.message() + ")"));
                return;
            }
            self->channel_binding_ = tls_channel_binding(self->tls_->native_handle());
            if (self->channel_binding_.empty()) {
                self->close_now(internal_error("TLS channel binding with " + self->options_.peer_name + " failed"));
                return;
            }
            if (on_ready) on_ready();
            if (!self->closed_.load()) self->read_header();
        });
    });
}

void FramedConnection::set_read_policy(ReadPolicy policy) {
    policy_ = policy;
    received_in_state_ = 0;
}

void FramedConnection::start_heartbeats(AckSource ack_source, OnAck on_ack) {
    ack_source_ = std::move(ack_source);
    on_ack_ = std::move(on_ack);
    last_rx_ = Clock::now();
    arm_timer();
}

void FramedConnection::send(std::string frame) {
    send_shared(std::make_shared<const std::string>(std::move(frame)));
}

void FramedConnection::send_shared(std::shared_ptr<const std::string> frame) {
    asio::post(lowest().get_executor(), [self = shared_from_this(), frame = std::move(frame)]() mutable {
        if (self->closed_.load()) return;
        self->write_queue_.push_back(std::move(frame));
        if (!self->writing_) self->do_write();
    });
}

void FramedConnection::close(Status reason) {
    asio::post(lowest().get_executor(),
               [self = shared_from_this(), reason = std::move(reason)]() mutable { self->close_now(std::move(reason)); });
}

void FramedConnection::close_after_flush(Status reason) {
    asio::post(lowest().get_executor(), [self = shared_from_this(), reason = std::move(reason)]() mutable {
        if (self->closed_.load()) return;
        if (!self->writing_ && self->write_queue_.empty()) {
            self->close_now(std::move(reason));
            return;
        }
        self->close_when_flushed_ = true;
        self->pending_close_ = std::move(reason);
    });
}

void FramedConnection::read_header() {
    async_read_exact(asio::buffer(header_buf_, kFrameHeaderSize), [self = shared_from_this()](
                                                                      boost::system::error_code ec, size_t) {
        if (self->closed_.load()) return;
        if (ec) {
            self->close_now(
                unavailable(self->options_.peer_name + " closed the connection (" + ec.message() + ")"));
            return;
        }
        auto header = decode_header(self->header_buf_, kFrameHeaderSize);
        if (!header.ok()) {
            self->close_now(header.status().with_context("from " + self->options_.peer_name));
            return;
        }
        // The policy decides before a byte of payload is read (or a byte of memory reserved).
        const ReadPolicy& p = self->policy_;
        if ((p.allowed & type_bit(header->type)) == 0) {
            self->close_now(protocol_error(std::string(message_type_name(header->type)) + " from " +
                                           self->options_.peer_name + " is not allowed at this point"));
            return;
        }
        if (header->length > p.max_payload) {
            self->close_now(protocol_error(std::string(message_type_name(header->type)) + " from " +
                                           self->options_.peer_name + " announces " + std::to_string(header->length) +
                                           " bytes; at most " + std::to_string(p.max_payload) + " are allowed here"));
            return;
        }
        self->received_in_state_ += kFrameHeaderSize + header->length;
        if (p.budget != 0 && self->received_in_state_ > p.budget) {
            self->close_now(protocol_error(self->options_.peer_name + " exceeded its " + std::to_string(p.budget) +
                                           "-byte budget before authenticating"));
            return;
        }
        self->payload_.clear();
        if (header->length == 0) {
            self->deliver(*header);
            return;
        }
        self->read_payload(*header, 0);
    });
}

void FramedConnection::read_payload(FrameHeader header, size_t got) {
    const size_t chunk = std::min<size_t>(kReadChunk, header.length - got);
    payload_.resize(got + chunk);
    async_read_exact(asio::buffer(payload_.data() + got, chunk), [self = shared_from_this(), header, got, chunk](
                                                                     boost::system::error_code ec, size_t) {
        if (self->closed_.load()) return;
        if (ec) {
            self->close_now(
                unavailable(self->options_.peer_name + " closed the connection (" + ec.message() + ")"));
            return;
        }
        // Progress on a large frame counts as life: a multi-megabyte batch on a slow link is not silence.
        self->last_rx_ = Clock::now();
        if (got + chunk < header.length) {
            self->read_payload(header, got + chunk);
            return;
        }
        self->deliver(header);
    });
}

void FramedConnection::deliver(FrameHeader header) {
    last_rx_ = Clock::now();
    if (header.type == MessageType::kHeartbeat) {
        auto hb = decode_heartbeat(payload_);
        if (!hb.ok()) {
            close_now(hb.status().with_context("from " + options_.peer_name));
            return;
        }
        if (on_ack_) on_ack_(hb->ack);
    } else {
        Frame f{header.type, std::move(payload_)};
        payload_ = std::string();
        if (on_frame_) on_frame_(std::move(f));
        if (closed_.load()) return;
    }
    read_header();
}

void FramedConnection::do_write() {
    if (write_queue_.empty() || closed_.load()) {
        writing_ = false;
        if (close_when_flushed_ && !closed_.load()) close_now(std::move(pending_close_));
        return;
    }
    writing_ = true;
    write_started_ = Clock::now();
    async_write_all(asio::buffer(*write_queue_.front()), [self = shared_from_this()](boost::system::error_code ec,
                                                                                    size_t) {
        if (self->closed_.load()) return;
        if (ec) {
            self->close_now(
                unavailable("writing to " + self->options_.peer_name + " failed (" + ec.message() + ")"));
            return;
        }
        self->write_queue_.pop_front();
        self->do_write();
    });
}

void FramedConnection::arm_timer() {
    timer_.expires_after(options_.heartbeat_period);
    timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
        if (!ec) self->on_tick();
    });
}

void FramedConnection::on_tick() {
    if (closed_.load()) return;
    const auto now = Clock::now();
    const auto silent = std::chrono::duration_cast<milliseconds>(now - last_rx_);
    if (silent > options_.heartbeat_period * options_.missed_heartbeats) {
        close_now(unavailable(options_.peer_name + " silent for " + std::to_string(silent.count()) +
                              " ms (heartbeats lost)"));
        return;
    }
    if (writing_ && now - write_started_ > options_.write_timeout) {
        close_now(unavailable("write to " + options_.peer_name + " stalled past the deadline"));
        return;
    }
    Heartbeat hb;
    hb.sequence = ++heartbeat_seq_;
    hb.unix_millis = static_cast<uint64_t>(
        std::chrono::duration_cast<milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count());
    hb.ack = ack_source_ ? ack_source_() : 0;
    std::string frame;
    encode(hb, &frame);
    // Heartbeats are not queued behind a stalled write; the stall check above covers that case.
    if (write_queue_.size() < 64) {
        write_queue_.push_back(std::make_shared<const std::string>(std::move(frame)));
        if (!writing_) do_write();
    }
    arm_timer();
}

void FramedConnection::close_now(Status reason) {
    if (closed_.exchange(true)) return;
    went_quiet_.store(Clock::now() - last_rx_ >= options_.heartbeat_period * 2);
    boost::system::error_code ec;
    lowest().shutdown(tcp::socket::shutdown_both, ec);
    lowest().close(ec);
    timer_.cancel();
    write_queue_.clear();
    ack_source_ = nullptr;
    on_ack_ = nullptr;
    if (on_close_) {
        auto cb = std::move(on_close_);
        on_close_ = nullptr;
        on_frame_ = nullptr;
        cb(reason);
    }
}

}  // namespace deepshard::control::internal
