// The plan file: the part of `deepshard plan --json` that the running job reads back. One type, one
// reader and one writer, used by the planner (which adds its predictions around it), the shard node
// (shard_node::Layout), the launcher (hostfile/rankfile, binding) and the benchmarks. Fields:
//   "world_size", "ranks_per_stage", "attention" ("tp" | "dp"),
//   "stages" [{"first_layer", "last_layer" (exclusive)}],
//   "expert_placement" (expert -> local rank; or one such list per stage, all equal),
//   "kv_budget_bytes" (KV cache bytes each rank registers), "numerics" ("exact" | "fast"),
//   "ranks" [{"rank", "stage", "local", "host", "node", "gpu", "device", "numa", "nic", "cpus"}].
// Only "world_size" is required: a bare {"world_size": N} launches N unbound ranks; the shard node
// further requires the layout fields (Layout::from_plan).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"

namespace deepshard::topology {

struct PlanRank {
    int rank = 0;
    int stage = 0, local = 0, node = 0;
    std::string host;    // "" = not given
    int gpu = -1;        // CUDA ordinal on its host, -1 = none
    std::string device;  // "cpu" | "cuda" | "" (not given: cpu)
    int numa = -1;
    std::string nic;
    std::string cpus;  // OS CPU list ("0-13"), "" = unknown
};

struct PlanStage {
    int64_t first_layer = 0;
    int64_t last_layer = 0;  // exclusive
};

struct PlanFile {
    int world_size = 0;
    int ranks_per_stage = 0;  // 0 = not given
    std::string attention = "tp";
    std::vector<PlanStage> stages;
    std::vector<int> expert_placement;  // empty = not given
    int64_t kv_budget_bytes = 0;        // 0 = not given
    std::string numerics;               // "exact" | "fast" | "" (not given: fast)
    std::vector<PlanRank> ranks;        // the entries given (distinct ranks < world_size), by rank

    // Parses and checks the fields above; errors name `source` (the file) and the field.
    static StatusOr<PlanFile> from_json(const std::string& text, const std::string& source = "file");
    static StatusOr<PlanFile> from_json_value(const nlohmann::json& j, const std::string& source = "file");
    // The fields above as JSON (the planner adds its own around them).
    nlohmann::json to_json() const;
};

}  // namespace deepshard::topology
