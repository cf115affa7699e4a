// `deepshard plan` (DESIGN §7): the partition plan of a model on a cluster. The cluster comes from
// --cluster SPEC, --hostfile FILE, the Slurm allocation (--slurm, or automatically inside one), or,
// with --layout alone, this host (its CPUs, or its GPUs when CUDA sees them). Prints a summary that
// explains the choices; --json prints the plan, --out writes it. A plan that cannot fit is refused
// with the numbers (exit status 1).
#include <cstdio>
#include <fstream>
#include <iostream>

#include "cli/commands.h"
#include "model/config.h"
#include "topology/cluster.h"
#include "topology/discovery.h"
#include "topology/planner.h"

namespace deepshard::cli {

namespace {

struct PlanArgs {
    std::string model;
    std::string cluster;
    std::string hostfile;
    bool slurm = false;
    std::string gpu_type;
    std::string layout;
    std::string dtype = "auto";
    std::string numerics = "fast";
    std::string objective = "throughput";
    double mem_fraction = 0.90;
    int64_t min_kv_tokens = 0;
    int64_t kv_budget_mb = 0;
    topology::Workload workload;
    bool json = false;
    std::string out;
};

// The device this host's `ranks` drive: its GPUs when CUDA reports enough known ones, else its CPUs.
// CPU ranks get the RAM the host has free now (MemAvailable), not its total: the KV budget the plan
// writes is committed by the shard job when it starts, so it must come out of memory that exists.
StatusOr<topology::DeviceSpec> local_device(const topology::HostTopology& host, int ranks) {
    if (!host.gpus.empty() && static_cast<int>(host.gpus.size()) >= ranks) {
        auto d = topology::device_from_gpu_name(host.gpus.front().name, host.gpus.front().memory_bytes);
        if (d.ok()) {
            return d;
        }
    }
    topology::DeviceSpec d = topology::cpu_device(host.memory_bytes);
    if (host.available_memory_bytes > 0) {
        d.memory_bytes = host.available_memory_bytes;
        d.memory_source = "free on this host now (MemAvailable) of " +
                          topology::format_gb(static_cast<double>(host.memory_bytes)) + " RAM";
    }
    return d;
}

StatusOr<topology::Cluster> build_cluster(const PlanArgs& a, int layout_world) {
    const int sources = (!a.cluster.empty()) + (!a.hostfile.empty()) + (a.slurm ? 1 : 0);
    if (sources > 1) {
        return invalid_argument("give only one of --cluster, --hostfile and --slurm");
    }
    if (!a.cluster.empty()) {
        if (!a.gpu_type.empty()) {
            return invalid_argument("--gpu-type goes with --hostfile or --slurm; --cluster names the type itself");
        }
        return topology::parse_cluster_spec(a.cluster);
    }
    const bool in_slurm = topology::process_env()("SLURM_JOB_NODELIST").has_value();
    const bool use_slurm = a.slurm || (a.hostfile.empty() && layout_world == 0 && in_slurm);
    if (a.hostfile.empty() && !use_slurm && layout_world == 0) {
        return invalid_argument(
            "say where to plan: --cluster SPEC (e.g. 2x8xH100-80G), --hostfile FILE, --slurm, "
            "or --layout for this host");
    }
    DS_ASSIGN_OR_RETURN(topology::HostTopology local, topology::discover_host());
    std::string hint;
    std::vector<topology::HostSlots> hosts;
    std::string description;
    if (!a.hostfile.empty()) {
        DS_ASSIGN_OR_RETURN(hosts, topology::load_hostfile(a.hostfile));
        description = "hostfile " + a.hostfile;
    } else if (use_slurm) {
        DS_ASSIGN_OR_RETURN(hosts, topology::hosts_from_slurm(topology::process_env(), &hint));
        description = "Slurm allocation";
    } else {
        hosts.push_back({local.hostname.empty() ? "localhost" : local.hostname, layout_world});
        description = "this host";
    }
    topology::DeviceSpec device;
    if (!a.gpu_type.empty()) {
        DS_ASSIGN_OR_RETURN(device, topology::find_device(a.gpu_type));
    } else if (!hint.empty() && topology::find_device(hint).ok()) {
        device = *topology::find_device(hint);
    } else {
        DS_ASSIGN_OR_RETURN(device, local_device(local, hosts.front().slots));
    }
    size_t total = 0;
    for (const auto& h : hosts) {
        total += static_cast<size_t>(h.slots);
    }
    description +=
        " (" + std::to_string(hosts.size()) + " node(s), " + std::to_string(total) + " x " + device.name + ")";
    DS_ASSIGN_OR_RETURN(topology::Cluster c,
                        topology::cluster_from_hosts(hosts, device, use_slurm ? "slurm" : "hostfile", description));
    if (a.hostfile.empty() && !use_slurm) {
        c.source = "local";
    }
    // Hosts that are this machine get its discovered topology instead of a described one.
    for (auto& n : c.nodes) {
        if (n.host == local.hostname || n.host == "localhost" || n.host == "127.0.0.1") {
            n.topo = local;
        }
    }
    return c;
}

Status run_plan(const PlanArgs& a) {
    DS_ASSIGN_OR_RETURN(model::ModelConfig config, model::ModelConfig::load(a.model));
    topology::PlanOptions o;
    o.model_source = a.model;
    o.dtype = a.dtype;
    o.numerics = a.numerics;
    o.mem_fraction = a.mem_fraction;
    o.min_kv_tokens = a.min_kv_tokens;
    o.kv_budget_bytes = a.kv_budget_mb << 20;
    o.workload = a.workload;
    if (a.objective != "throughput" && a.objective != "latency") {
        return invalid_argument("--objective must be throughput or latency, got \"" + a.objective + "\"");
    }
    o.objective = a.objective == "latency" ? topology::Objective::kLatency : topology::Objective::kThroughput;
    int layout_world = 0;
    if (!a.layout.empty()) {
        DS_ASSIGN_OR_RETURN(topology::LayoutRequest l, topology::parse_layout(a.layout));
        o.layout = l;
        layout_world = l.pp * l.ranks_per_stage;
    }
    DS_ASSIGN_OR_RETURN(topology::Cluster cluster, build_cluster(a, layout_world));
    DS_ASSIGN_OR_RETURN(topology::Plan plan, topology::make_plan(config, cluster, o));
    const std::string text = plan.to_json().dump(2) + "\n";
    if (!a.out.empty()) {
        std::ofstream f(a.out, std::ios::binary | std::ios::trunc);
        if (!f || !(f << text) || !f.flush()) {
            return io_error("cannot write plan to " + a.out);
        }
    }
    if (a.json) {
        std::cout << text;
    } else {
        std::cout << plan.summary();
        if (!a.out.empty()) {
            std::cout << "wrote " << a.out << "\n";
        }
    }
    return ok_status();
}

}  // namespace

void register_plan(CLI::App& app, int* exit_code) {
    auto a = std::make_shared<PlanArgs>();
    auto* cmd = app.add_subcommand("plan", "Partition a model over a cluster and predict its throughput");
    cmd->add_option("--model", a->model, "model directory or config.json (e.g. configs/deepseek-v3-671b.json)")
        ->required();
    cmd->add_option("--cluster", a->cluster,
                    "NxGxTYPE: N nodes of G devices, TYPE one of A100-40G A100-80G H100-80G H800-80G H200-141G, "
                    "or CPU-<RAM>G (G = ranks per node sharing the RAM); GxTYPE = one node");
    cmd->add_option("--hostfile", a->hostfile, "OpenMPI hostfile: 'host slots=N' per line, one rank per slot");
    cmd->add_flag("--slurm", a->slurm, "plan for the current Slurm allocation (automatic inside one)");
    cmd->add_option("--gpu-type", a->gpu_type, "device type of --hostfile / --slurm nodes (default: this host's)");
    cmd->add_option("--layout", a->layout, "fix the layout: pp=P,tp=S[,attn=dp][,ep=S] (tp/dp/ep = ranks per stage)");
    cmd->add_option("--dtype", a->dtype, "auto | fp8 | fp8-weight-only | bf16");
    cmd->add_option("--numerics", a->numerics,
                    "weight matmuls of the ranks: fast (BF16 dot products where the CPU has them; default) or exact "
                    "(float32, the reference)")
        ->check(CLI::IsMember({"exact", "fast"}));
    cmd->add_option("--objective", a->objective, "throughput (default) or latency (batch-1 TPOT)");
    cmd->add_option("--mem-fraction", a->mem_fraction, "share of each device's memory to use (default 0.90)");
    cmd->add_option("--min-kv-tokens", a->min_kv_tokens,
                    "refuse plans whose KV cache holds fewer tokens per sequence (default: prompt + output)");
    cmd->add_option("--kv-budget-mb", a->kv_budget_mb,
                    "KV cache per rank in MiB, written to the plan for the shard job (default: what memory leaves, "
                    "capped at what the workload keeps resident)")
        ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
    cmd->add_option("--prompt-tokens", a->workload.prompt_tokens, "workload input length (default 2000)");
    cmd->add_option("--output-tokens", a->workload.output_tokens, "workload output length (default 1000)");
    cmd->add_option("--max-batch-per-rank", a->workload.max_batch_per_rank, "decode batch cap per rank (default 256)");
    cmd->add_option("--prefill-chunk", a->workload.prefill_tokens_per_rank,
                    "prefill tokens per rank per step (default 4096)");
    cmd->add_flag("--json", a->json, "print the plan JSON instead of the summary");
    cmd->add_option("--out", a->out, "write the plan JSON to this file");
    cmd->callback([a, exit_code] {
        Status s = run_plan(*a);
        if (!s.ok()) {
            std::fprintf(stderr, "error: %s\n", s.to_string().c_str());
            *exit_code = 1;
        }
    });
}

}  // namespace deepshard::cli
