#include "control/tls.h"

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <fstream>

#include "control/tls_context.h"

namespace deepshard::control {

namespace ssl = boost::asio::ssl;

namespace {

Status readable(const std::string& path, const char* flag) {
    std::ifstream in(path);
    if (!in) return invalid_argument(std::string(flag) + " " + path + ": cannot read it");
    return ok_status();
}

std::string openssl_errors() {
    std::string out;
    while (unsigned long e = ERR_get_error()) {
        char buf[256];
        ERR_error_string_n(e, buf, sizeof(buf));
        out += (out.empty() ? "" : "; ") + std::string(buf);
    }
    return out.empty() ? "unknown OpenSSL error" : out;
}

}  // namespace

Status check_tls_server_files(const TlsFiles& files) {
    if (files.cert.empty() != files.key.empty()) {
        return invalid_argument("TLS needs both --tls-cert and --tls-key (got only " +
                                std::string(files.cert.empty() ? "--tls-key" : "--tls-cert") + ")");
    }
    if (files.cert.empty()) return ok_status();
    DS_RETURN_IF_ERROR(readable(files.cert, "--tls-cert"));
    DS_RETURN_IF_ERROR(readable(files.key, "--tls-key"));
    return ok_status();
}

StatusOr<std::shared_ptr<ssl::context>> make_tls_server_context(const TlsFiles& files) {
    DS_RETURN_IF_ERROR(check_tls_server_files(files));
    if (!files.server_enabled()) return invalid_argument("no TLS certificate configured");
    auto ctx = std::make_shared<ssl::context>(ssl::context::tls_server);
    ctx->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3 |
                     ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1 | ssl::context::single_dh_use);
    boost::system::error_code ec;
    ctx->use_certificate_chain_file(files.cert, ec);
    if (ec) return invalid_argument("--tls-cert " + files.cert + ": not a usable PEM certificate (" + ec.message() + ")");
    ctx->use_private_key_file(files.key, ssl::context::pem, ec);
    if (ec) return invalid_argument("--tls-key " + files.key + ": not a usable PEM private key (" + ec.message() + ")");
    if (SSL_CTX_check_private_key(ctx->native_handle()) != 1) {
        return invalid_argument("--tls-key " + files.key + " does not match the certificate " + files.cert + " (" +
                                openssl_errors() + ")");
    }
    return ctx;
}

StatusOr<std::shared_ptr<ssl::context>> make_tls_client_context(const TlsFiles& files) {
    auto ctx = std::make_shared<ssl::context>(ssl::context::tls_client);
    ctx->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3 |
                     ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
    if (!files.ca.empty()) {
        boost::system::error_code ec;
        ctx->load_verify_file(files.ca, ec);
        if (ec) return invalid_argument("--tls-ca " + files.ca + ": not a usable PEM CA file (" + ec.message() + ")");
        ctx->set_verify_mode(ssl::verify_peer);
    } else {
        ctx->set_verify_mode(ssl::verify_none);
    }
    return ctx;
}

std::string tls_channel_binding(SSL* ssl_handle) {
    unsigned char out[32];
    const std::string label = kChannelBindingLabel;
    if (SSL_export_keying_material(ssl_handle, out, sizeof(out), label.data(), label.size(), nullptr, 0, 0) != 1) {
        return "";
    }
    return std::string(reinterpret_cast<const char*>(out), sizeof(out));
}

}  // namespace deepshard::control
