// How the ranks of a shard job split the model (DESIGN §2, §4): rank r is in pipeline stage r / S
// and holds local index r % S. Inside a stage, attention is tensor-parallel (heads split, every rank
// sees every token) or data-parallel (each rank serves its own sequences with all heads); routed
// experts are spread over the S ranks. Pure arithmetic, no communication, testable anywhere.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "model/config.h"
#include "model/engine.h"
#include "topology/plan_file.h"

namespace deepshard::shard_node {

enum class AttentionMode { kTensorParallel, kDataParallel };

struct StageRange {
    int64_t first_layer = 0;
    int64_t last_layer = 0;  // exclusive
};

// The device a rank computes on: the plan's `ranks[r].device` ("cpu" | "cuda") and `ranks[r].gpu`
// (the CUDA ordinal on its host). Plans without a device field mean "cpu".
struct RankDevice {
    model::Device device = model::Device::kCpu;
    int ordinal = 0;
};

struct Layout {
    int world_size = 1;
    int ranks_per_stage = 1;
    std::vector<StageRange> stages;
    AttentionMode attention = AttentionMode::kTensorParallel;
    std::vector<int> expert_owner;  // expert id -> local index inside the stage
    std::vector<RankDevice> devices; // per rank; empty = every rank on the CPU
    // The plan's "numerics" ("exact" | "fast"): numerics of every rank's weight matmuls. Plans without
    // the field serve with fast, the serving default (issue 11).
    kernels::Numerics numerics = kernels::Numerics::kFast;
    // The plan's "kv_budget_bytes": the KV cache each rank registers (deepshard-shard's default when
    // --kv-budget-mb is not given). 0 = the plan names none.
    int64_t kv_budget_bytes = 0;

    RankDevice device_of(int rank) const {
        return rank >= 0 && rank < static_cast<int>(devices.size()) ? devices[rank] : RankDevice{};
    }

    int num_stages() const { return static_cast<int>(stages.size()); }
    int stage_of(int rank) const { return rank / ranks_per_stage; }
    int local_of(int rank) const { return rank % ranks_per_stage; }
    int rank_of(int stage, int local) const { return stage * ranks_per_stage + local; }

    // Checks the layout against the model: layer ranges cover [0, layers) in order, heads and MLP
    // widths divide by the TP size, vocabulary divides for vocab-parallel embedding/head, experts
    // all owned. Messages name the offending quantity.
    Status validate(const model::ModelConfig& config) const;

    // The part of the model `rank` holds.
    model::ShardSpec shard_spec(const model::ModelConfig& config, int rank) const;

    // Default layout: `stages` stages of `ranks_per_stage` ranks, layers split as evenly as
    // possible, experts in contiguous blocks.
    static Layout even(const model::ModelConfig& config, int stages, int ranks_per_stage, AttentionMode attention);

    // The layout fields of a plan file written by `deepshard plan` (stages with layer ranges,
    // ranks_per_stage, attention, expert placement, per-rank device), checked against the model.
    static StatusOr<Layout> from_plan(const topology::PlanFile& plan, const model::ModelConfig& config);
    static StatusOr<Layout> from_plan_json(const std::string& text, const model::ModelConfig& config);
};

// Which local rank of a DP-attention stage serves a sequence.
inline int dp_owner(uint64_t seq_id, int ranks_per_stage) {
    return static_cast<int>(seq_id % static_cast<uint64_t>(ranks_per_stage));
}

}  // namespace deepshard::shard_node
