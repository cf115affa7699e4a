// KvTransfer's staged transfers (ttl, staging bound, the "recently gone" ids that make errors
// precise), the exporter's validation of a request, and endpoint parsing. Everything here runs
// under mu_ or is pure; no UCX calls.
#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstring>

#include "comm/ucx/kv_transfer_impl.h"

namespace deepshard::comm {
namespace kv_internal {

// a * b * c for non-negative factors; false on overflow.
bool checked_bytes(int64_t a, int64_t b, int64_t c, int64_t* out) {
    int64_t ab = 0;
    return a >= 0 && b >= 0 && c >= 0 && !__builtin_mul_overflow(a, b, &ab) && !__builtin_mul_overflow(ab, c, out);
}

std::string range_str(int64_t b, int64_t e) { return "[" + std::to_string(b) + ", " + std::to_string(e) + ")"; }

// IP literal + port -> sockaddr (no DNS: the coordinator hands out addresses, and a resolver call
// could block the caller for seconds).
StatusOr<std::pair<sockaddr_storage, socklen_t>> make_sockaddr(const std::string& host, uint16_t port) {
    sockaddr_storage ss;
    std::memset(&ss, 0, sizeof(ss));
    auto* v4 = reinterpret_cast<sockaddr_in*>(&ss);
    auto* v6 = reinterpret_cast<sockaddr_in6*>(&ss);
    if (inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(port);
        return std::make_pair(ss, static_cast<socklen_t>(sizeof(sockaddr_in)));
    }
    if (inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(port);
        return std::make_pair(ss, static_cast<socklen_t>(sizeof(sockaddr_in6)));
    }
    return invalid_argument("'" + host + "' is not an IPv4 or IPv6 address");
}

// "IP:PORT" or "[IPv6]:PORT" -> sockaddr.
StatusOr<std::pair<sockaddr_storage, socklen_t>> parse_endpoint(const std::string& ep) {
    const size_t colon = ep.rfind(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 >= ep.size() || ep.size() - colon > 6) {
        return invalid_argument("endpoint '" + ep + "' is not IP:PORT");
    }
    std::string host = ep.substr(0, colon);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
        host = host.substr(1, host.size() - 2);
    }
    uint32_t port = 0;
    for (size_t i = colon + 1; i < ep.size(); ++i) {
        if (ep[i] < '0' || ep[i] > '9') {
            return invalid_argument("endpoint '" + ep + "' has a bad port");
        }
        port = port * 10 + static_cast<uint32_t>(ep[i] - '0');
    }
    if (port == 0 || port > 65535) {
        return invalid_argument("endpoint '" + ep + "' has a bad port");
    }
    return make_sockaddr(host, static_cast<uint16_t>(port));
}

}  // namespace kv_internal

Status KvTransfer::Impl::validate_locked(const WireRequest& r, std::shared_ptr<const Staged>* out, int64_t* bytes) {
    if (r.magic != kRequestMagic || r.version != kWireVersion) {
        return protocol_error("request wire version " + std::to_string(r.version) + ", exporter speaks " +
                              std::to_string(kWireVersion));
    }
    const std::string id = "transfer " + std::to_string(r.transfer_id);
    auto it = staged_.find(r.transfer_id);
    if (it == staged_.end()) {
        for (auto g = gone_.rbegin(); g != gone_.rend(); ++g) {
            if (g->first == r.transfer_id) {
                return not_found(id + " is no longer staged (" + g->second + ")");
            }
        }
        return not_found("unknown " + id + " (never staged here, or dropped long ago)");
    }
    const Staged& s = *it->second;
    uint8_t diff = 0;  // constant time: the comparison must not leak how many key bytes matched
    for (size_t i = 0; i < s.key.size(); ++i) {
        diff |= static_cast<uint8_t>(s.key[i] ^ r.key[i]);
    }
    if (diff != 0) {
        return invalid_argument("wrong key for " + id);
    }
    if (r.row_bytes != s.row_bytes) {
        return invalid_argument("row_bytes " + std::to_string(r.row_bytes) + " does not match the staged row_bytes " +
                                std::to_string(s.row_bytes) + " of " + id);
    }
    if (r.layer_begin >= r.layer_end || r.layer_begin < s.layer_begin || r.layer_end > s.layer_end) {
        return invalid_argument("layers " + range_str(r.layer_begin, r.layer_end) + " outside the staged layers " +
                                range_str(s.layer_begin, s.layer_end) + " of " + id);
    }
    if (r.pos_begin < 0 || r.pos_begin >= r.pos_end || r.pos_end > s.positions) {
        return invalid_argument("positions " + range_str(r.pos_begin, r.pos_end) + " outside the staged positions " +
                                range_str(0, s.positions) + " of " + id);
    }
    if (!checked_bytes(int64_t{r.layer_end} - r.layer_begin, r.pos_end - r.pos_begin, r.row_bytes, bytes)) {
        return invalid_argument("request size overflows");
    }
    *out = it->second;
    return ok_status();
}

