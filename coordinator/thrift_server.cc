// Thrift handler: adapts the generated types to Engine calls and Status codes to the IDL's typed
// exceptions (throwing those is how a Thrift handler reports errors; the processor serializes them).
#include "coordinator/thrift_server.h"

#include <sys/socket.h>

#include <netinet/in.h>

#include <condition_variable>
#include <future>
#include <map>
#include <mutex>
#include <thread>

#include <spdlog/spdlog.h>
#include <thrift/TApplicationException.h>
#include <thrift/concurrency/ThreadFactory.h>
#include <thrift/protocol/TBinaryProtocol.h>
#include <thrift/server/TThreadedServer.h>
#include <thrift/transport/TBufferTransports.h>
#include <thrift/transport/TSSLServerSocket.h>
#include <thrift/transport/TSSLSocket.h>
#include <thrift/transport/TServerSocket.h>

#include "control/connection.h"
#include "coordinator/thrift/Deepshard.h"
#include "coordinator/thrift_guard.h"
#include "coordinator/thrift_params.h"

namespace deepshard::coordinator {

namespace th = apache::thrift;
using th::transport::TTransportException;

namespace {

[[noreturn]] void throw_invalid(const std::string& field, const std::string& message) {
    rpc::InvalidRequest e;
    e.message = message;
    e.field = field;
    throw e;
}

// Status from submission → the IDL's exception.
[[noreturn]] void throw_status(const Status& s) {
    switch (s.code()) {
        case StatusCode::kInvalidArgument:
            throw_invalid(field_of(s), s.message());
        case StatusCode::kResourceExhausted: {
            rpc::Overloaded e;
            e.message = s.message();
            throw e;
        }
        case StatusCode::kUnavailable: {
            rpc::Unavailable e;
            e.message = s.message();
            throw e;
        }
        case StatusCode::kNotFound: {
            rpc::NotFound e;
            e.message = s.message();
            throw e;
        }
        default: {
            rpc::GenerationFailed e;
            e.message = s.message();
            e.code = s.code() == StatusCode::kDeadlineExceeded ? "deadline_exceeded"
                     : s.code() == StatusCode::kCancelled     ? "cancelled"
                                                              : "internal";
            throw e;
        }
    }
}

std::vector<rpc::TokenLogprob> to_logprobs(const std::vector<TokenLogprob>& tokens) {
    std::vector<rpc::TokenLogprob> out;
    for (const auto& t : tokens) {
        rpc::TokenLogprob l;
        l.token = t.token;
        l.logprob = t.logprob;
        l.top_ids = t.top_ids;
        l.top_logprobs.assign(t.top_logprobs.begin(), t.top_logprobs.end());
        out.push_back(std::move(l));
    }
    return out;
}

}  // namespace

class Handler : public rpc::DeepshardIf {
public:
    Handler(const ThriftOptions& options, Engine* engine) : options_(options), engine_(engine) {}

    void stop() {
        std::lock_guard lock(mu_);
        stopping_ = true;
    }

    void Generate(rpc::GenerateResponse& out, const rpc::GenerateRequest& request) override {
        (void)check_key(request.api_key);
        GenerateParams params = to_params(request);
        const bool want_lp = request.__isset.logprobs;
        auto submitted = engine_->submit(std::move(params), want_lp);
        if (!submitted.ok()) throw_status(submitted.status());
        std::shared_ptr<Request> r = std::move(submitted).value();
        // Wait in slices so that a stopping server does not hang on a long generation.
        while (!r->finished()) {
            (void)r->wait(SIZE_MAX, Clock::now() + std::chrono::milliseconds(200));
            if (stopping()) {
                engine_->cancel(r);
                rpc::Unavailable e;
                e.message = "the coordinator is shutting down";
                throw e;
            }
        }
        const RequestSnapshot snap = r->snapshot(0);
        if (snap.finish_reason == FinishReason::kError || snap.finish_reason == FinishReason::kCancelled) {
            throw_status(snap.error);
        }
        std::vector<TokenLogprob> tokens;
        for (const auto& ev : snap.events) {
            out.text += ev.text;
            tokens.insert(tokens.end(), ev.tokens.begin(), ev.tokens.end());
        }
        for (const auto& t : tokens) out.tokens.push_back(t.token);
        out.finish_reason = snap.finish_reason == FinishReason::kLength ? "length" : "stop";
        out.prompt_tokens = static_cast<int32_t>(snap.prompt_tokens);
        out.completion_tokens = static_cast<int32_t>(snap.completion_tokens);
        if (want_lp) out.__set_logprobs(to_logprobs(tokens));
    }

