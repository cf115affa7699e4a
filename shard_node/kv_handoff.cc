#include "shard_node/kv_handoff.h"

#include <algorithm>

#include "common/logging.h"
#if defined(DS_WITH_KV_TRANSFER)
#include "comm/ucx/kv_transfer.h"
#endif

namespace deepshard::shard_node {

namespace ctl = deepshard::control;

#if defined(DS_WITH_KV_TRANSFER)

StatusOr<std::unique_ptr<KvHandoff>> KvHandoff::start(const KvHandoffOptions& options) {
    std::unique_ptr<KvHandoff> h(new KvHandoff());
    h->options_ = options;
    comm::KvTransferOptions to;
    to.listen_host = options.listen_ip;
    to.max_staged_bytes = options.max_staged_bytes;
    to.ttl = options.ttl;
    DS_ASSIGN_OR_RETURN(h->transfer_, comm::KvTransfer::start(to));
    return h;
}

KvHandoff::~KvHandoff() = default;

std::string KvHandoff::endpoint() const { return transfer_->endpoint(); }

Status KvHandoff::export_rows(const model::Engine& engine, const ctl::SeqWork& w, int64_t first_layer,
                              int64_t last_layer) {
    const int64_t positions = static_cast<int64_t>(w.start_pos) + static_cast<int64_t>(w.tokens.size());
    std::vector<uint8_t> rows;
    Status s = engine.read_kv_rows(w.seq_id, 0, positions, &rows);
    if (s.ok()) {
        s = transfer_->stage(w.kv_export.transfer_id, w.kv_export.key, static_cast<int32_t>(first_layer),
                             static_cast<int32_t>(last_layer), positions, engine.kv_row_bytes(), std::move(rows));
    }
    if (!s.ok()) {
        spdlog::warn("KV export of sequence {} (transfer {}) failed: {}; the decode job will compute it", w.seq_id,
                     w.kv_export.transfer_id, s.message());
    }
    return s;
}

Status KvHandoff::import_rows(model::Engine& engine, const ctl::SeqWork& w, int64_t first_layer, int64_t last_layer) {
    const int64_t begin = w.start_pos;
    const int64_t end = begin + static_cast<int64_t>(w.tokens.size());
    const int64_t row = engine.kv_row_bytes();
    const int64_t layers = last_layer - first_layer;
    const size_t per_layer = static_cast<size_t>((end - begin) * row);
    std::vector<uint8_t> all(static_cast<size_t>(layers) * per_layer);
    const auto deadline = std::chrono::steady_clock::now() + options_.fetch_timeout;
    Status s;
    int64_t covered = 0;
    for (const ctl::KvSource& src : w.kv_import.sources) {
        const int64_t a = std::max<int64_t>(first_layer, src.layer_begin);
        const int64_t b = std::min<int64_t>(last_layer, src.layer_end);
        if (a >= b) continue;
        auto got = transfer_->fetch(src.endpoint, w.kv_import.transfer_id, w.kv_import.key, static_cast<int32_t>(a),
                                    static_cast<int32_t>(b), begin, end, row, deadline);
        if (!got.ok()) {
            s = got.status().with_context("fetching layers [" + std::to_string(a) + ", " + std::to_string(b) +
                                          ") from " + src.endpoint);
            break;
        }
        if (got->size() != static_cast<size_t>(b - a) * per_layer) {
            s = protocol_error("the exporter at " + src.endpoint + " sent " + std::to_string(got->size()) + " bytes");
            break;
        }
        std::copy(got->begin(), got->end(), all.begin() + static_cast<std::ptrdiff_t>((a - first_layer) * per_layer));
        covered += b - a;
    }
    if (s.ok() && covered != layers) {
        s = invalid_argument("the sources cover " + std::to_string(covered) + " of this rank's " +
                             std::to_string(layers) + " layers");
    }
    if (s.ok()) s = engine.write_kv_rows(w.seq_id, begin, end, all);
    if (!s.ok()) {
        spdlog::warn("KV import of sequence {} (transfer {}, positions [{}, {})) failed: {}; computing it instead",
                     w.seq_id, w.kv_import.transfer_id, begin, end, s.message());
    }
    return s;
}

#else  // no UCX in this build

StatusOr<std::unique_ptr<KvHandoff>> KvHandoff::start(const KvHandoffOptions&) {
    return unavailable("this build has no UCX: prefill/decode disaggregation needs it (libucx-dev)");
}
KvHandoff::~KvHandoff() = default;
std::string KvHandoff::endpoint() const { return ""; }
Status KvHandoff::export_rows(const model::Engine&, const ctl::SeqWork&, int64_t, int64_t) {
    return unavailable("no UCX");
}
Status KvHandoff::import_rows(model::Engine&, const ctl::SeqWork&, int64_t, int64_t) {
    return unavailable("no UCX");
}

#endif

}  // namespace deepshard::shard_node
