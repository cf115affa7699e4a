// Roofline cost model of one layout on one device type. Every op costs max(bytes / achievable
// memory bandwidth, FLOPs / achievable tensor throughput); a layer costs at least its kernel-launch
// floor; collectives cost a fixed latency plus bytes over the link they cross (NVLink inside a node,
// the NIC between nodes). All constants come from hardware_table(). Routing is taken as uniform
// (no expert-load imbalance, no redundant experts) and compute does not overlap communication
// (the engine does not yet overlap them), so the model is optimistic about kernels and pessimistic
// about overlap; tests/topology/cost_model_test.cc holds it against published deployments.
#pragma once

#include <cstdint>
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
};

struct Geometry {
    int pp = 1;               // pipeline stages
    int ranks_per_stage = 1;  // S: TP size (tp attention) or DP = EP size (dp attention)
    bool dp_attention = false;
    int ranks_per_node = 1;
    std::vector<std::pair<int64_t, int64_t>> stages;  // [first, last) layers per stage
    int max_experts_per_rank = 0;
};

struct DecodeEstimate {
    int64_t batch = 0;        // sequences per micro-batch (one step batch)
    int64_t concurrency = 0;  // sequences in flight (micro-batches x batch)
    int64_t context = 0;      // KV length assumed per sequence
    double stage_ms = 0;      // slowest stage, one micro-batch
    double tpot_ms = 0;       // time per output token seen by one sequence
    double tokens_per_s = 0;  // whole job
    double per_user_tokens_per_s = 0;
    double memory_ms = 0, compute_ms = 0, comm_ms = 0, floor_ms = 0;  // slowest stage, by kind
};

struct PrefillEstimate {
    int64_t tokens_per_step = 0;  // per stage step (all ranks of a stage together)
    double stage_ms = 0;
    double tokens_per_s = 0;
    double ttft_ms = 0;  // one prompt alone, through every stage
};

class CostModel {
public:
    CostModel(const ModelStats& stats, const DeviceSpec& device, DtypePath dtype, Geometry geometry);

    // Decode step of `batch` sequences per micro-batch with `context` tokens of KV each.
    DecodeEstimate decode(int64_t batch, int64_t context) const;
    // Prefill of prompts of `prompt` tokens in chunks of `tokens_per_rank`.
    PrefillEstimate prefill(int64_t tokens_per_rank, int64_t prompt) const;

    const Geometry& geometry() const { return g_; }
    int nodes_per_stage() const;

private:
    struct Cost {
        double memory = 0, compute = 0, comm = 0, floor = 0;
        double total() const;
    };
    // One stage: `n_rank` new tokens through each rank's attention, `b_stage` tokens through the
    // stage's MoE, `context` tokens attended per new token (decode: the KV length; prefill: half the
    // prompt), `logit_rows` rows through the head on the last stage.
    Cost stage_cost(int stage, int64_t n_rank, int64_t b_stage, double context, int64_t logit_rows, bool decode) const;
    double op(double bytes, double flops, double rate) const;
    double collective(double bytes_per_rank, bool allreduce) const;
    double p2p(double bytes) const;

    const ModelStats& s_;
    DeviceSpec d_;
    DtypePath dtype_;
    Geometry g_;
    double hbm_ = 0, gemm_ = 0, attn_ = 0, intra_bw_ = 0, inter_bw_ = 0;
};

}  // namespace deepshard::topology
