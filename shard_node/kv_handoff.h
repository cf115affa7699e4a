// Prefill/decode disaggregation on one rank of a shard job (coordinator/engine.h "Disaggregation"):
// a prefill job's ranks stage the KV rows of finished prompts for export, a decode job's ranks fetch
// them into their own cache. The transport is comm/ucx/kv_transfer.h (UCX: rc/RDMA where present,
// tcp or shared memory otherwise); this class maps a chunk's layers and positions onto it.
//
// Which rank does what: a prefill rank exports the layers it holds when it answers for the
// sequence's KV domain (local 0 with tensor-parallel attention, where every rank of a stage holds the
// same cache; the owner with data-parallel attention). A decode rank fetches the layers it holds from
// the sources the coordinator gives (one per prefill stage), whatever both jobs' layouts are.
// Failures are never fatal: an export that cannot be staged or a fetch that fails or passes its
// deadline is logged and reported, and the coordinator has the positions computed instead.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "control/protocol.h"
#include "model/engine.h"

namespace deepshard::comm {
class KvTransfer;
}

namespace deepshard::shard_node {

struct KvHandoffOptions {
    std::string listen_ip;  // export listener address ("" = this rank only fetches)
    size_t max_staged_bytes = size_t{1} << 30;
    std::chrono::milliseconds ttl{60000};
    std::chrono::milliseconds fetch_timeout{10000};
};

class KvHandoff {
public:
    // kUnavailable when this build has no UCX.
    static StatusOr<std::unique_ptr<KvHandoff>> start(const KvHandoffOptions& options);
    ~KvHandoff();
    // "IP:PORT" of the export listener ("" without one).
    std::string endpoint() const;
    // Stages rows [0, start_pos + tokens) of this rank's layers [first_layer, last_layer) of the
    // chunk's sequence under its kv_export. Logs and returns the error (the step goes on).
    Status export_rows(const model::Engine& engine, const control::SeqWork& w, int64_t first_layer, int64_t last_layer);
    // Fetches this rank's layers of the chunk's positions (already reserved in the engine's pool)
    // and writes them. An error (logged) means the positions hold nothing valid and must be computed.
    Status import_rows(model::Engine& engine, const control::SeqWork& w, int64_t first_layer, int64_t last_layer);

private:
    KvHandoff() = default;
    KvHandoffOptions options_;
    std::unique_ptr<comm::KvTransfer> transfer_;
};

}  // namespace deepshard::shard_node
