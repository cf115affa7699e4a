#include "coordinator/api_keys.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <sstream>

#include "common/env.h"
#include "common/secret_file.h"

namespace deepshard::coordinator {

namespace {

Status check_key(const std::string& key, const std::string& where) {
    if (key.size() < 8 || key.size() > 4096) {
        return invalid_argument(where + ": an API key needs 8..4096 characters (got " + std::to_string(key.size()) + ")");
    }
    for (unsigned char c : key) {
        if (c <= 0x20 || c >= 0x7f) {
            return invalid_argument(where + ": an API key may hold only printable ASCII without spaces");
        }
    }
    return ok_status();
}

}  // namespace

ApiKeys::Digest ApiKeys::digest(const std::string& key) {
    Digest d{};
    SHA256(reinterpret_cast<const unsigned char*>(key.data()), key.size(), d.data());
    return d;
}

StatusOr<ApiKeys> ApiKeys::from_keys(const std::vector<std::string>& keys) {
    ApiKeys k;
    for (const auto& key : keys) {
        DS_RETURN_IF_ERROR(check_key(key, "API key"));
        k.digests_.push_back(digest(key));
    }
    return k;
}

StatusOr<ApiKeys> ApiKeys::load(const std::vector<std::string>& flag_keys, const std::string& key_file) {
    std::vector<std::string> keys;
    for (const auto& k : flag_keys) {
        if (k.empty()) continue;  // --api-key "" means none, as before
        DS_RETURN_IF_ERROR(check_key(k, "--api-key"));
        keys.push_back(k);
    }
    if (!key_file.empty()) {
        // Same rules as the control secret: a regular file only its owner can read.
        DS_ASSIGN_OR_RETURN(std::string text, read_secret_file(key_file, "API key file"));
        std::istringstream in(text);
        std::string line;
        int n = 0;
        while (std::getline(in, line)) {
            ++n;
            while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t')) line.pop_back();
            size_t a = line.find_first_not_of(" \t");
            if (a == std::string::npos || line[a] == '#') continue;
            line = line.substr(a);
            DS_RETURN_IF_ERROR(check_key(line, "--api-key-file " + key_file + " line " + std::to_string(n)));
            keys.push_back(line);
        }
    }
    std::stringstream env(env_str("DS_API_KEYS"));
    for (std::string k; std::getline(env, k, ',');) {
        if (k.empty()) continue;
        DS_RETURN_IF_ERROR(check_key(k, "DS_API_KEYS"));
        keys.push_back(k);
    }
    return from_keys(keys);
}

int ApiKeys::match(const std::string& presented) const {
    const Digest d = digest(presented);
    int found = -1;
    for (size_t i = 0; i < digests_.size(); ++i) {
        // No early exit: every key costs the same whether or not an earlier one matched.
        const bool eq = CRYPTO_memcmp(d.data(), digests_[i].data(), d.size()) == 0;
        found = eq && found < 0 ? static_cast<int>(i) : found;
    }
    return found;
}

}  // namespace deepshard::coordinator
