// TLS settings shared by the control port, HTTP and Thrift (off by default; services bind to
// loopback unless told otherwise). One certificate pair turns TLS on for all three listeners of the
// coordinator; the shard job's leader then dials the control port with TLS (--control-tls), and
// checks the coordinator's certificate when given a CA file. Without a CA the leader still cannot be
// fooled by a man in the middle: the challenge-response MACs cover the TLS channel binding
// (RFC 5705 exporter), which differs on each side of an intercepting proxy.
//
// This header is light (no OpenSSL/Asio); tls_context.h builds the Asio SSL contexts.
#pragma once

#include <string>

#include "common/status.h"

namespace deepshard::control {

struct TlsFiles {
    std::string cert;  // PEM certificate chain (server side)
    std::string key;   // PEM private key (server side)
    std::string ca;    // PEM CA bundle to verify the peer with (client side); "" = no verification
    bool client = false;  // client side: speak TLS even without a CA file

    bool server_enabled() const { return !cert.empty(); }
    bool client_enabled() const { return client || !ca.empty(); }
};

// Both of cert/key or neither; files readable. The error names the flag and the file.
Status check_tls_server_files(const TlsFiles& files);

// Label of the RFC 5705 exporter used as channel binding.
inline constexpr const char* kChannelBindingLabel = "EXPORTER-deepshard-control";

}  // namespace deepshard::control
