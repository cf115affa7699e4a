// The plan file and the human summary. Plan JSON fields (version 1):
//   world_size, ranks_per_stage, num_stages, attention ("tp"|"dp"), stages [{first_layer, last_layer
//   (exclusive), ranks}], expert_placement [local rank per expert], numerics ("exact"|"fast": the
//   weight matmuls of every rank) — the part shard_node reads;
//   dtype {path, weights, compute, kv_cache, reason}; kv_budget_bytes (per rank: what every rank
//   registers) and kv_cache {dtype, bytes_per_token_per_layer, budget_bytes_per_rank, budget_reason,
//   capacity_tokens, max_tokens_per_sequence}; memory [per stage, the fullest rank: capacity, usable,
//   weights, activations, comm, kv room, kv (the budget), kv_tokens (what it holds)]; ranks [rank,
//   stage, local, host, node, gpu, numa, nic, cpus]; transports {traffic class -> backend, link};
//   predictions {workload, decode, decode_batch1, prefill}; cluster; model; candidates; explanation.
#include <cstdio>
#include <sstream>

#include "topology/planner.h"

namespace deepshard::topology {

namespace {

std::string fmt(const char* f, double v) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), f, v);
    return buf;
}

nlohmann::json transports(const Plan& p) {
    const DeviceSpec& d = p.cluster.device();
    const int rpn = p.cluster.ranks_per_node();
    const bool multi_node = p.cluster.nodes.size() > 1;
    const bool stage_spans = p.ranks_per_stage > rpn;
    const std::string nic = d.is_gpu() ? d.nic_model + " (RDMA)" : d.nic_model + " (TCP)";
    const std::string local = d.is_gpu() ? "NVLink" : "shared memory";
    nlohmann::json t;
    t["control"] = {{"backend", "mpi"}, {"what", "step headers broadcast from rank 0; coordinator over TCP"}};
    if (p.stages.size() > 1) {
        const bool crosses = multi_node && p.ranks_per_stage >= rpn;
        t["pp_activations"] = {{"backend", "ucx"},
                               {"transport", crosses ? (d.is_gpu() ? "rc" : "tcp") : (d.is_gpu() ? "cuda_ipc" : "shm")},
                               {"link", crosses ? nic : local},
                               {"bytes_per_token", p.config.hidden_size * 2}};
    }
    if (p.ranks_per_stage > 1) {
        const std::string backend = d.is_gpu() ? "nccl" : "mpi";
        const std::string link = stage_spans ? local + " + " + nic : local;
        if (p.attention == Attention::kTp) {
            t["tp_allreduce"] = {{"backend", backend}, {"link", link}, {"bytes_per_token", p.config.hidden_size * 2}};
            t["moe_combine"] = {{"backend", backend}, {"link", link}, {"what", "allreduce of routed-expert outputs"}};
        } else {
            t["ep_dispatch"] = {{"backend", backend},
                                {"link", link},
                                {"what", p.dtype == DtypePath::kFp8 ? "all-to-all-v, FP8 hidden states + scales"
                                                                    : "all-to-all-v, BF16 hidden states"}};
            t["ep_combine"] = {{"backend", backend}, {"link", link}, {"what", "all-to-all-v, BF16 expert outputs"}};
        }
    }
    return t;
}

const char* bound_key(Bound b) {
    switch (b) {
        case Bound::kWeightReads: return "weight_reads";
        case Bound::kExpertReads: return "expert_reads";
        case Bound::kKvReads: return "kv_reads";
        case Bound::kGemm: return "gemm";
        case Bound::kExpertGemm: return "expert_gemm";
        case Bound::kAttention: return "attention";
        case Bound::kA2aLocal: return "all_to_all_local";
        case Bound::kA2aNetwork: return "all_to_all_network";
        case Bound::kAllreduce: return "allreduce";
        case Bound::kPipeline: return "pipeline";
        case Bound::kLaunchFloor: return "launch_floor";
        case Bound::kHostOverhead: return "host_overhead";
        case Bound::kCount: break;
    }
    return "?";
}

nlohmann::json bounds_json(const BoundTimes& t) {
    nlohmann::json j = nlohmann::json::object();
    for (size_t i = 0; i < kNumBounds; ++i) {
        if (t[i] > 0) {
            j[bound_key(static_cast<Bound>(i))] = t[i] * 1e3;
        }
    }
    return j;
}

