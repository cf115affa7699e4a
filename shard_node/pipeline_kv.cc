// Prefill/decode disaggregation in the step pipeline (pipeline.h, kv_handoff.h): starting the
// export listeners, fetching a step's kv_import chunks, staging its kv_export chunks.
#include <algorithm>
#include <cstring>

#include "common/logging.h"
#include "shard_node/pipeline.h"

namespace deepshard::shard_node {

namespace ctl = deepshard::control;

namespace {
constexpr size_t kEndpointBytes = 256;  // fixed-size slots for the allgather (protocol's bound)
}  // namespace

Status Pipeline::start_kv_export(const KvHandoffOptions& options) {
    kv_options_ = options;
    DS_ASSIGN_OR_RETURN(kv_handoff_, KvHandoff::start(options));
    const std::string mine = kv_handoff_->endpoint();
    if (mine.empty() || mine.size() >= kEndpointBytes) {
        return invalid_argument("KV export listener on '" + options.listen_ip + "': no usable endpoint ('" + mine + "')");
    }
    std::vector<char> slot(kEndpointBytes, '\0');
    std::memcpy(slot.data(), mine.data(), mine.size());
    std::vector<char> all(kEndpointBytes * static_cast<size_t>(world_->size()));
    DS_RETURN_IF_ERROR(world_->allgather(slot.data(), all.data(), kEndpointBytes, comm::DataType::kByte)
                           .with_context("gathering the KV export endpoints"));
    // Per KV domain, per stage: the rank that answers for that domain's sequences (see kv_handoff.h).
    kv_exports_.clear();
    for (int d = 0; d < kv_domains(); ++d) {
        for (int st = 0; st < layout_.num_stages(); ++st) {
            const int local = layout_.attention == AttentionMode::kTensorParallel ? 0 : d;
            const char* e = all.data() + kEndpointBytes * static_cast<size_t>(layout_.rank_of(st, local));
            ctl::KvSource src;
            src.layer_begin = static_cast<uint32_t>(layout_.stages[static_cast<size_t>(st)].first_layer);
            src.layer_end = static_cast<uint32_t>(layout_.stages[static_cast<size_t>(st)].last_layer);
            src.endpoint.assign(e, strnlen(e, kEndpointBytes));
            kv_exports_.push_back(std::move(src));
        }
    }
    spdlog::info("rank {}: KV exports served at {}", rank_, mine);
    return ok_status();
}

Status Pipeline::import_chunks(const PipelineStep& step, const std::vector<size_t>& mine, std::vector<uint64_t>* failed) {
    if (std::none_of(step.batch.seqs.begin(), step.batch.seqs.end(), [](const ctl::SeqWork& w) { return w.has_import; })) {
        return ok_status();  // decided by the batch, so the whole stage skips the collective alike
    }
    const StageRange& range = layout_.stages[static_cast<size_t>(stage_)];
    // Per batch entry: 1 where this rank's import failed (summed over the stage below).
    std::vector<float> bad(step.batch.seqs.size(), 0.0f);
    for (size_t i : mine) {
        const ctl::SeqWork& w = step.batch.seqs[i];
        if (!w.has_import) continue;
        // The pool holds the positions whatever the fetch does: the coordinator's mirror reserved
        // them, and a failed import is computed into them later.
        DS_RETURN_IF_ERROR(model_->kv_blocks()
                               .reserve(w.seq_id, static_cast<int64_t>(w.start_pos + w.tokens.size()))
                               .with_context("reserving the KV of an import"));
        if (std::find(failed->begin(), failed->end(), w.seq_id) != failed->end()) continue;  // an earlier stage failed
        if (!kv_handoff_) {
            auto started = KvHandoff::start(kv_options_);  // fetch-only unless this job also exports
            if (!started.ok()) {
                spdlog::warn("rank {}: cannot fetch KV: {}", rank_, started.status().message());
            } else {
                kv_handoff_ = std::move(started).value();
            }
        }
        if (!kv_handoff_ || !kv_handoff_->import_rows(*model_, w, range.first_layer, range.last_layer).ok()) {
            bad[i] = 1.0f;  // logged by import_rows or above
        }
    }
    if (layout_.ranks_per_stage > 1) {
        // Every rank of the stage runs this for the same step (same batch): one collective, and
        // the whole stage reports the same failures.
        DS_RETURN_IF_ERROR(stage_comm_->allreduce_sum(bad.data(), bad.data(), bad.size())
                               .with_context("agreeing on KV imports"));
    }
    for (size_t i = 0; i < bad.size(); ++i) {
        const uint64_t id = step.batch.seqs[i].seq_id;
        if (bad[i] > 0 && std::find(failed->begin(), failed->end(), id) == failed->end()) failed->push_back(id);
    }
    return ok_status();
}

void Pipeline::export_chunks(const PipelineStep& step, const std::vector<size_t>& mine) {
    // Tensor-parallel stages hold the same cache on every rank: local 0 exports for the stage.
    if (layout_.attention == AttentionMode::kTensorParallel && local_ != 0) return;
    const StageRange& range = layout_.stages[static_cast<size_t>(stage_)];
    for (size_t i : mine) {
        const ctl::SeqWork& w = step.batch.seqs[i];
        if (!w.has_export) continue;
        if (!kv_handoff_) {
            spdlog::warn("rank {}: sequence {} asks for a KV export but this job has no --kv-listen", rank_, w.seq_id);
            continue;
        }
        (void)kv_handoff_->export_rows(*model_, w, range.first_layer, range.last_layer);  // logged there
    }
}

}  // namespace deepshard::shard_node
