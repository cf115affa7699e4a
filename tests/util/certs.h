// Test helper: a self-signed certificate pair made by the openssl command line tool (the test
// generates its own; nothing is checked in).
#pragma once

#include <string>

namespace deepshard::testing_util {

struct CertPair {
    std::string cert;   // PEM certificate (also usable as the CA that verifies it)
    std::string key;    // PEM private key (mode 0600)
    std::string error;  // non-empty when openssl failed (or is missing)
};

// Writes DIR/NAME.crt and DIR/NAME.key: P-256, CN=localhost, SAN IP:127.0.0.1 and DNS:localhost.
CertPair make_self_signed_cert(const std::string& dir, const std::string& name);

}  // namespace deepshard::testing_util
