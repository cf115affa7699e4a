// A TCP proxy in front of 127.0.0.1:target that delivers every byte `delay` after it arrived, in
// order, in both directions: netem's "delay" for one link without netem (this kernel has no
// sch_netem and no qdisc that holds packets for a time), at the level of the byte stream. Used by
// the fault tests on the control link. One I/O thread; stopped and joined when destroyed.
#pragma once

#include <boost/asio.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace deepshard::testing_util {

class DelayProxy {
public:
    DelayProxy(uint16_t target, std::chrono::milliseconds delay)
        : target_(target), delay_ms_(delay.count()), acceptor_(io_) {
        namespace asio = boost::asio;
        asio::ip::tcp::endpoint ep(asio::ip::make_address("127.0.0.1"), 0);
        acceptor_.open(ep.protocol());
        acceptor_.bind(ep);
        acceptor_.listen();
        accept();
        thread_ = std::thread([this] { io_.run(); });
    }
    DelayProxy(const DelayProxy&) = delete;
    DelayProxy& operator=(const DelayProxy&) = delete;
    ~DelayProxy() {
        io_.stop();
        thread_.join();
    }
    uint16_t port() const { return acceptor_.local_endpoint().port(); }
    // Bytes read from now on are delivered this long after they arrived (order is kept: a chunk
    // never overtakes one read before it).
    void set_delay(std::chrono::milliseconds d) { delay_ms_.store(d.count()); }

private:
    using tcp = boost::asio::ip::tcp;
    using Clock = std::chrono::steady_clock;
    struct Chunk {
        Clock::time_point due;
        std::string bytes;
    };
    // One direction: reads from `from` as fast as it comes, writes each chunk to `to` at its due time.
    struct Pipe : std::enable_shared_from_this<Pipe> {
        Pipe(std::shared_ptr<tcp::socket> f, std::shared_ptr<tcp::socket> t, const std::atomic<int64_t>* d)
            : from(std::move(f)), to(std::move(t)), delay_ms(d), timer(from->get_executor()) {}
        std::shared_ptr<tcp::socket> from, to;
        const std::atomic<int64_t>* delay_ms;
        boost::asio::steady_timer timer;
        std::deque<Chunk> queue;
        std::array<char, 16384> buf{};
        bool writing = false;
        bool eof = false;

        void read() {
            from->async_read_some(boost::asio::buffer(buf), [self = shared_from_this()](boost::system::error_code ec,
                                                                                       size_t n) {
                if (ec) {
                    self->eof = true;
                    if (!self->writing) self->finish();
                    return;
                }
                Clock::time_point due = Clock::now() + std::chrono::milliseconds(self->delay_ms->load());
                if (!self->queue.empty()) due = std::max(due, self->queue.back().due);  // keep the order
                self->queue.push_back({due, std::string(self->buf.data(), n)});
                if (!self->writing) self->write_next();
                self->read();
            });
        }
        void write_next() {
            if (queue.empty()) {
                writing = false;
                if (eof) finish();
                return;
            }
            writing = true;
            timer.expires_at(queue.front().due);
            timer.async_wait([self = shared_from_this()](boost::system::error_code ec) {
                if (ec) return;
                boost::asio::async_write(*self->to, boost::asio::buffer(self->queue.front().bytes),
                                         [self](boost::system::error_code ec2, size_t) {
                                             if (ec2) return self->finish();
                                             self->queue.pop_front();
                                             self->write_next();
                                         });
            });
        }
        // The sender closed (after its delayed bytes went out) or a write failed: close both ends,
        // as a peer that went away would be seen.
        void finish() {
            boost::system::error_code ec;
            to->shutdown(tcp::socket::shutdown_send, ec);
            from->close(ec);
            to->close(ec);
        }
    };

    void accept() {
        acceptor_.async_accept([this](boost::system::error_code ec, tcp::socket s) {
            if (ec) return;
            auto client = std::make_shared<tcp::socket>(std::move(s));
            auto server = std::make_shared<tcp::socket>(io_);
            server->async_connect({boost::asio::ip::make_address("127.0.0.1"), target_},
                                  [this, client, server](boost::system::error_code ec2) {
                                      if (ec2) {
                                          boost::system::error_code ignored;
                                          client->close(ignored);
                                          return;
                                      }
                                      auto up = std::make_shared<Pipe>(client, server, &delay_ms_);
                                      auto down = std::make_shared<Pipe>(server, client, &delay_ms_);
                                      up->read();
                                      down->read();
                                  });
            accept();
        });
    }

    uint16_t target_;
    std::atomic<int64_t> delay_ms_;
    boost::asio::io_context io_;
    tcp::acceptor acceptor_;
    std::thread thread_;
};

}  // namespace deepshard::testing_util
