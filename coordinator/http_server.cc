// Beast HTTP/1.1 server. One Session per connection, all of its work on one strand: read header
// (deadline), read body (deadline + size limit), route, then either write one response or stream
// SSE chunks as the Request reports progress. The engine thread never touches a socket: Request's
// change callback only posts to the session's strand.
#include "coordinator/http_server.h"

#include <sys/socket.h>

#include <atomic>
#include <cerrno>
#include <ctime>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "control/auth.h"
#include "control/connection.h"
#include "control/tls_context.h"
#include "coordinator/openai_api.h"

namespace deepshard::coordinator {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using json = nlohmann::json;

struct HttpServer::Impl {
    HttpOptions options;
    Engine* engine = nullptr;
    ApiContext ctx;
    uint64_t id_salt = 0;
    std::shared_ptr<asio::ssl::context> tls;  // set: every connection is TLS
    std::atomic<size_t> connections{0};
    std::atomic<size_t> busy{0};  // connections between reading a request and finishing its response
    std::atomic<bool> stopping{false};

    // Requests that a session may still be subscribed to (see ~HttpServer).
    std::mutex mu;
    std::map<const Request*, std::shared_ptr<Request>> live;

    std::unique_ptr<asio::io_context> io;
    std::unique_ptr<tcp::acceptor> acceptor;
    std::vector<std::thread> threads;

    void remember(const std::shared_ptr<Request>& r) {
        std::lock_guard lock(mu);
        live[r.get()] = r;
    }
    void forget(const Request* r) {
        std::lock_guard lock(mu);
        live.erase(r);
    }
    void accept();
    void refuse_over_limit(tcp::socket& socket);
};

namespace {

std::string strip_query(beast::string_view target) {
    std::string t(target);
    const auto q = t.find('?');
    return q == std::string::npos ? t : t.substr(0, q);
}

template <typename Stream>
constexpr bool kIsTls = !std::is_same_v<Stream, beast::tcp_stream>;

}  // namespace

// One connection; Stream is beast::tcp_stream or beast::ssl_stream<beast::tcp_stream>.
template <typename Stream>
class Session : public std::enable_shared_from_this<Session<Stream>> {
public:
    template <typename... Args>
    explicit Session(HttpServer::Impl* impl, Args&&... args) : stream_(std::forward<Args>(args)...), impl_(impl) {}

    ~Session() {
        end_request();
        set_busy(false);
        impl_->connections--;
    }

    void start() {
        if constexpr (kIsTls<Stream>) {
            // The TLS handshake is part of the header deadline: a silent peer cannot hold the slot.
            tcp().expires_after(impl_->options.header_timeout);
            stream_.async_handshake(asio::ssl::stream_base::server,
                                    [self = this->shared_from_this()](beast::error_code ec) {
                                        if (ec) return self->hard_close();
                                        self->do_read();
                                    });
        } else {
            do_read();
        }
    }

private:
    beast::tcp_stream& tcp() { return beast::get_lowest_layer(stream_); }
    std::shared_ptr<Session> shared_from_this() { return std::enable_shared_from_this<Session<Stream>>::shared_from_this(); }

    void set_busy(bool b) {
        if (b == busy_) return;
        busy_ = b;
        if (b) {
            impl_->busy++;
        } else {
            impl_->busy--;
        }
    }

    // ---- reading -------------------------------------------------------------------------------
    void do_read() {
        parser_.emplace();
        parser_->header_limit(static_cast<uint32_t>(impl_->options.max_header_bytes));
        parser_->body_limit(impl_->options.max_body_bytes);
        // One deadline for the whole header (idle keep-alive time included): a client that
        // trickles bytes cannot hold the connection.
        tcp().expires_after(impl_->options.header_timeout);
        http::async_read_header(stream_, buffer_, *parser_,
                                [self = shared_from_this()](beast::error_code ec, size_t) { self->on_header(ec); });
    }

    bool read_failed(beast::error_code ec) {
        if (!ec) return false;
        if (ec == http::error::body_limit) {
            send_error(413, "request_too_large", "the request body exceeds the limit of " +
                                                     std::to_string(impl_->options.max_body_bytes) + " bytes",
                       true);
        } else if (ec == http::error::header_limit) {
            send_error(431, "request_header_too_large", "the request header is too large", true);
        } else if (ec.category() == beast::error_code(http::error::bad_target).category() && ec != http::error::end_of_stream &&
                   ec != http::error::partial_message && ec != http::error::need_more) {
            send_error(400, "bad_request", "malformed HTTP request: " + ec.message(), true);
        } else {
            // Timeout (slowloris), reset, or a clean close between requests.
            close();
        }
        return true;
    }

