// The shard job's step pipeline (DESIGN §3 steps 4-5). Rank 0 (the leader, local 0 of stage 0)
// submits steps; stage 0 gets each step header by a broadcast inside the stage; every stage runs
// its layers and passes the header plus its hidden states point-to-point to the rank with the same
// local index in the next stage; the last stage samples (or, in driver mode, returns logits) and
// sends the results to rank 0. Rank 0 can submit the next step while later stages still work on
// earlier ones, so with P stages up to P steps are in flight.
//
// Every receive has the communicator's deadline; when idle the leader pushes "tick" steps through
// the pipeline so a dead rank is noticed within a deadline instead of never.
// Thread-safety: one thread per rank drives everything.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <unordered_map>
#include <vector>

#include "comm/communicator.h"
#include "control/protocol.h"
#include "model/checkpoint.h"
#include "model/sampling.h"
#include "model/engine.h"
#include "shard_node/kv_handoff.h"
#include "shard_node/layout.h"
#include "shard_node/speculative.h"

namespace deepshard::shard_node {

enum class StepKind : uint8_t { kStep = 1, kTick = 2, kShutdown = 3 };

struct PipelineStep {
    StepKind kind = StepKind::kStep;
    bool return_logits = false;                 // driver mode: logits back to rank 0, no sampling
    std::vector<model::LogitsMode> logits_mode; // per sequence (driver mode); else from `sample`
    control::StepBatch batch;
    // Set when an earlier stage rejected the step before changing any state (bad positions, KV
    // exhausted): later stages skip it and the last stage reports the error in its reply.
    std::string error;
    // Not on the wire: the data-parallel owner (local rank) of each sequence, resolved by each rank
    // when it applies the step's KV operations (a sequence may be released before the leader
    // collects the step's results, so the leader keeps the owners with the pending step).
    std::vector<int> owners;
    // Disaggregation: sequences whose kv_import failed at this or an earlier stage (forwarded with
    // the header; the last stage reports them in StepResult.import_failed).
    std::vector<uint64_t> import_failed;
};

// What rank 0 gets back for one step.
struct StepReply {
    uint64_t step_id = 0;
    control::StepResult result;           // sampled tokens (coordinator mode)
    std::vector<float> logits;                  // driver mode: rows in batch order
    int64_t rows = 0;
    int64_t vocab = 0;
};

class Pipeline {
public:
    // `world` spans the job; a stage communicator is split from it. Builds this rank's shard of the
    // weights and the engine for `device` over it (the plan's device for this rank unless overridden).
    static StatusOr<std::unique_ptr<Pipeline>> create(comm::Communicator* world, const Layout& layout,
                                                      std::shared_ptr<const model::Checkpoint> checkpoint,
                                                      model::Device device, const model::EngineOptions& options);
    ~Pipeline();

    bool is_leader() const { return rank_ == 0; }
    int rank() const { return rank_; }
    const Layout& layout() const { return layout_; }
    model::Engine& engine() { return *model_; }
    int64_t in_flight() const { return static_cast<int64_t>(pending_.size()); }
    // Smallest KV pool (in blocks) over all ranks: the capacity the coordinator may schedule.
    int64_t min_kv_blocks() const { return min_kv_blocks_; }
    // Independent KV pools (control protocol Hello.kv_domains): 1 with tensor-parallel attention,
    // one per local rank with data-parallel attention.
    int kv_domains() const {
        return layout_.attention == AttentionMode::kDataParallel ? layout_.ranks_per_stage : 1;
    }

    // Leader: runs stage-0 work for `step` and forwards it. Results are collected with collect().
    Status submit(const PipelineStep& step);
    // Leader: the oldest step's reply. With `block` false, sets *ready = false and returns OK when
    // it has not arrived yet; with `block` true waits (up to the deadline).
    Status collect(bool block, bool* ready, StepReply* reply);
    // Leader: a whole step through the pipeline, synchronously (driver mode).
    StatusOr<StepReply> run(const PipelineStep& step);

    // Disaggregation, collective: every rank starts its KV export listener on `options.listen_ip`
    // (a prefill job; kv_handoff.h) and the leader learns where each KV domain's layers are served
    // (Hello.kv_exports). A decode job needs nothing: its ranks start fetching on the first import.
    Status start_kv_export(const KvHandoffOptions& options);
    // A decode job: the options its ranks fetch with (on the first import).
    Status set_kv_fetch_options(const KvHandoffOptions& options) {
        kv_options_ = options;
        return ok_status();
    }
    const std::vector<control::KvSource>& kv_exports() const { return kv_exports_; }

