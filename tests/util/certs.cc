#include "tests/util/certs.h"

#include <chrono>

#include "tests/util/subprocess.h"

namespace deepshard::testing_util {

CertPair make_self_signed_cert(const std::string& dir, const std::string& name) {
    CertPair p;
    p.cert = dir + "/" + name + ".crt";
    p.key = dir + "/" + name + ".key";
    const auto r = run_command({"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                                "-nodes", "-keyout", p.key, "-out", p.cert, "-days", "2", "-subj", "/CN=localhost",
                                "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"},
                               std::chrono::seconds(60));
    if (r.exit_code != 0) p.error = "openssl req failed (" + std::to_string(r.exit_code) + "): " + r.err;
    return p;
}

}  // namespace deepshard::testing_util