// ---- staging ---------------------------------------------------------------------------------

void KvTransfer::Impl::remove_locked(uint64_t id, const char* why) {
    auto it = staged_.find(id);
    if (it == staged_.end()) {
        return;
    }
    stats_.staged_bytes -= it->second->data.size();
    order_.erase(it->second->seq);
    staged_.erase(it);
    gone_.emplace_back(id, why);
    if (gone_.size() > kRecentlyGone) {
        gone_.pop_front();
    }
}

void KvTransfer::Impl::sweep_locked(SteadyClock::time_point now) {
    while (!order_.empty()) {
        auto it = staged_.find(order_.begin()->second);
        if (it->second->expires > now) {
            break;
        }
        ++stats_.expired;
        remove_locked(it->first, "expired: ttl passed");
    }
}

Status KvTransfer::Impl::stage(uint64_t id,
                               const KvKey& key,
                               int32_t lb,
                               int32_t le,
                               int64_t positions,
                               int64_t row_bytes,
                               std::vector<uint8_t> data) {
    const std::string what = "kv stage of transfer " + std::to_string(id);
    int64_t bytes = 0;
    if (lb < 0 || lb >= le || positions <= 0 || row_bytes <= 0 ||
        !checked_bytes(int64_t{le} - lb, positions, row_bytes, &bytes)) {
        return invalid_argument(what + ": bad shape: layers " + range_str(lb, le) + ", " + std::to_string(positions) +
                                " positions, row_bytes " + std::to_string(row_bytes));
    }
    if (static_cast<uint64_t>(bytes) != data.size()) {
        return invalid_argument(what + ": shape implies " + std::to_string(bytes) + " bytes, data has " +
                                std::to_string(data.size()));
    }
    if (data.size() > opts_.max_staged_bytes) {
        return resource_exhausted(what + ": " + std::to_string(data.size()) + " bytes exceed max_staged_bytes " +
                                  std::to_string(opts_.max_staged_bytes));
    }
    auto s = std::make_shared<Staged>();
    s->key = key;
    s->layer_begin = lb;
    s->layer_end = le;
    s->positions = positions;
    s->row_bytes = row_bytes;
    s->data = std::move(data);
    const auto now = SteadyClock::now();
    s->expires = now + opts_.ttl;
    std::lock_guard<std::mutex> lock(mu_);
    sweep_locked(now);
    remove_locked(id, "replaced");
    while (!order_.empty() && stats_.staged_bytes + s->data.size() > opts_.max_staged_bytes) {
        ++stats_.evicted;
        remove_locked(order_.begin()->second, "evicted by the staging bound");
    }
    s->seq = next_seq_++;
    stats_.staged_bytes += s->data.size();
    ++stats_.staged;
    order_[s->seq] = id;
    staged_[id] = std::move(s);
    return ok_status();
}

void KvTransfer::Impl::drop(uint64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    remove_locked(id, "dropped");
}

KvTransferStats KvTransfer::Impl::stats() {
    std::lock_guard<std::mutex> lock(mu_);
    sweep_locked(SteadyClock::now());
    return stats_;
}

}  // namespace deepshard::comm
