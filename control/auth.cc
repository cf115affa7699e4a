#include "control/auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "common/env.h"
#include "common/secret_file.h"

namespace deepshard::control {

namespace {

std::string trim(const std::string& s) {
    const char* ws = " \t\r\n";
    const size_t a = s.find_first_not_of(ws);
    if (a == std::string::npos) return "";
    const size_t b = s.find_last_not_of(ws);
    return s.substr(a, b - a + 1);
}

Status check_secret(const std::string& secret, const std::string& where) {
    if (secret.size() < kMinSecretBytes) {
        return invalid_argument(where + " holds " + std::to_string(secret.size()) + " bytes; a control secret needs at least " +
                                std::to_string(kMinSecretBytes));
    }
    if (secret.size() > kMaxSecretBytes) {
        return invalid_argument(where + " holds more than " + std::to_string(kMaxSecretBytes) +
                                " bytes; is it really a secret file?");
    }
    return ok_status();
}

}  // namespace

StatusOr<std::string> read_control_secret_file(const std::string& path) {
    DS_ASSIGN_OR_RETURN(std::string secret, read_secret_file(path, "control secret file", kMaxSecretBytes * 2));
    DS_RETURN_IF_ERROR(check_secret(secret, "control secret file " + path));
    return secret;
}

StatusOr<std::string> load_control_secret(const std::string& path) {
    if (!path.empty()) return read_control_secret_file(path);
    const std::string env_path = env_str("DS_CONTROL_SECRET_FILE");
    if (!env_path.empty()) return read_control_secret_file(env_path);
    const std::string value = trim(env_str("DS_CONTROL_SECRET"));
    if (!value.empty()) {
        DS_RETURN_IF_ERROR(check_secret(value, "DS_CONTROL_SECRET"));
        return value;
    }
    return not_found(
        "no control secret: pass --control-secret-file FILE or set DS_CONTROL_SECRET_FILE (deepshard-launch and "
        "the Slurm script do this for you)");
}

Nonce random_nonce() {
    Nonce n{};
    DS_CHECK(RAND_bytes(n.data(), static_cast<int>(n.size())) == 1) << "RAND_bytes failed";
    return n;
}

Mac auth_mac(const std::string& secret, AuthRole role, const Nonce& client_nonce, const Nonce& server_nonce,
             const std::string& channel_binding) {
    // Distinct labels: a proof made for one direction can never be replayed as the other.
    const std::string label = role == AuthRole::kCoordinator ? "deepshard-control v2 coordinator"
                                                             : "deepshard-control v2 leader";
    std::string msg = label;
    msg.push_back('\0');
    msg.append(reinterpret_cast<const char*>(client_nonce.data()), client_nonce.size());
    msg.append(reinterpret_cast<const char*>(server_nonce.data()), server_nonce.size());
    msg.append(channel_binding);
    Mac out{};
    unsigned int len = 0;
    const unsigned char* r =
        HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
             reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), out.data(), &len);
    DS_CHECK(r != nullptr && len == out.size()) << "HMAC-SHA256 failed";
    return out;
}

bool mac_equal(const Mac& a, const Mac& b) {
    return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

bool constant_time_equal(const std::string& a, const std::string& b) {
    // The length is not secret (keys have public formats); the contents are compared in full.
    if (a.size() != b.size()) return false;
    return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace deepshard::control