nlohmann::json decode_json(const DecodeEstimate& e, int ranks, size_t nodes, const std::string& bound) {
    return {{"batch_per_step", e.batch},
            {"concurrency", e.concurrency},
            {"context_tokens", e.context},
            {"stage_ms", e.stage_ms},
            {"tpot_ms", e.tpot_ms},
            {"tokens_per_s", e.tokens_per_s},
            {"tokens_per_s_per_rank", e.tokens_per_s / ranks},
            {"tokens_per_s_per_node", e.tokens_per_s / static_cast<double>(nodes)},
            {"per_user_tokens_per_s", e.per_user_tokens_per_s},
            {"serving_tokens_per_s", e.serving_tokens_per_s},
            {"meets_tpot_target", e.meets_target},
            {"bound", bound},
            {"step_ms_by_bound", bounds_json(e.by_bound)}};
}

}  // namespace

PlanFile Plan::file() const {
    PlanFile f;
    f.world_size = world_size;
    f.ranks_per_stage = ranks_per_stage;
    f.attention = attention_name(attention);
    for (const auto& [first, last] : stages) {
        f.stages.push_back({first, last});
    }
    f.expert_placement = expert_owner;
    f.kv_budget_bytes = kv_budget_bytes;
    f.numerics = options.numerics;
    for (const auto& r : ranks) {
        f.ranks.push_back({.rank = r.rank,
                           .stage = r.stage,
                           .local = r.local,
                           .node = r.node,
                           .host = r.host,
                           .gpu = r.gpu,
                           .device = r.gpu >= 0 ? "cuda" : "cpu",
                           .numa = r.numa,
                           .nic = r.nic,
                           .cpus = r.cpus});
    }
    return f;
}

nlohmann::json Plan::to_json() const {
    // The fields the job reads back come from the one plan-file writer; the rest is for people.
    nlohmann::json j = file().to_json();
    const bool fp8 = dtype != DtypePath::kBf16;
    j["dtype"] = {{"path", dtype_path_name(dtype)},
                  {"weights", fp8 ? "fp8-e4m3, fp32 scale per 128x128 block" : "bf16"},
                  {"compute", dtype == DtypePath::kFp8 ? "fp8 gemm, fp32 accumulate" : "bf16 gemm, fp32 accumulate"},
                  {"kv_cache", model::kv_storage_name(kv_storage)},
                  {"reason", dtype_reason}};
    j["kv_cache"] = {{"dtype", model::kv_storage_name(kv_storage)},
                     {"bytes_per_token_per_layer", kv_bytes_per_token_layer},
                     {"budget_bytes_per_rank", kv_budget_bytes},
                     {"budget_reason", kv_budget_reason},
                     {"capacity_tokens", kv_capacity_tokens},
                     {"max_tokens_per_sequence", max_tokens_per_sequence}};
    j["memory"] = nlohmann::json::array();
    for (const auto& m : stage_memory) {
        j["memory"].push_back({{"stage", m.stage},
                               {"capacity_bytes", m.capacity},
                               {"usable_bytes", m.usable},
                               {"weights_bytes", m.weights},
                               {"activation_bytes", m.activations},
                               {"comm_buffer_bytes", m.comm},
                               {"kv_room_bytes", m.kv_room},
                               {"kv_bytes", m.kv},
                               {"kv_tokens", m.kv_tokens}});
    }
    j["mem_fraction"] = options.mem_fraction;
    j["transports"] = transports(*this);
    const Workload& w = options.workload;
    const size_t nodes = cluster.nodes.size();
    j["predictions"] = {
        {"workload",
         {{"prompt_tokens", w.prompt_tokens},
          {"output_tokens", w.output_tokens},
          {"max_batch_per_rank", w.max_batch_per_rank},
          {"prefill_tokens_per_rank", w.prefill_tokens_per_rank}}},
        {"decode", decode_json(decode, world_size, nodes, decode_bound)},
        {"decode_batch1", decode_json(decode_bs1, world_size, nodes, decode_bs1_bound)},
        {"prefill",
         {{"tokens_per_step", prefill.tokens_per_step},
          {"stage_ms", prefill.stage_ms},
          {"tokens_per_s", prefill.tokens_per_s},
          {"tokens_per_s_per_rank", prefill.tokens_per_s / world_size},
          {"tokens_per_s_per_node", prefill.tokens_per_s / static_cast<double>(nodes)},
          {"ttft_ms", prefill.ttft_ms},
          {"bound", prefill_bound},
          {"step_ms_by_bound", bounds_json(prefill.by_bound)}}},
        {"engine", options.serving.engine},
        {"note", "cost model of topology/cost_model.cc with the efficiencies of topology/hardware.cc, calibrated "
                 "against published deployments (tests/topology/cost_model_test.cc)"}};
    j["cluster"] = topology::to_json(cluster);
    j["model"] = {{"source", model_source},
                  {"config_hash", config.hash()},
                  {"num_hidden_layers", config.num_hidden_layers},
                  {"n_routed_experts", config.n_routed_experts},
                  {"total_params", total_params},
                  {"weight_bytes", total_weight_bytes}};
    j["candidates"] = nlohmann::json::array();
    for (const auto& c : candidates) {
        j["candidates"].push_back({{"layout", c.layout.to_string()},
                                   {"fits", c.fits},
                                   {"reason", c.reason},
                                   {"max_rank_bytes", c.max_rank_bytes},
                                   {"decode_tokens_per_s", c.decode_tokens_per_s},
                                   {"tpot_batch1_ms", c.tpot_bs1_ms},
                                   {"kv_tokens", c.kv_tokens}});
    }
    j["explanation"] = explanation;
    return j;
}

