// The API keys clients present (HTTP "Authorization: Bearer <key>", Thrift `api_key`). Keys come
// from --api-key (repeatable), from a key file (--api-key-file: one key per line, '#' comments;
// readable by its owner only, like any secret) and from DS_API_KEYS (comma-separated), so a key
// need not appear on a command line where `ps` shows it to every user.
//
// Matching is constant-time: the presented key is hashed (SHA-256) and compared with every
// configured key's hash using CRYPTO_memcmp, without stopping at the first match, so neither the
// time nor the length of a key leaks. match() returns which key matched: Thrift binds each
// submitted request to the key that submitted it.
#pragma once

#include <array>
#include <string>
#include <vector>

#include "common/status.h"

namespace deepshard::coordinator {

class ApiKeys {
public:
    ApiKeys() = default;
    // From the flag values, the key file ("" = none) and DS_API_KEYS. Every key must be 8..4096
    // printable ASCII characters without spaces (what fits an Authorization header).
    static StatusOr<ApiKeys> load(const std::vector<std::string>& flag_keys, const std::string& key_file);
    // For tests and programmatic use.
    static StatusOr<ApiKeys> from_keys(const std::vector<std::string>& keys);

    bool enabled() const { return !digests_.empty(); }
    size_t size() const { return digests_.size(); }
    // Index of the matching key, -1 when none does (or no keys are configured).
    int match(const std::string& presented) const;

private:
    using Digest = std::array<unsigned char, 32>;
    static Digest digest(const std::string& key);
    std::vector<Digest> digests_;
};

}  // namespace deepshard::coordinator
