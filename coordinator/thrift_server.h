// The Thrift front end (coordinator/deepshard.thrift): Generate, Submit/Poll/Cancel, Tokenize,
// Detokenize, GetModelInfo, Health, GetStats over TBinaryProtocol + buffered transport, one thread
// per connection (TThreadedServer). Thrift types stay inside thrift_server.cc.
//
// Submitted requests are kept for Poll until `keep_finished` after they finished (or after their
// last Poll, whichever is later); at most `max_tracked` are kept (Submit beyond: Overloaded).
// With API keys, a submitted request belongs to the key that submitted it: Poll and Cancel with
// another key get NotFound, exactly as for an id that does not exist.
// The destructor stops the server; blocked Generate/Poll calls return Unavailable.
//
// Hostile clients: at most `max_connections` are served at once (one thread each; further ones wait
// in the listen backlog until a slot frees). A connection idle for `idle_timeout` between calls is
// closed; once a call's first byte arrived, the whole call must arrive within `request_timeout`
// (a client trickling bytes — slowloris — is cut off) and be at most `max_message_bytes`, with no
// list longer than `max_list_entries` (lists of strings or structs: the request-limits table's
// kMaxMessages), so that decoding one call costs a few MB at most; replies must be taken within
// `write_timeout`. A call breaking
// a size limit or malformed on the wire gets a TApplicationException naming the problem, then the
// connection is closed (its stream cannot be resynchronised). Per call the work is bounded by those
// sizes (Poll waits at most 5 s; Generate runs its one request).
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
    size_t max_connections = 256;
    std::chrono::milliseconds idle_timeout{60000};
    std::chrono::milliseconds request_timeout{30000};
    std::chrono::milliseconds write_timeout{30000};
    size_t max_message_bytes = (4u << 20) + (64u << 10);  // the HTTP body limit plus room for the envelope
    size_t max_list_entries = size_t{1} << 18;            // a prompt of token ids up to DeepSeek's context
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