std::string Plan::summary() const {
    std::ostringstream o;
    o << "plan for " << (model_source.empty() ? "model" : model_source) << " on " << cluster.description << " ("
      << world_size << " ranks, " << cluster.nodes.size() << " node(s))\n";
    o << "  layout: " << stages.size() << " stage(s) x " << ranks_per_stage << " ranks, " << attention_name(attention)
      << " attention, " << config.n_routed_experts << " experts spread over each stage's ranks\n";
    for (size_t s = 0; s < stages.size(); ++s) {
        const RankMemory& m = stage_memory[s];
        o << "  stage " << s << ": layers [" << stages[s].first << ", " << stages[s].second << "), ranks "
          << s * ranks_per_stage << "-" << (s + 1) * ranks_per_stage - 1 << "; per rank " << format_gb(m.weights)
          << " weights + " << format_gb(m.activations) << " activations + " << format_gb(m.comm) << " comm + "
          << format_gb(m.kv) << " KV (" << m.kv_tokens << " tokens) of " << format_gb(m.usable) << " usable";
        if (m.kv_room > m.kv * 1.01) {
            o << " (" << format_gb(m.kv_room - m.kv) << " left unused)";
        }
        o << "\n";
    }
    o << "  dtype: " << dtype_path_name(dtype) << ", numerics " << options.numerics << "\n";
    for (const auto& line : explanation) {
        o << "  - " << line << "\n";
    }
    const Workload& w = options.workload;
    const bool gpu = cluster.device().is_gpu();
    const char* per = gpu ? " per GPU" : " per rank";
    o << "  predicted (prompt " << w.prompt_tokens << ", output " << w.output_tokens << " tokens; "
      << (gpu ? "" : "CPU ranks, ") << cluster.device().name << ", " << options.serving.engine << " engine):\n";
    o << "    decode: " << fmt("%.0f", decode.tokens_per_s) << " tok/s at " << decode.concurrency << " sequences ("
      << fmt("%.0f", decode.tokens_per_s / world_size) << per << "), TPOT " << fmt("%.1f", decode.tpot_ms) << " ms\n";
    o << "      " << decode_bound << "\n";
    if (!w.disaggregated) {
        o << "    serving with prefill on the same ranks: " << fmt("%.0f", decode.serving_tokens_per_s)
          << " output tok/s\n";
    }
    o << "    decode batch 1: " << fmt("%.1f", decode_bs1.per_user_tokens_per_s) << " tok/s, TPOT "
      << fmt("%.1f", decode_bs1.tpot_ms) << " ms\n";
    o << "      " << decode_bs1_bound << "\n";
    o << "    prefill: " << fmt("%.0f", prefill.tokens_per_s) << " tok/s ("
      << fmt("%.0f", prefill.tokens_per_s / static_cast<double>(cluster.nodes.size())) << " per node), TTFT "
      << fmt("%.0f", prefill.ttft_ms) << " ms for one prompt\n";
    o << "      " << prefill_bound << "\n";
    if (!gpu) {
        o << "    memory bandwidth: " << fmt("%.1f", cluster.device().mem_bw_gbs) << " GB/s per node ("
          << cluster.device().source << ")\n";
    }
    if (!cluster.device().memory_source.empty()) {
        o << "  memory: " << format_gb(static_cast<double>(cluster.device().memory_bytes)) << " per node ("
          << cluster.device().memory_source << ")\n";
    }
    o << "  bindings:\n";
    const size_t show = ranks.size() <= 16 ? ranks.size() : 8;
    for (size_t i = 0; i < show; ++i) {
        const RankBinding& r = ranks[i];
        o << "    rank " << r.rank << " -> " << r.host << (r.gpu >= 0 ? " gpu " + std::to_string(r.gpu) : " cpu")
          << ", NUMA " << r.numa << ", NIC " << (r.nic.empty() ? "-" : r.nic) << ", cpus " << r.cpus << "\n";
    }
    if (show < ranks.size()) {
        o << "    ... " << ranks.size() - show << " more (see --json)\n";
    }
    return o.str();
}

}  // namespace deepshard::topology