    int64_t Submit(const rpc::GenerateRequest& request) override {
        const int owner = check_key(request.api_key);
        GenerateParams params = to_params(request);
        {
            std::lock_guard lock(mu_);
            gc_locked();
            if (tracked_.size() >= options_.max_tracked) {
                rpc::Overloaded e;
                e.message = "too many submitted requests are waiting to be polled (" +
                            std::to_string(options_.max_tracked) + ")";
                throw e;
            }
        }
        auto submitted = engine_->submit(std::move(params), request.__isset.logprobs);
        if (!submitted.ok()) throw_status(submitted.status());
        std::shared_ptr<Request> r = std::move(submitted).value();
        const int64_t id = static_cast<int64_t>(r->id());
        std::lock_guard lock(mu_);
        tracked_[id] = Tracked{r, Clock::now(), request.__isset.logprobs, owner};
        return id;
    }

    void Poll(rpc::PollResponse& out, int64_t request_id, int64_t offset, int32_t wait_ms,
              const std::string& api_key) override {
        Tracked t = lookup(request_id, check_key(api_key));
        if (offset < 0) {
            rpc::NotFound e;  // no InvalidRequest on Poll: an impossible offset names nothing
            e.message = "offset must be >= 0";
            throw e;
        }
        const auto wait = std::chrono::milliseconds(std::clamp(wait_ms, 0, 5000));
        RequestSnapshot snap = t.request->wait(static_cast<size_t>(offset), Clock::now() + wait);
        {
            std::lock_guard lock(mu_);
            if (auto it = tracked_.find(request_id); it != tracked_.end()) it->second.touched = Clock::now();
        }
        const bool failed =
            snap.finished && (snap.finish_reason == FinishReason::kError || snap.finish_reason == FinishReason::kCancelled);
        if (failed && snap.events.empty()) throw_status(snap.error);
        std::vector<TokenLogprob> tokens;
        for (const auto& ev : snap.events) {
            out.text += ev.text;
            tokens.insert(tokens.end(), ev.tokens.begin(), ev.tokens.end());
        }
        for (const auto& tk : tokens) out.tokens.push_back(tk.token);
        out.next_offset = static_cast<int64_t>(snap.next_offset);
        // A failed request reports its error on the next Poll, after its last output was read.
        out.finished = snap.finished && !failed;
        if (out.finished) out.finish_reason = snap.finish_reason == FinishReason::kLength ? "length" : "stop";
        out.prompt_tokens = static_cast<int32_t>(snap.prompt_tokens);
        out.completion_tokens = static_cast<int32_t>(snap.completion_tokens);
        if (t.logprobs) out.__set_logprobs(to_logprobs(tokens));
    }

    void Cancel(int64_t request_id, const std::string& api_key) override {
        Tracked t = lookup(request_id, check_key(api_key));
        engine_->cancel(t.request);
    }

    void Tokenize(std::vector<int32_t>& out, const std::string& text, bool add_bos, const std::string& api_key) override {
        (void)check_key(api_key);
        const auto& tok = engine_->tokenizer();
        if (!tok) throw_invalid("text", "this model has no tokenizer");
        auto ids = tok->encode(text, add_bos);
        if (!ids.ok()) throw_invalid("text", ids.status().message());
        out = std::move(ids).value();
    }

    void Detokenize(std::string& out, const std::vector<int32_t>& tokens, const std::string& api_key) override {
        (void)check_key(api_key);
        const auto& tok = engine_->tokenizer();
        if (!tok) throw_invalid("tokens", "this model has no tokenizer");
        for (int32_t t : tokens) {
            if (t < 0 || t >= engine_->model().vocab_size) {
                throw_invalid("tokens", "token id " + std::to_string(t) + " is outside the vocabulary");
            }
        }
        out = tok->decode(tokens);
    }

    void GetModelInfo(rpc::ModelInfo& out) override {
        const ModelInfo& m = engine_->model();
        out.name = m.name;
        out.max_context = m.max_context;
        out.vocab_size = m.vocab_size;
        out.bos_id = m.bos_id;
        out.eos_id = m.eos_id;
        char buf[32];
        std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(m.fingerprint));
        out.fingerprint = buf;
        out.has_tokenizer = engine_->tokenizer() != nullptr;
    }

    void Health(rpc::HealthStatus& out) override {
        const HealthInfo h = engine_->health();
        out.available = h.available;
        out.reason = h.reason;
        out.shard_job = h.shard_job;
        out.session_id = static_cast<int64_t>(h.session_id);
    }

