// The Thrift front end (coordinator/deepshard.thrift): Generate, Submit/Poll/Cancel, Tokenize,
// Detokenize, GetModelInfo, Health, GetStats over TBinaryProtocol + buffered transport, one thread
// per connection (TThreadedServer). Thrift types stay inside thrift_server.cc.
//
// Submitted requests are kept for Poll until `keep_finished` after they finished (or after their
// last Poll, whichever is later); at most `max_tracked` are kept (Submit beyond: Overloaded).
// The destructor stops the server; blocked Generate/Poll calls return Unavailable.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "common/status.h"
#include "coordinator/engine.h"

namespace deepshard::coordinator {

struct ThriftOptions {
    std::string listen = "127.0.0.1:9090";  // port 0 picks a free port (see port())
    std::string api_key;                    // non-empty: every call with an api_key field must match
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

    struct Impl;

private:
    explicit ThriftServer(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace deepshard::coordinator
