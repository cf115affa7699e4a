// The OpenAI-compatible HTTP front end (Boost.Beast): /v1/completions, /v1/chat/completions (plain
// and SSE), /v1/models, /health, /metrics.
//
// Robustness: the whole request header must arrive within `header_timeout` (a client that trickles
// headers — slowloris — is cut off), the body within `body_timeout` and `max_body_bytes` (413
// otherwise), at most `max_connections` are open at once (beyond: a 503 "too_many_connections"
// JSON error with Retry-After, then the connection is closed). Keep-alive is supported. A client that
// disconnects while its request runs has the request cancelled. With a certificate pair the
// server speaks HTTPS only (the TLS handshake counts against the header deadline).
//
// Threading: `threads` I/O threads; each connection runs on its own strand. Engine callbacks only
// post to the strand. The destructor stops accepting, closes every connection and joins.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "common/status.h"
#include "control/tls.h"
#include "coordinator/api_keys.h"
#include "coordinator/engine.h"

namespace deepshard::coordinator {

struct HttpOptions {
    std::string listen = "127.0.0.1:8000";  // port 0 picks a free port (see port())
    ApiKeys api_keys;                       // any key set: /v1/* need "Authorization: Bearer <key>"
    control::TlsFiles tls;                  // cert + key: HTTPS only
    size_t max_body_bytes = 4u << 20;
    size_t max_header_bytes = 16u << 10;
    std::chrono::milliseconds header_timeout{10000};
    std::chrono::milliseconds body_timeout{30000};
    std::chrono::milliseconds write_timeout{30000};
    size_t max_connections = 1024;
    int threads = 2;
};

class HttpServer {
public:
    static StatusOr<std::unique_ptr<HttpServer>> start(const HttpOptions& options, Engine* engine);
    ~HttpServer();
    HttpServer(const HttpServer&) = delete;
    HttpServer& operator=(const HttpServer&) = delete;

    uint16_t port() const;
    // Shutdown, step 1: no new connections; kept-alive ones close after their current response.
    void stop_accepting();
    // Shutdown, step 2 (after the engine drained): waits until no response is being written.
    // False when `timeout` passed first.
    bool wait_idle(std::chrono::milliseconds timeout);

    struct Impl;

private:
    explicit HttpServer(std::shared_ptr<Impl> impl);
    std::shared_ptr<Impl> impl_;
};

}  // namespace deepshard::coordinator