    // Every rank but the leader: serve steps until a shutdown step or an error.
    Status serve();
    // Called by serve() after each step this rank finished (benchmarks: per-step accounting).
    void set_step_observer(std::function<void(const PipelineStep&)> observer) { observer_ = std::move(observer); }
    // Leader: pushes a shutdown through the pipeline (after the last collect).
    Status shutdown();

private:
    Pipeline() = default;
    Status process(const PipelineStep& step, std::span<const float> hidden_in);
    Status receive_step(PipelineStep* step, std::vector<float>* hidden);
    Status send_step(const PipelineStep& step, std::span<const float> hidden, int peer);
    // Applies the batch's releases and prefix-cache / preemption operations (StepBatch.kv) to this
    // rank's KV pool and resolves step->owners. Called once per step on every rank, before the
    // step's work. An operation the pool refuses means the coordinator's view of the KV state
    // disagrees with the job's: a kProtocol error that ends the job (a new one starts empty).
    Status apply_kv_ops(PipelineStep* step);
    // The KV domain (data-parallel owner) of a sequence: the coordinator's choice (KvStart), or
    // seq_id % ranks for sequences started without one (driver mode).
    int domain_of(uint64_t seq_id) const;
    // The chunks this rank runs for `step` (TP: all; DP: the sequences it owns).
    std::vector<size_t> my_sequences(const PipelineStep& step) const;
    Status forward_failure(const PipelineStep& step);
    Status finish_last_stage(const PipelineStep& step, const std::vector<size_t>& mine, const model::StepOutput& out,
                             const std::vector<SpecOutcome>* spec = nullptr);
    // Speculative decoding on the last stage (shard_node/speculative.cc): verifies the chunks'
    // drafts, runs the MTP module and drafts the next tokens; one outcome per entry of `mine`.
    Status speculate(const PipelineStep& step, const std::vector<size_t>& mine, const model::StepOutput& out,
                     std::vector<SpecOutcome>* outcomes);
    // Why this rank cannot run a step's speculative work (empty: it can); same on every rank.
    std::string speculative_refusal(const PipelineStep& step) const;
    std::vector<int> result_senders() const;
    // Disaggregation inside process(): fetches this rank's part of the step's kv_import chunks, then
    // agrees with the stage on which failed (added to *failed); stages the kv_export chunks' rows.
    Status import_chunks(const PipelineStep& step, const std::vector<size_t>& mine, std::vector<uint64_t>* failed);
    void export_chunks(const PipelineStep& step, const std::vector<size_t>& mine);

    comm::Communicator* world_ = nullptr;
    std::unique_ptr<comm::Communicator> stage_comm_;
    std::unique_ptr<model::TpReducer> reducer_;
    std::unique_ptr<model::MoeExchange> exchange_;
    std::unique_ptr<model::DeviceCollectives> device_collectives_;  // CUDA ranks of a TP stage
    Layout layout_;
    int rank_ = 0, stage_ = 0, local_ = 0;
    std::shared_ptr<const model::Checkpoint> checkpoint_;
    std::unique_ptr<model::Engine> model_;
    std::map<uint64_t, std::unique_ptr<model::Sampler>> samplers_;
    std::unordered_map<uint64_t, int> owners_;  // DP: sequence -> local rank serving it
    std::deque<PipelineStep> pending_;  // leader: steps submitted, replies not yet collected
    std::map<uint64_t, StepReply> local_replies_;  // leader on the last stage: its own parts
    comm::Request len_req_;             // leader: posted receive of a result length
    uint64_t len_buf_ = 0;
    int len_sender_ = -1;
    int64_t min_kv_blocks_ = 0;
    std::function<void(const PipelineStep&)> observer_;
    KvHandoffOptions kv_options_;
    std::unique_ptr<KvHandoff> kv_handoff_;
    std::vector<control::KvSource> kv_exports_;  // leader: Hello.kv_exports
};

// Step header wire format (bytes): kind, flags, modes, then a control-protocol StepBatch frame.
std::string encode_step(const PipelineStep& step);
StatusOr<PipelineStep> decode_step(const std::string& bytes);

}  // namespace deepshard::shard_node