    void on_header(beast::error_code ec) {
        if (read_failed(ec)) return;
        auto& req = parser_->get();
        if (beast::iequals(req[http::field::expect], "100-continue")) {
            continue_ = std::make_shared<std::string>("HTTP/1.1 100 Continue\r\n\r\n");
            tcp().expires_after(impl_->options.write_timeout);
            asio::async_write(stream_, asio::buffer(*continue_),
                              [self = shared_from_this()](beast::error_code e, size_t) {
                                  if (e) return self->close();
                                  self->read_body();
                              });
            return;
        }
        read_body();
    }

    void read_body() {
        tcp().expires_after(impl_->options.body_timeout);
        http::async_read(stream_, buffer_, *parser_, [self = shared_from_this()](beast::error_code ec, size_t) {
            if (self->read_failed(ec)) return;
            self->tcp().expires_never();
            self->handle_guarded(self->parser_->release());
        });
    }

    // Every input is validated before use, so nothing here should throw; if something still does,
    // the client gets a 500 naming it instead of a dropped connection (an exception escaping to the
    // I/O thread would destroy the session without a response).
    void handle_guarded(http::request<http::string_body> req) {
        try {
            handle(std::move(req));
        } catch (const std::exception& e) {
            spdlog::error("http: unexpected error handling a request: {}", e.what());
            end_request();
            send_error(500, "internal_error", std::string("internal error: ") + e.what(), true, "internal_error");
        }
    }

    // ---- routing -------------------------------------------------------------------------------
    void handle(http::request<http::string_body> req) {
        set_busy(true);
        keep_alive_ = req.keep_alive();
        const std::string path = strip_query(req.target());
        const bool is_get = req.method() == http::verb::get || req.method() == http::verb::head;
        const bool is_post = req.method() == http::verb::post;
        if (path == "/health") {
            if (!is_get) return method_not_allowed("GET");
            return send_health();
        }
        if (path == "/metrics") {
            if (!is_get) return method_not_allowed("GET");
            return send_response(200, impl_->engine->metrics_text(), "text/plain; version=0.0.4; charset=utf-8");
        }
        const bool v1 = path.rfind("/v1/", 0) == 0;
        if (v1 && impl_->options.api_keys.enabled()) {
            const std::string auth(req[http::field::authorization]);
            const bool bearer = auth.rfind("Bearer ", 0) == 0;
            if (!bearer || impl_->options.api_keys.match(auth.substr(7)) < 0) {
                return send_error(401, "invalid_api_key",
                                  auth.empty() ? "missing API key: send 'Authorization: Bearer <key>'"
                                               : "invalid API key",
                                  false, "authentication_error");
            }
        }
        if (path == "/v1/models") {
            if (!is_get) return method_not_allowed("GET");
            return send_response(200, models_response(impl_->ctx, std::time(nullptr)).dump(), "application/json");
        }
        if (path == "/v1/completions" || path == "/v1/chat/completions") {
            if (!is_post) return method_not_allowed("POST");
            return start_generation(path == "/v1/completions" ? ApiKind::kCompletions : ApiKind::kChat, req.body());
        }
        send_error(404, "not_found", "no such endpoint: " + std::string(req.method_string()) + " " + path, false,
                   "not_found_error");
    }

    void method_not_allowed(const char* allowed) {
        res_ = {};
        res_.set(http::field::allow, allowed);
        ApiError e;
        e.http_status = 405;
        e.message = std::string("method not allowed; use ") + allowed;
        e.code = "method_not_allowed";
        send_response(405, error_body(e), "application/json", false, /*reset=*/false);
    }

    void send_health() {
        const HealthInfo h = impl_->engine->health();
        json j = {{"status", h.available ? "ok" : h.draining ? "draining" : "unavailable"},
                  {"model", impl_->ctx.model->name}};
        if (h.available) {
            j["shard_job"] = h.shard_job;
            j["session_id"] = h.session_id;
            if (h.prefill_configured) j["prefill_job"] = h.prefill_job;  // "" while none is registered
        } else {
            j["reason"] = h.reason;
        }
        send_response(h.available ? 200 : 503, j.dump(), "application/json");
    }

