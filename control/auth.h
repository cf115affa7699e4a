// The control port's shared secret and the challenge-response that proves it (protocol.h).
//
// The secret is a file readable only by the job's user (mode 0600), written by deepshard-launch or
// the Slurm script (or by the coordinator itself when it is started by hand and no file exists),
// and handed to the processes by path (--control-secret-file / DS_CONTROL_SECRET_FILE) or, for a
// leader on another host without a shared filesystem, by value in the environment
// (DS_CONTROL_SECRET). It is never put on a command line, where `ps` would show it to every user.
//
// Proofs are HMAC-SHA256 over a role label, both nonces and the TLS channel binding; they are
// compared with CRYPTO_memcmp (constant time).
#pragma once

#include <string>

#include "common/status.h"
#include "control/protocol.h"

namespace deepshard::control {

inline constexpr size_t kMinSecretBytes = 16;
inline constexpr size_t kMaxSecretBytes = 4096;

// Reads a control secret file (common/secret_file.h: owner-only regular file), 16..4096 bytes once
// surrounding whitespace is trimmed. The error names the file and what is wrong with it. Files are
// written with write_new_secret_file() (common/secret_file.h).
StatusOr<std::string> read_control_secret_file(const std::string& path);

// The secret for this process: the file `path` when given, else DS_CONTROL_SECRET_FILE, else the
// value of DS_CONTROL_SECRET. kNotFound when none is set.
StatusOr<std::string> load_control_secret(const std::string& path);

// 32 bytes from RAND_bytes.
Nonce random_nonce();

enum class AuthRole { kCoordinator, kLeader };

// HMAC-SHA256(secret, label(role) | client_nonce | server_nonce | channel_binding).
Mac auth_mac(const std::string& secret, AuthRole role, const Nonce& client_nonce, const Nonce& server_nonce,
             const std::string& channel_binding);

// Constant-time comparison (CRYPTO_memcmp).
bool mac_equal(const Mac& a, const Mac& b);
bool constant_time_equal(const std::string& a, const std::string& b);

}  // namespace deepshard::control
