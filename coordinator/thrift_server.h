// The Thrift front end (coordinator/deepshard.thrift): Generate, Submit/Poll/Cancel, Tokenize,
// Detokenize, GetModelInfo, Health, GetStats over TBinaryProtocol + buffered transport, one thread
// per connection (TThreadedServer). Thrift types stay inside thrift_server.cc.
//
// Submitted requests are kept for Poll until `keep_finished` after they finished (or after their
// last Poll, whichever is later); at most `max_tracked` are kept (Submit beyond: Overloaded).
// With API keys, a submitted request belongs to the key that submitted it: Poll and Cancel with
// another key get NotFound, exactly as for an id that does not exist.
// The destructor stops the server; blocked Generate/Poll calls return Unavailable.
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

struct ThriftOptions {
    std::string listen = "127.0.0.1:9090";  // port 0 picks a free port (see port())
    ApiKeys api_keys;                       // any key set: every call with an api_key field must match
    control::TlsFiles tls;                  // cert + key: TSSLServerSocket (TLS only)
    std::chrono::milliseconds keep_finished{300000};
    size_t max_tracked = 10000;
};

class ThriftServer {
public:
    static StatusOr<std::unique_ptr<ThriftServer>> start(const ThriftOptions& options, Engine* engine);
    ~ThriftServer();
    ThriftServer(const ThriftServer&) = delete;
    ThriftServer& operator=(const ThriftServer&) = delete;

    uint16_t port() const;
    // Shutdown, step 1: closes the listening socket; connected clients are still served.
    void stop_accepting();

    struct Impl;

private:
    explicit ThriftServer(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace deepshard::coordinator