    // ---- generation ----------------------------------------------------------------------------
    void start_generation(ApiKind kind, const std::string& body) {
        ApiError err;
        if (!parse_request(kind, body, impl_->ctx, &parsed_, &err)) return send_api_error(err);
        auto submitted = impl_->engine->submit(parsed_.params, parsed_.logprobs >= 0);
        if (!submitted.ok()) return send_api_error(error_from_status(submitted.status()));
        request_ = std::move(submitted).value();
        impl_->remember(request_);
        id_ = fmt::format("{}-{:x}{:08x}", kind == ApiKind::kChat ? "chatcmpl" : "cmpl", impl_->id_salt,
                          request_->id());
        created_ = std::time(nullptr);
        first_ = true;
        offset_ = 0;
        done_ = false;
        watch_disconnect();
        std::weak_ptr<Session> weak = shared_from_this();
        auto ex = stream_.get_executor();
        if (parsed_.stream) {
            sres_ = {};
            sres_.result(http::status::ok);
            sres_.version(11);
            sres_.set(http::field::server, "deepshard");
            sres_.set(http::field::content_type, "text/event-stream");
            sres_.set(http::field::cache_control, "no-cache");
            sres_.keep_alive(keep_alive_);
            sres_.chunked(true);
            sr_.emplace(sres_);
            writing_ = true;
            tcp().expires_after(impl_->options.write_timeout);
            http::async_write_header(stream_, *sr_, [self = shared_from_this()](beast::error_code ec, size_t) {
                self->writing_ = false;
                if (ec) return self->abandon();
                self->pump();
            });
        }
        request_->subscribe([weak, ex] {
            asio::post(ex, [weak] {
                if (auto s = weak.lock()) s->on_progress();
            });
        });
    }

    // A read-readiness wait while the request runs: EOF means the client left, so the request is
    // cancelled rather than computed for nobody. The pending wait is also what keeps this Session
    // alive between writes, so every path that leaves the request running re-arms it or holds
    // `self_` instead. Readiness can be stale: Asio reads speculatively, so the epoll edge of the
    // request bytes it already consumed may still arrive and wake this wait with nothing to read.
    // A non-blocking MSG_PEEK tells the cases apart (0 = EOF, EAGAIN = stale edge, >0 = the client
    // pipelined its next request, which stays in the kernel buffer until this one is answered).
    void watch_disconnect() {
        const uint64_t gen = ++watch_gen_;
        tcp().socket().async_wait(tcp::socket::wait_read, [self = shared_from_this(), gen](beast::error_code ec) {
            if (ec || gen != self->watch_gen_ || !self->request_) return;
            char byte;
            const ssize_t n = ::recv(self->tcp().socket().native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
                return self->watch_disconnect();  // stale edge: wait again
            }
            if (n > 0) {
                self->self_ = self;  // no more readiness edges to wait for; end_request() drops this
                return;
            }
            if (!self->request_->finished()) {
                spdlog::debug("http: client left; cancelling request {}", self->request_->id());
                self->impl_->engine->cancel(self->request_);
            }
        });
    }

    void on_progress() {
        if (!request_) return;
        if (parsed_.stream) return pump();
        if (!request_->finished() || done_) return;
        done_ = true;
        const RequestSnapshot snap = request_->snapshot(0);
        end_request();
        if (snap.finish_reason == FinishReason::kError || snap.finish_reason == FinishReason::kCancelled) {
            return send_api_error(error_from_status(snap.error));
        }
        send_response(200, final_response(parsed_, snap, impl_->ctx, id_, created_).dump(), "application/json");
    }

    static std::string sse(const json& j) {
        return "data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
    }

    void pump() {
        if (writing_ || done_ || !request_) return;
        const RequestSnapshot snap = request_->snapshot(offset_);
        std::string out;
        if (!snap.events.empty()) {
            out += sse(stream_chunk(parsed_, snap.events, impl_->ctx, id_, created_, first_));
            first_ = false;
            offset_ = snap.next_offset;
        }
        if (snap.finished) {
            done_ = true;
            if (snap.finish_reason == FinishReason::kError || snap.finish_reason == FinishReason::kCancelled) {
                const ApiError e = error_from_status(snap.error);
                out += "data: " + error_body(e) + "\n\n";
            } else {
                out += sse(stream_finish_chunk(parsed_, snap, impl_->ctx, id_, created_));
                if (parsed_.include_usage) out += sse(stream_usage_chunk(parsed_, snap, impl_->ctx, id_, created_));
            }
            out += "data: [DONE]\n\n";
        }
        if (out.empty()) return;
        chunk_ = std::move(out);
        writing_ = true;
        tcp().expires_after(impl_->options.write_timeout);
        asio::async_write(stream_, http::make_chunk(asio::buffer(chunk_)),
                          [self = shared_from_this()](beast::error_code ec, size_t) {
                              self->writing_ = false;
                              if (ec) return self->abandon();
                              if (!self->done_) return self->pump();
                              self->end_request();
                              self->tcp().expires_after(self->impl_->options.write_timeout);
                              asio::async_write(self->stream_, http::make_chunk_last(),
                                                [self](beast::error_code e, size_t) {
                                                    if (e) return self->close();
                                                    self->after_response();
                                                });
                          });
    }

