// A cluster: the nodes a shard job runs on, how many ranks each holds, and what device each rank
// drives. Described three ways, all landing in the same struct:
//   --cluster SPEC   "NxGxTYPE" = N nodes of G devices of TYPE (e.g. 2x8xH100-80G, 4x8xA100-80G);
//                    "GxTYPE" = one node (8xH200-141G). TYPE is a hardware_table() device or a
//                    CPU-only node "CPU-<RAM>G", where G is then the number of ranks on the node
//                    sharing its RAM (2x2xCPU-64G = 2 hosts with 64 GB each, 2 ranks per host).
//   --hostfile FILE  OpenMPI hostfile lines "host slots=N" (one rank per slot); the device type is
//                    given separately (default: what this host has).
//   Slurm            SLURM_JOB_NODELIST (bracket ranges, node[01-03,07]) with the ranks per node from
//                    SLURM_NTASKS_PER_NODE / SLURM_TASKS_PER_NODE / SLURM_GPUS_ON_NODE / ...
// Nodes named by a spec get a synthesized HGX-like HostTopology (describe_node) so that every rank
// can still be bound to a GPU, NUMA node and NIC.
#pragma once

#include <algorithm>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "topology/hardware.h"
#include "topology/host.h"

namespace deepshard::topology {

struct Node {
    std::string host;
    int slots = 1;      // ranks on this node
    DeviceSpec device;  // what each rank drives (a GPU), or the node's CPUs
    int gpus = 0;       // GPUs on the node; 0 for CPU-only nodes
    HostTopology topo;

    // Memory one rank may use: a GPU's HBM, or the node RAM shared by its ranks.
    int64_t rank_memory_bytes() const {
        return device.is_gpu() ? device.memory_bytes : device.memory_bytes / std::max(slots, 1);
    }
};

struct Cluster {
    std::vector<Node> nodes;
    std::string description;  // "2x8xH100-80G", "hostfile hosts.txt: 3 nodes", ...
    std::string source;       // "spec", "hostfile", "slurm", "local"

    int world_size() const;
    bool homogeneous() const;  // same device and slots on every node
    const DeviceSpec& device() const { return nodes.front().device; }
    int ranks_per_node() const { return nodes.empty() ? 0 : nodes.front().slots; }
};

struct HostSlots {
    std::string host;
    int slots = 1;
};

StatusOr<Cluster> parse_cluster_spec(std::string_view spec);

// OpenMPI hostfile: "host [slots=N] [max_slots=M]", '#' comments, blank lines; a host listed twice
// adds its slots. `source` names the file in errors (which carry the line number).
StatusOr<std::vector<HostSlots>> parse_hostfile(std::string_view text, const std::string& source);
StatusOr<std::vector<HostSlots>> load_hostfile(const std::string& path);

// Slurm hostlist expression: "node[01-03,07],login1,rack[1-2]-gpu[1-2]" -> every host, in order,
// zero padding kept from the lower bound of each range.
StatusOr<std::vector<std::string>> expand_nodelist(std::string_view list);
// Slurm's compressed per-node counts: "8(x2),4" -> {8, 8, 4}; must describe exactly `nodes` nodes.
StatusOr<std::vector<int>> expand_tasks_per_node(std::string_view counts, size_t nodes);

// Reads the allocation from the Slurm environment. `gpu_type_hint` receives the GPU type named in
// SLURM_GPUS_PER_NODE / SLURM_JOB_GPUS-style "type:count" values ("h100"), if any.
using EnvLookup = std::function<std::optional<std::string>(const std::string&)>;
StatusOr<std::vector<HostSlots>> hosts_from_slurm(const EnvLookup& env, std::string* gpu_type_hint = nullptr);
EnvLookup process_env();

// One node per entry; GPU devices get one GPU per slot.
StatusOr<Cluster> cluster_from_hosts(const std::vector<HostSlots>& hosts,
                                     const DeviceSpec& device,
                                     const std::string& source,
                                     const std::string& description);

// An HGX-like node of `gpus` GPUs (two sockets, GPUs split over two NUMA nodes, one NIC per GPU
// behind the same PCIe switch), or a two-socket CPU node when gpus == 0.
HostTopology describe_node(const std::string& host, const DeviceSpec& device, int gpus);

nlohmann::json to_json(const Cluster& c);

}  // namespace deepshard::topology
