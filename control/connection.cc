#include "control/connection.h"

#include <spdlog/spdlog.h>

#include "common/env.h"

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

std::shared_ptr<FramedConnection> FramedConnection::create(tcp::socket socket, ConnectionOptions options) {
    return std::shared_ptr<FramedConnection>(new FramedConnection(std::move(socket), std::move(options)));
}

FramedConnection::FramedConnection(tcp::socket socket, ConnectionOptions options)
    : socket_(std::move(socket)), options_(std::move(options)), timer_(socket_.get_executor()) {
    boost::system::error_code ec;
    socket_.set_option(tcp::no_delay(true), ec);  // small frames, latency matters
}

void FramedConnection::start(OnFrame on_frame, OnClose on_close) {
    asio::post(socket_.get_executor(), [self = shared_from_this(), on_frame = std::move(on_frame),
                                        on_close = std::move(on_close)]() mutable {
        if (self->closed_.load()) {
            on_close(unavailable("connection to " + self->options_.peer_name + " closed before start"));
            return;
        }
        self->on_frame_ = std::move(on_frame);
        self->on_close_ = std::move(on_close);
        self->last_rx_ = Clock::now();
        self->read_header();
        self->timer_.expires_after(self->options_.heartbeat_period);
        self->timer_.async_wait([self](boost::system::error_code ec) {
            if (!ec) self->on_tick();
        });
    });
}

void FramedConnection::send(std::string frame) {
    asio::post(socket_.get_executor(), [self = shared_from_this(), frame = std::move(frame)]() mutable {
        if (self->closed_.load()) return;
        self->write_queue_.push_back(std::move(frame));
        if (!self->writing_) self->do_write();
    });
}

void FramedConnection::close(Status reason) {
    asio::post(socket_.get_executor(),
               [self = shared_from_this(), reason = std::move(reason)]() mutable { self->close_now(std::move(reason)); });
}

void FramedConnection::close_after_flush(Status reason) {
    asio::post(socket_.get_executor(), [self = shared_from_this(), reason = std::move(reason)]() mutable {
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
    asio::async_read(socket_, asio::buffer(header_buf_, kFrameHeaderSize),
                     [self = shared_from_this()](boost::system::error_code ec, size_t) {
                         if (self->closed_.load()) return;
                         if (ec) {
                             self->close_now(unavailable(self->options_.peer_name + " closed the connection (" +
                                                         ec.message() + ")"));
                             return;
                         }
                         auto header = decode_header(self->header_buf_, kFrameHeaderSize);
                         if (!header.ok()) {
                             self->close_now(header.status().with_context("from " + self->options_.peer_name));
                             return;
                         }
                         self->read_payload(*header);
                     });
}

void FramedConnection::read_payload(FrameHeader header) {
    payload_.assign(header.length, '\0');
    asio::async_read(socket_, asio::buffer(payload_.data(), payload_.size()),
                     [self = shared_from_this(), header](boost::system::error_code ec, size_t) {
                         if (self->closed_.load()) return;
                         if (ec) {
                             self->close_now(unavailable(self->options_.peer_name + " closed the connection (" +
                                                         ec.message() + ")"));
                             return;
                         }
                         self->last_rx_ = Clock::now();
                         if (header.type == MessageType::kHeartbeat) {
                             auto hb = decode_heartbeat(self->payload_);
                             if (!hb.ok()) {
                                 self->close_now(hb.status().with_context("from " + self->options_.peer_name));
                                 return;
                             }
                         } else {
                             Frame f{header.type, std::move(self->payload_)};
                             self->payload_.clear();
                             if (self->on_frame_) self->on_frame_(std::move(f));
                             if (self->closed_.load()) return;
                         }
                         self->read_header();
                     });
}

void FramedConnection::do_write() {
    if (write_queue_.empty() || closed_.load()) {
        writing_ = false;
        if (close_when_flushed_ && !closed_.load()) close_now(std::move(pending_close_));
        return;
    }
    writing_ = true;
    write_started_ = Clock::now();
    asio::async_write(socket_, asio::buffer(write_queue_.front()),
                      [self = shared_from_this()](boost::system::error_code ec, size_t) {
                          if (self->closed_.load()) return;
                          if (ec) {
                              self->close_now(unavailable("writing to " + self->options_.peer_name + " failed (" +
                                                          ec.message() + ")"));
                              return;
                          }
                          self->write_queue_.pop_front();
                          self->do_write();
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
    std::string frame;
    encode(hb, &frame);
    // Heartbeats are not queued behind a stalled write; the stall check above covers that case.
    if (write_queue_.size() < 64) {
        write_queue_.push_back(std::move(frame));
        if (!writing_) do_write();
    }
    timer_.expires_after(options_.heartbeat_period);
    timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
        if (!ec) self->on_tick();
    });
}

void FramedConnection::close_now(Status reason) {
    if (closed_.exchange(true)) return;
    boost::system::error_code ec;
    socket_.shutdown(tcp::socket::shutdown_both, ec);
    socket_.close(ec);
    timer_.cancel();
    write_queue_.clear();
    if (on_close_) {
        auto cb = std::move(on_close_);
        on_close_ = nullptr;
        on_frame_ = nullptr;
        cb(reason);
    }
}

}  // namespace deepshard::control::internal