    void GetStats(rpc::Stats& out) override {
        const EngineStats s = engine_->stats();
        out.queued = static_cast<int64_t>(s.scheduler.queued);
        out.running = static_cast<int64_t>(s.scheduler.running);
        out.in_flight_batches = static_cast<int64_t>(s.scheduler.in_flight_batches);
        out.kv_blocks_total = static_cast<int64_t>(s.scheduler.kv_blocks_total);
        out.kv_blocks_used = static_cast<int64_t>(s.scheduler.kv_blocks_used);
        out.prompt_tokens = static_cast<int64_t>(s.scheduler.prompt_tokens);
        out.generated_tokens = static_cast<int64_t>(s.scheduler.generated_tokens);
        out.requests_total = static_cast<int64_t>(s.requests_total);
        out.steps_total = static_cast<int64_t>(s.steps_total);
        out.ttft_p50_s = s.ttft_p50;
        out.ttft_p99_s = s.ttft_p99;
        out.itl_p50_s = s.itl_p50;
        out.itl_p99_s = s.itl_p99;
        out.step_mean_s = s.step_mean;
        out.overhead_mean_s = s.overhead_mean;
    }

private:
    struct Tracked {
        std::shared_ptr<Request> request;
        Clock::time_point touched;
        bool logprobs = false;
        int owner = -1;  // index of the API key that submitted it (-1: no keys configured)
    };

    bool stopping() {
        std::lock_guard lock(mu_);
        return stopping_;
    }

    // Which configured key `key` is (constant-time), -1 when keys are off; Unauthorized otherwise.
    int check_key(const std::string& key) const {
        if (!options_.api_keys.enabled()) return -1;
        const int which = options_.api_keys.match(key);
        if (which < 0) {
            rpc::Unauthorized e;
            e.message = key.empty() ? "missing api_key" : "invalid api_key";
            throw e;
        }
        return which;
    }

    // A request of another key is indistinguishable from one that does not exist.
    Tracked lookup(int64_t id, int owner) {
        std::lock_guard lock(mu_);
        auto it = tracked_.find(id);
        if (it == tracked_.end() || it->second.owner != owner) {
            rpc::NotFound e;
            e.message = "no submitted request with id " + std::to_string(id) + " (unknown or expired)";
            throw e;
        }
        return it->second;
    }

    void gc_locked() {
        const auto now = Clock::now();
        for (auto it = tracked_.begin(); it != tracked_.end();) {
            if (it->second.request->finished() && now - it->second.touched > options_.keep_finished) {
                it = tracked_.erase(it);
            } else {
                ++it;
            }
        }
    }

    GenerateParams to_params(const rpc::GenerateRequest& r) const {
        auto p = params_from_thrift(r, engine_->model(), engine_->tokenizer().get());
        if (!p.ok()) throw_status(p.status());
        return std::move(p).value();
    }

    ThriftOptions options_;
    Engine* engine_;
    std::mutex mu_;
    bool stopping_ = false;
    std::map<int64_t, Tracked> tracked_;
};

struct ThriftServer::Impl {
    ThriftOptions options;  // outlives the server: the transports keep a reference
    std::shared_ptr<Handler> handler;
    std::shared_ptr<th::transport::TServerSocket> socket;
    std::shared_ptr<th::server::TThreadedServer> server;
    std::thread thread;
    uint16_t port = 0;
};

namespace {

// A call that breaks a size limit or is malformed on the wire (a missing required field, a bad
// length) fails while its arguments are read, before the handler runs. The generated processor
// would let that exception end the connection without a word; this one answers the call with a
// TApplicationException saying what was wrong, then ends the connection (the rest of the call is
// still in the stream, so the next call could not be found).
class GuardedProcessor : public rpc::DeepshardProcessor {
public:
    GuardedProcessor(std::shared_ptr<rpc::DeepshardIf> handler, const ThriftOptions& options)
        : DeepshardProcessor(std::move(handler)),
          limits_("limits: a call of at most " + std::to_string(options.max_message_bytes) +
                  " bytes, lists of at most " + std::to_string(options.max_list_entries) +
                  " numbers or " + std::to_string(thrift_guard::Protocol::kMaxCompoundEntries) +
                  " strings or structs") {}

protected:
    bool dispatchCall(th::protocol::TProtocol* in, th::protocol::TProtocol* out, const std::string& fname,
                      int32_t seqid, void* ctx) override {
        try {
            return DeepshardProcessor::dispatchCall(in, out, fname, seqid, ctx);
        } catch (const th::protocol::TProtocolException& e) {
            const bool size = e.getType() == th::protocol::TProtocolException::SIZE_LIMIT;
            reject(out, fname, seqid, std::string(e.what()) + (size ? " (" + limits_ + ")" : ""));
        } catch (const TTransportException& e) {
            if (e.getType() != TTransportException::END_OF_FILE || std::string(e.what()) != "MaxMessageSize reached") {
                throw;  // a timeout or a disconnect: nobody to answer
            }
            reject(out, fname, seqid, "the call is too large (" + limits_ + ")");
        }
        return false;
    }

private:
    const std::string limits_;