    // The client went away mid-stream: stop computing for it.
    void abandon() {
        if (request_ && !request_->finished()) impl_->engine->cancel(request_);
        end_request();
        close();
    }

    void end_request() {
        if (!request_) return;
        request_->subscribe(nullptr);
        if (!request_->finished()) impl_->engine->cancel(request_);
        impl_->forget(request_.get());
        request_.reset();
        ++watch_gen_;
        // Last: may drop the final reference (callers always hold their own `self`).
        auto keep = std::move(self_);
    }

    // ---- writing -------------------------------------------------------------------------------
    void send_api_error(const ApiError& e) {
        res_ = {};
        if (e.http_status == 429) res_.set(http::field::retry_after, "1");
        send_response(e.http_status, error_body(e), "application/json", false, /*reset=*/false);
    }

    void send_error(int status, const std::string& code, const std::string& message, bool close_after,
                    const std::string& type = "invalid_request_error") {
        ApiError e;
        e.http_status = status;
        e.type = type;
        e.code = code;
        e.message = message;
        res_ = {};
        if (status == 401) res_.set(http::field::www_authenticate, "Bearer");
        send_response(status, error_body(e), "application/json", close_after, /*reset=*/false);
    }

    void send_response(int status, std::string body, const char* content_type, bool close_after = false,
                       bool reset = true) {
        if (reset) res_ = {};
        res_.result(static_cast<unsigned>(status));
        res_.version(11);
        res_.set(http::field::server, "deepshard");
        res_.set(http::field::content_type, content_type);
        res_.body() = std::move(body);
        if (close_after) keep_alive_ = false;
        res_.keep_alive(keep_alive_);
        res_.prepare_payload();
        tcp().expires_after(impl_->options.write_timeout);
        http::async_write(stream_, res_, [self = shared_from_this()](beast::error_code ec, size_t) {
            if (ec) return self->close();
            self->after_response();
        });
    }

    void after_response() {
        set_busy(false);
        if (!keep_alive_ || impl_->stopping.load()) return close();
        do_read();
    }

    // After a complete exchange: TLS says goodbye properly (close_notify, bounded), then TCP.
    void close() {
        if constexpr (kIsTls<Stream>) {
            if (!closing_) {
                closing_ = true;
                tcp().expires_after(std::chrono::seconds(2));
                stream_.async_shutdown([self = shared_from_this()](beast::error_code) { self->hard_close(); });
                return;
            }
        }
        hard_close();
    }

    void hard_close() {
        beast::error_code ec;
        tcp().socket().shutdown(tcp::socket::shutdown_send, ec);
        tcp().close();
    }

    Stream stream_;
    HttpServer::Impl* impl_;
    beast::flat_buffer buffer_;
    std::optional<http::request_parser<http::string_body>> parser_;
    http::response<http::string_body> res_;
    http::response<http::empty_body> sres_;
    std::optional<http::response_serializer<http::empty_body>> sr_;
    std::shared_ptr<std::string> continue_;
    bool keep_alive_ = true;

