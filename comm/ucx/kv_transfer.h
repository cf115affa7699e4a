// KV-cache hand-off between two separate jobs (prefill/decode disaggregation) over UCX.
//
// A prefill job *stages* a copy of a finished prompt's KV rows under (transfer id, key); a decode
// job, which shares nothing with it but the exporter's "IP:PORT" string and the key (both handed
// out by the coordinator), *fetches* any sub-range of them. One KvTransfer can do both.
//
// Layout: rows are [layer][pos][row_bytes], row-major, for the layers and positions named by the
// call; layers are global layer numbers, positions count from 0.
// Security model: the key is a capability; the exporter compares it in constant time and serves
// nothing (not even the staged ranges) to a request without it. Every request field is bounded
// before any staged memory is touched; the importer accepts only a reply of exactly the size its
// own request implies.
// Thread-safety: stage/drop/fetch/stats/endpoint may be called concurrently from any threads.
// All UCX calls happen on one internal progress thread. Callers must have returned from every
// call before the object is destroyed.
// Memory: staged bytes are bounded by max_staged_bytes (oldest transfers evicted first). A reply
// in flight keeps its transfer's buffer alive even if the transfer is dropped meanwhile, so the
// process can briefly hold more than the bound (at most the bound plus what is being sent).
// Wire format: fixed-size little-endian structs with a magic and a version; both sides must run
// the same wire version (a mismatch is refused with kProtocol, never misread).
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"

namespace deepshard::comm {

using KvKey = std::array<uint8_t, 16>;  // capability: only a holder of the key can read the transfer

struct KvTransferOptions {
    // IPv4 / IPv6 literal to bind the exporter's UCX listener to ("" = no listener: fetch-only).
    // No name resolution: bind a specific interface address so that endpoint() is connectable.
    std::string listen_host;
    uint16_t listen_port = 0;              // 0 = any free port
    size_t max_staged_bytes = 1ull << 30;  // staging bound; staging beyond it drops the oldest transfers
    std::chrono::milliseconds ttl{60000};  // a staged transfer is dropped this long after staging
};

struct KvTransferStats {
    uint64_t staged = 0;           // successful stage() calls
    uint64_t fetches_served = 0;   // requests answered with data (exporter side)
    uint64_t fetches_refused = 0;  // requests answered with an error (exporter side)
    uint64_t expired = 0;          // transfers dropped by the ttl
    uint64_t evicted = 0;          // transfers dropped to keep within max_staged_bytes
    uint64_t bytes_served = 0;     // row bytes sent (exporter side)
    uint64_t bytes_fetched = 0;    // row bytes returned by fetch() (importer side)
    size_t staged_bytes = 0;       // bytes currently staged
};

class KvTransfer {
public:
    // Creates the UCX context/worker, the listener (if listen_host is set) and the progress thread.
    static StatusOr<std::unique_ptr<KvTransfer>> start(const KvTransferOptions& options);
    // Stops the progress thread and closes endpoints; bounded (about 1 s worst case) even when
    // peers are dead or stalled. Pending fetches (there should be none) fail with kCancelled.
    ~KvTransfer();
    KvTransfer(const KvTransfer&) = delete;
    KvTransfer& operator=(const KvTransfer&) = delete;

    // "IP:PORT" the listener is bound to ("" without a listener). IPv6 is written "[addr]:port".
    std::string endpoint() const;

    // Exporter: keeps `data` = rows [layer][pos][row_bytes] for global layers [layer_begin,
    // layer_end) and positions [0, positions). Re-staging an id replaces it. kInvalidArgument if the
    // shape does not match data.size(); kResourceExhausted if this transfer alone exceeds the bound.
    // Non-blocking (no network).
    Status stage(uint64_t transfer_id,
                 const KvKey& key,
                 int32_t layer_begin,
                 int32_t layer_end,
                 int64_t positions,
                 int64_t row_bytes,
                 std::vector<uint8_t> data);
    // Forgets a staged transfer (no-op if unknown). Replies already in flight still complete.
    void drop(uint64_t transfer_id);

    // Importer: rows of layers [layer_begin, layer_end) and positions [pos_begin, pos_end) of
    // `transfer_id` from the exporter at `endpoint`, laid out [layer][pos][row_bytes]. Blocks until
    // done or `deadline` and never returns later than the deadline (plus scheduling noise).
    // Errors: kNotFound (unknown / expired / evicted transfer), kInvalidArgument (wrong key, range
    // outside what was staged, row_bytes mismatch, bad arguments), kUnavailable (peer unreachable or
    // lost), kDeadlineExceeded, kProtocol (malformed reply). A reply arriving after a timeout never
    // touches memory the caller owns. Connections are cached per endpoint string and dropped on error.
    StatusOr<std::vector<uint8_t>> fetch(const std::string& endpoint,
                                         uint64_t transfer_id,
                                         const KvKey& key,
                                         int32_t layer_begin,
                                         int32_t layer_end,
                                         int64_t pos_begin,
                                         int64_t pos_end,
                                         int64_t row_bytes,
                                         std::chrono::steady_clock::time_point deadline);

    KvTransferStats stats() const;

    class Impl;

private:
    explicit KvTransfer(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace deepshard::comm
