// Asio SSL contexts for TLS listeners and the leader's client (see tls.h).
#pragma once

#include <memory>
#include <string>

#include <utility>  // Boost 1.74 asio/awaitable.hpp uses std::exchange without it

#include <boost/asio/ssl.hpp>

#include "common/status.h"
#include "control/tls.h"

namespace deepshard::control {

// TLS 1.2+ server context holding the certificate chain and key (checked to match).
StatusOr<std::shared_ptr<boost::asio::ssl::context>> make_tls_server_context(const TlsFiles& files);
// TLS 1.2+ client context; verifies the peer against files.ca when set.
StatusOr<std::shared_ptr<boost::asio::ssl::context>> make_tls_client_context(const TlsFiles& files);

// The RFC 5705 exporter value of an established TLS connection (32 bytes), "" on failure.
std::string tls_channel_binding(SSL* ssl);

}  // namespace deepshard::control