    static void reject(th::protocol::TProtocol* out, const std::string& fname, int32_t seqid, const std::string& why) {
        spdlog::info("thrift: rejected a {} call: {}", fname, why);
        try {
            th::TApplicationException x(th::TApplicationException::PROTOCOL_ERROR,
                                        "deepshard: the " + fname + " call was rejected: " + why);
            out->writeMessageBegin(fname, th::protocol::T_EXCEPTION, seqid);
            x.write(out);
            out->writeMessageEnd();
            out->getTransport()->writeEnd();
            out->getTransport()->flush();
        } catch (const std::exception&) {
            // The client is gone or not reading: nothing more to do.
        }
    }
};

// Signals when serve() is listening (or failed to).
class ReadyHandler : public th::server::TServerEventHandler {
public:
    explicit ReadyHandler(std::shared_ptr<std::promise<Status>> ready) : ready_(std::move(ready)) {}
    void preServe() override {
        if (!done_.exchange(true)) ready_->set_value(ok_status());
    }
    void fail(const Status& s) {
        if (!done_.exchange(true)) ready_->set_value(s);
    }

private:
    std::shared_ptr<std::promise<Status>> ready_;
    std::atomic<bool> done_{false};
};

}  // namespace

ThriftServer::ThriftServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

StatusOr<std::unique_ptr<ThriftServer>> ThriftServer::start(const ThriftOptions& options, Engine* engine) {
    std::string host, port_text;
    DS_RETURN_IF_ERROR(control::internal::split_host_port(options.listen, &host, &port_text));
    int port = 0;
    try {
        port = std::stoi(port_text);
    } catch (const std::exception&) {
        return invalid_argument("--thrift " + options.listen + ": bad port");
    }
    auto impl = std::make_unique<Impl>();
    impl->handler = std::make_shared<Handler>(options, engine);
    std::shared_ptr<th::transport::TServerSocket> socket;
    if (options.tls.server_enabled()) {
        DS_RETURN_IF_ERROR(control::check_tls_server_files(options.tls));
        try {
            auto factory = std::make_shared<th::transport::TSSLSocketFactory>(th::transport::SSLProtocol::TLSv1_2);
            factory->server(true);
            factory->loadCertificate(options.tls.cert.c_str());
            factory->loadPrivateKey(options.tls.key.c_str());
            factory->authenticate(false);  // clients authenticate with api_key, not certificates
            socket = std::make_shared<th::transport::TSSLServerSocket>(host, port, factory);
        } catch (const std::exception& e) {
            return invalid_argument(std::string("--tls-cert/--tls-key for Thrift: ") + e.what());
        }
    } else {
        socket = std::make_shared<th::transport::TServerSocket>(host, port);
    }
    impl->socket = socket;
    auto bound = std::make_shared<std::atomic<int>>(port);
    socket->setListenCallback([bound](THRIFT_SOCKET fd) {
        sockaddr_storage addr{};
        socklen_t len = sizeof(addr);
        if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
            if (addr.ss_family == AF_INET) bound->store(ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port));
            if (addr.ss_family == AF_INET6) bound->store(ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port));
        }
    });
    impl->options = options;
    auto processor = std::make_shared<GuardedProcessor>(impl->handler, options);
    impl->server = std::make_shared<th::server::TThreadedServer>(
        processor, socket, std::make_shared<thrift_guard::TransportFactory>(impl->options),
        std::make_shared<thrift_guard::ProtocolFactory>(options.max_message_bytes, options.max_list_entries));
    impl->server->setConcurrentClientLimit(static_cast<int64_t>(std::max<size_t>(1, options.max_connections)));
    auto ready = std::make_shared<std::promise<Status>>();
    auto ready_handler = std::make_shared<ReadyHandler>(ready);
    impl->server->setServerEventHandler(ready_handler);
    auto server = impl->server;
    impl->thread = std::thread([server, ready_handler] {
        try {
            server->serve();
            ready_handler->fail(unavailable("the Thrift server stopped before serving"));
        } catch (const std::exception& e) {
            ready_handler->fail(unavailable(std::string("Thrift server: ") + e.what()));
            spdlog::error("Thrift server: {}", e.what());
        }
    });
    Status s = ready->get_future().get();
    if (!s.ok()) {
        impl->thread.join();
        return s.with_context("--thrift " + options.listen);
    }
    impl->port = static_cast<uint16_t>(bound->load());
    return std::unique_ptr<ThriftServer>(new ThriftServer(std::move(impl)));
}

ThriftServer::~ThriftServer() {
    impl_->handler->stop();
    impl_->server->stop();
    if (impl_->thread.joinable()) impl_->thread.join();
}

void ThriftServer::stop_accepting() {
    // serve() leaves its accept loop and closes the listener; connected clients keep being served.
    impl_->socket->interrupt();
}

uint16_t ThriftServer::port() const {
    return impl_->port;
}

}  // namespace deepshard::coordinator