    std::shared_ptr<Request> request_;
    ParsedRequest parsed_;
    std::string id_;
    int64_t created_ = 0;
    bool first_ = true;
    size_t offset_ = 0;
    bool done_ = false;
    bool writing_ = false;
    std::string chunk_;
    uint64_t watch_gen_ = 0;
    bool busy_ = false;
    bool closing_ = false;
    std::shared_ptr<Session> self_;  // set only while a request runs with no readiness wait pending
};

// Over --http-max-connections: a client gets a clear 503 (JSON error, Retry-After) instead of a
// silent close, so a burst bigger than the cap reads as "overloaded, retry", like a full queue. One
// non-blocking send of a fixed ~250-byte answer: it always fits an empty socket buffer, costs no
// session and cannot block the acceptor; whatever does not go out is dropped with the close. Plain
// HTTP only (a TLS client needs a handshake first, which is exactly the cost being refused).
void HttpServer::Impl::refuse_over_limit(tcp::socket& socket) {
    if (!tls) {
        static const std::string kAnswer = [] {
            const std::string body =
                R"({"error":{"message":"too many open connections; retry later","type":"overloaded_error",)"
                R"("param":null,"code":"too_many_connections"}})";
            return "HTTP/1.1 503 Service Unavailable\r\nServer: deepshard\r\nContent-Type: application/json\r\n"
                   "Retry-After: 1\r\nConnection: close\r\nContent-Length: " +
                   std::to_string(body.size()) + "\r\n\r\n" + body;
        }();
        (void)::send(socket.native_handle(), kAnswer.data(), kAnswer.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
        // Unread request bytes at close() would turn the FIN into a reset, which can discard the
        // answer at the client: take what already arrived (bounded, non-blocking).
        char sink[4096];
        for (int i = 0; i < 16 && ::recv(socket.native_handle(), sink, sizeof(sink), MSG_DONTWAIT) > 0; ++i) {
        }
    }
    beast::error_code ignored;
    socket.shutdown(tcp::socket::shutdown_send, ignored);
    socket.close(ignored);
}

void HttpServer::Impl::accept() {
    acceptor->async_accept(asio::make_strand(*io), [this](beast::error_code ec, tcp::socket socket) {
        if (stopping.load()) return;
        if (ec) {
            spdlog::warn("http: accept failed: {}", ec.message());
        } else if (connections.load() >= options.max_connections) {
            refuse_over_limit(socket);
        } else {
            connections++;
            if (tls) {
                std::make_shared<Session<beast::ssl_stream<beast::tcp_stream>>>(this, std::move(socket), *tls)->start();
            } else {
                std::make_shared<Session<beast::tcp_stream>>(this, std::move(socket))->start();
            }
        }
        accept();
    });
}

HttpServer::HttpServer(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

StatusOr<std::unique_ptr<HttpServer>> HttpServer::start(const HttpOptions& options, Engine* engine) {
    std::string host, port;
    DS_RETURN_IF_ERROR(control::internal::split_host_port(options.listen, &host, &port));
    auto impl = std::make_shared<Impl>();
    impl->options = options;
    impl->engine = engine;
    impl->ctx.model = &engine->model();
    impl->ctx.tokenizer = engine->tokenizer().get();
    impl->id_salt = std::random_device()() & 0xffffff;
    if (options.tls.server_enabled()) {
        DS_ASSIGN_OR_RETURN(impl->tls, control::make_tls_server_context(options.tls));
    }
    impl->io = std::make_unique<asio::io_context>(std::max(1, options.threads));
    impl->acceptor = std::make_unique<tcp::acceptor>(*impl->io);
    try {
        tcp::endpoint ep(asio::ip::make_address(host), static_cast<uint16_t>(std::stoi(port)));
        impl->acceptor->open(ep.protocol());
        impl->acceptor->set_option(tcp::acceptor::reuse_address(true));
        impl->acceptor->bind(ep);
        impl->acceptor->listen(asio::socket_base::max_listen_connections);
    } catch (const std::exception& e) {
        return unavailable("HTTP port " + options.listen + ": " + e.what());
    }
    impl->accept();
    for (int i = 0; i < std::max(1, options.threads); ++i) {
        Impl* raw = impl.get();
        impl->threads.emplace_back([raw] {
            for (;;) {
                try {
                    raw->io->run();
                    return;
                } catch (const std::exception& e) {
                    spdlog::error("http I/O thread: {}", e.what());
                }
            }
        });
    }
    return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

HttpServer::~HttpServer() {
    impl_->stopping.store(true);
    asio::post(*impl_->io, [impl = impl_.get()] {
        beast::error_code ec;
        impl->acceptor->close(ec);
    });
    impl_->io->stop();
    for (auto& t : impl_->threads) t.join();
    // No engine callback may post into the io_context once it is gone: unsubscribe every live
    // request, then cancel it; cancel() takes the engine lock, under which all callbacks run, so
    // once it returns no callback is still in progress.
    std::map<const Request*, std::shared_ptr<Request>> live;
    {
        std::lock_guard lock(impl_->mu);
        live = impl_->live;
    }
    for (auto& [raw, r] : live) r->subscribe(nullptr);
    for (auto& [raw, r] : live) impl_->engine->cancel(r);
    (void)impl_->engine->health();
    impl_->acceptor.reset();
    impl_->io.reset();  // destroys pending handlers and with them the sessions
}

void HttpServer::stop_accepting() {
    impl_->stopping.store(true);
    asio::post(*impl_->io, [impl = impl_.get()] {
        beast::error_code ec;
        impl->acceptor->close(ec);
    });
}

bool HttpServer::wait_idle(std::chrono::milliseconds timeout) {
    const auto until = std::chrono::steady_clock::now() + timeout;
    while (impl_->busy.load() > 0) {
        if (std::chrono::steady_clock::now() >= until) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return true;
}

uint16_t HttpServer::port() const {
    beast::error_code ec;
    return impl_->acceptor->local_endpoint(ec).port();
}

}  // namespace deepshard::coordinator
