// Cost model of one layout on one device type: a roofline per op with achieved-efficiency terms per
// kernel class, link and engine, all from hardware_table() (hardware.cc says where each comes from).
// An op costs max(bytes / (peak bandwidth x its class's efficiency), FLOPs / (peak x efficiency)); a
// layer costs at least the engine's kernel floor; collectives and all-to-all cost a fixed latency
// plus bytes over the link they cross; the busiest expert-parallel rank carries the routing
// imbalance; pipelines pay their bubble; every step pays the engine's host overhead. Compute and
// communication do not overlap (the engine does not overlap them; the published decode figures the
// tests hold it against are matched without overlap too). Every estimate keeps its time by bound, so
// a plan can say what limits it ("decode limited by expert weight reads over HBM at 30% efficiency").
// tests/topology/cost_model_test.cc holds it against the published deployments of ANCHORS.md.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "topology/hardware.h"
#include "topology/model_stats.h"

namespace deepshard::topology {

struct Workload {
    int64_t prompt_tokens = 2000;            // input length of a request
    int64_t output_tokens = 1000;            // tokens generated per request
    int max_batch_per_rank = 256;            // decode sequences one attention rank serves per step
    int64_t prefill_tokens_per_rank = 4096;  // prefill chunk one rank processes per step
    double prefix_hit_rate = 0;              // share of prompt tokens found in a prefix cache: not
                                             // recomputed, still attended by the rest
    double tpot_target_ms = 0;               // > 0: decode batch = the largest whose TPOT meets it
    double mtp_speedup = 1;                  // multi-token prediction: decode tokens per step over cost
    bool disaggregated = false;              // prefill on other ranks (PD split); else prefill time is
                                             // taken out of the same ranks' decode time
};

// How the deployment runs, beyond its layout.
struct Serving {
    std::string engine = "deepshard";  // hardware_table().engines: kernel floor, host overhead per step
    int redundant_experts = 0;         // > 0: experts replicated and placed by load (EPLB)
};

struct Geometry {
    int pp = 1;               // pipeline stages
    int ranks_per_stage = 1;  // S: TP size (tp attention) or DP = EP size (dp attention)
    bool dp_attention = false;
    int ranks_per_node = 1;
    std::vector<std::pair<int64_t, int64_t>> stages;  // [first, last) layers per stage
    int max_experts_per_rank = 0;
};

// What a step's time went to. Memory bounds: bytes over HBM (CPU: DDR); compute: tensor (CPU: vector)
// math; links; fixed costs.
enum class Bound {
    kWeightReads,     // attention / dense / shared-expert / head weights streamed
    kExpertReads,     // routed-expert weights streamed
    kKvReads,         // latent KV cache streamed by decode attention
    kGemm,            // GEMM math (attention projections, MLPs, head)
    kExpertGemm,      // routed-expert GEMM math
    kAttention,       // attention-core math
    kA2aLocal,        // MoE dispatch/combine inside a node
    kA2aNetwork,      // MoE dispatch/combine across nodes
    kAllreduce,       // tensor-parallel collectives
    kPipeline,        // stage-to-stage transfers and the pipeline bubble
    kLaunchFloor,     // kernels shorter than the engine's per-kernel floor
    kHostOverhead,    // the engine's host work per step
    kCount
};
inline constexpr size_t kNumBounds = static_cast<size_t>(Bound::kCount);
using BoundTimes = std::array<double, kNumBounds>;  // seconds

struct DecodeEstimate {
    int64_t batch = 0;        // sequences per micro-batch (one step batch)
    int64_t concurrency = 0;  // sequences in flight (micro-batches x batch)
    int64_t context = 0;      // KV length assumed per sequence
    double stage_ms = 0;      // slowest stage, one micro-batch
    double tpot_ms = 0;       // time per output token seen by one sequence (MTP included)
    double tokens_per_s = 0;  // whole job, decode alone
    double per_user_tokens_per_s = 0;
    double serving_tokens_per_s = 0;  // output tokens/s with prefill sharing the ranks (aggregated serving)
    double memory_ms = 0, compute_ms = 0, comm_ms = 0, floor_ms = 0;  // slowest stage, by kind
    BoundTimes by_bound{};  // one step of the pipeline (slowest stage; bubble and p2p under kPipeline)
    Bound dominant = Bound::kWeightReads;
    bool meets_target = true;  // false when even batch 1 misses Workload::tpot_target_ms
};

struct PrefillEstimate {
    int64_t tokens_per_step = 0;  // per stage step (all ranks of a stage together)
    double stage_ms = 0;
    double tokens_per_s = 0;      // prompt tokens/s (prefix-cache hits included)
    double ttft_ms = 0;           // one prompt alone, through every stage
    BoundTimes by_bound{};
    Bound dominant = Bound::kGemm;
};

class CostModel {
public:
    CostModel(const ModelStats& stats, const DeviceSpec& device, DtypePath dtype, Geometry geometry,
              const Serving& serving = {});

    // Decode step of `batch` sequences per micro-batch with `context` tokens of KV each; `mtp` as in
    // Workload::mtp_speedup.
    DecodeEstimate decode(int64_t batch, int64_t context, double mtp = 1) const;
    // Prefill of prompts of `prompt` tokens in chunks of `tokens_per_rank`; `hit` of each prompt is a
    // cached prefix (not computed, attended).
    PrefillEstimate prefill(int64_t tokens_per_rank, int64_t prompt, double hit = 0) const;
    // Decode at the workload's batch (capped by `batch_cap` and, with a TPOT target, by the largest
    // batch meeting it), with serving_tokens_per_s accounting for prefill unless disaggregated.
    DecodeEstimate serve(const Workload& w, int64_t batch_cap, const PrefillEstimate& prefill) const;

    // "expert weight reads over HBM at 30% efficiency" for the device this model costs.
    std::string describe(Bound b) const;

    const Geometry& geometry() const { return g_; }
    int nodes_per_stage() const;

private:
    struct Rates;
    // One stage: `n_rank` new tokens through each rank's attention, `b_stage` tokens through the
    // stage's MoE, `context` tokens attended per new token, `logit_rows` rows through the head on
    // the last stage.
    BoundTimes stage_cost(int stage, int64_t n_rank, int64_t b_stage, double context, int64_t logit_rows,
                          bool decode) const;
    void op(BoundTimes* t, Bound mem, double bytes, double bw, Bound math, double flops, double rate) const;
    double allreduce(double bytes_per_rank, bool allreduce) const;
    double p2p(double bytes) const;
    double a2a(double n_tokens, double bytes_per_copy, bool low_latency, bool* network) const;

    const ModelStats& s_;
    DeviceSpec d_;
    DtypePath dtype_;
    Geometry g_;
    Efficiency e_;
    EngineProfile engine_;
    double imbalance_ = 1;
    int experts_per_rank_ = 0;
    double peak_bw_ = 0, gemm_rate_ = 0, attn_rate_ = 0, weight_eff_ = 0, expert_eff_ = 0;
};

// Seconds -> the dominant bound.
Bound dominant_bound(const BoundTimes& t);
double total_seconds(const BoundTimes& t);

}  // namespace deepshard::topology
