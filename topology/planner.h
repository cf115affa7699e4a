// The partition planner (`deepshard plan`, DESIGN §4, §7): for a model config and a cluster it picks
// the pipeline stages, ranks per stage, TP or DP attention, expert placement and dtype path;
// accounts every rank's memory (weights, activations, communication buffers, KV cache); binds each
// rank to host, GPU, NUMA node and nearest NIC; predicts throughput with the cost model; and
// refuses, with the numbers, what does not fit. The plan JSON is the file every shard process and
// the launcher read back: its fields are topology::PlanFile (plan_file.h, one reader and writer),
// plus the predictions documented in plan_output.cc.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "model/config.h"
#include "topology/cluster.h"
#include "topology/cost_model.h"
#include "topology/plan_file.h"
#include "topology/model_stats.h"

namespace deepshard::topology {

enum class Attention { kTp, kDp };

// A layout fixed by hand: "pp=2,tp=2", "tp=4", "pp=1,tp=4,attn=dp,ep=4". Inside a stage the same
// ranks serve tensor parallelism (tp attention), data parallelism (dp attention) and expert
// parallelism, so every width given (tp, dp, ep) must agree; it is the number of ranks per stage.
struct LayoutRequest {
    int pp = 1;
    int ranks_per_stage = 1;
    Attention attention = Attention::kTp;
    std::string to_string() const;
};
StatusOr<LayoutRequest> parse_layout(std::string_view text);

enum class Objective { kThroughput, kLatency };

struct PlanOptions {
    std::optional<LayoutRequest> layout;  // fixed layout; otherwise the planner searches
    std::string dtype = "auto";           // auto | fp8 | fp8-weight-only | bf16
    std::string numerics = "fast";        // exact | fast: the ranks' weight matmuls (written to the plan)
    double mem_fraction = 0.90;           // share of each device's memory the job may use
    int64_t min_kv_tokens = 0;            // refuse below this KV capacity; 0 = one request of the workload
    int64_t kv_budget_bytes = 0;          // KV cache per rank; 0 = what memory leaves, capped at the workload's need
    Workload workload;
    Serving serving;
    Objective objective = Objective::kThroughput;
    std::string model_source;  // shown in the plan
};

struct RankMemory {
    int stage = 0;
    double capacity = 0;  // device memory (or the rank's share of node RAM)
    double usable = 0;    // capacity x mem_fraction
    double weights = 0;
    double activations = 0;
    double comm = 0;
    double kv_room = 0;     // what is left for the KV cache (negative: does not fit)
    double kv = 0;          // the KV budget this rank registers (the plan's kv_budget_bytes, <= kv_room)
    int64_t kv_tokens = 0;  // tokens of KV that budget holds for its stage's layers
};

struct RankBinding {
    int rank = 0, stage = 0, local = 0;
    int node = 0;
    std::string host;
    int gpu = -1;  // CUDA ordinal on the host, -1 for CPU ranks
    int numa = -1;
    std::string nic;
    std::string cpus;  // CPU list for binding ("0-13")
};

struct Candidate {
    LayoutRequest layout;
    bool fits = false;
    std::string reason;  // why it does not fit / is not valid
    double max_rank_bytes = 0;
    double decode_tokens_per_s = 0;
    double tpot_bs1_ms = 0;
    int64_t kv_tokens = 0;
};

struct Plan {
    std::string model_source;
    model::ModelConfig config;
    Cluster cluster;
    PlanOptions options;

    int world_size = 1;
    int ranks_per_stage = 1;
    Attention attention = Attention::kTp;
    std::vector<std::pair<int64_t, int64_t>> stages;
    std::vector<int> expert_owner;

    DtypePath dtype = DtypePath::kBf16;
    std::string dtype_reason;
    double total_weight_bytes = 0;
    int64_t total_params = 0;

    std::vector<RankMemory> stage_memory;  // the fullest rank of each stage
    model::KvStorage kv_storage = model::KvStorage::kBf16;  // as the engine that runs the plan stores KV
    int64_t kv_bytes_per_token_layer = 0;
    int64_t kv_budget_bytes = 0;          // per rank, the same on every rank: what each registers
    std::string kv_budget_reason;         // how it was chosen (room, workload cap or --kv-budget-mb)
    int64_t kv_capacity_tokens = 0;       // tokens the whole job can hold (all sequences together)
    int64_t max_tokens_per_sequence = 0;  // longest single sequence that fits

    std::vector<RankBinding> ranks;
    DecodeEstimate decode;      // serving batch at the workload
    DecodeEstimate decode_bs1;  // one sequence
    PrefillEstimate prefill;
    std::string decode_bound;   // "decode limited by expert weight reads over HBM at 30% efficiency (61%)"
    std::string decode_bs1_bound;
    std::string prefill_bound;
    std::vector<Candidate> candidates;
    std::vector<std::string> explanation;

    // The part the job reads back (topology/plan_file.h), and the whole plan as JSON: the plan file
    // plus predictions, memory, cluster and candidates for people.
    PlanFile file() const;
    nlohmann::json to_json() const;
    std::string summary() const;
};

// Plans `config` on `cluster`. Errors: kInvalidArgument for malformed requests (bad layout for this
// model, dtype the device cannot run), kResourceExhausted when nothing fits (the message carries
// the byte counts).
StatusOr<Plan> make_plan(const model::ModelConfig& config, const Cluster& cluster, const PlanOptions& options);

const char* attention_name(Attention a);

}  // namespace deepshard::topology
