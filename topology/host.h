// What one host looks like: sockets, NUMA nodes, cores, PCI devices (GPUs, NICs) with their NUMA
// affinity and PCI distance, RDMA devices with their ports and GID tables. Filled by discovery
// (topology/discovery.h, hwloc + libibverbs + CUDA runtime) or synthesized for a named node type
// (cluster.h); the planner reads it to bind ranks. Plain data, no dependencies.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace deepshard::topology {

struct NumaNode {
    int os_index = 0;
    int64_t memory_bytes = 0;
    std::vector<int> cpus;  // OS indices of the processing units (hardware threads)
};

struct PciDevice {
    std::string bus_id;      // "0000:3b:00.0"
    std::string kind;        // "gpu", "nic", "storage", "other"
    std::string class_name;  // "Ethernet", "InfiniBand", "3D", ...
    int vendor_id = 0;
    int device_id = 0;
    int numa_node = -1;                   // -1: unknown / not attached to one node
    std::vector<std::string> os_devices;  // "eth0", "mlx5_0", "cuda0", ...
};

struct GidEntry {
    int index = 0;
    std::string gid;     // "fe80:0000:...:0001"
    std::string type;    // "IB", "RoCE v1", "RoCE v2"
    std::string netdev;  // network interface the GID belongs to (RoCE)
};

struct RdmaPort {
    int port = 1;
    std::string state;       // "ACTIVE", "DOWN", ...
    std::string link_layer;  // "InfiniBand" or "Ethernet" (RoCE)
    int active_mtu = 0;
    double rate_gbps = 0;
    std::vector<GidEntry> gids;
    int roce_gid_index = -1;  // the RoCE v2 IPv4 GID to give NCCL_IB_GID_INDEX (-1: none / IB)
};

struct RdmaDevice {
    std::string name;  // "mlx5_0"
    std::string pci_bus_id;
    int numa_node = -1;
    std::vector<RdmaPort> ports;
};

struct GpuDevice {
    int index = 0;  // CUDA ordinal
    std::string name;
    std::string pci_bus_id;
    int numa_node = -1;
    int64_t memory_bytes = 0;
    std::string arch;         // "sm_90"
    std::string nearest_nic;  // RDMA device (or netdev) closest on the PCI tree, "" if none
    int nic_distance = -1;    // PCI hops to it (lower is closer); -1 unknown
};

struct HostTopology {
    std::string hostname;
    int sockets = 0;
    int cores = 0;
    int pus = 0;
    int64_t memory_bytes = 0;
    int64_t available_memory_bytes = 0;  // RAM free for new allocations now (MemAvailable); 0 = unknown
    std::vector<NumaNode> numa_nodes;
    std::vector<PciDevice> pci;
    std::vector<GpuDevice> gpus;
    std::vector<RdmaDevice> rdma;
    std::string gpu_source;          // how the GPUs were found, or why none were
    std::string rdma_source;         // same for RDMA devices
    std::vector<std::string> notes;  // anything partial (e.g. "hwloc: no I/O discovery")
    bool synthesized = false;        // described from a node type, not discovered

    // NUMA node of CPU `pu`, -1 if unknown.
    int numa_of_cpu(int pu) const;
    // The closest RDMA device to a GPU: the one discovery recorded, else one on the same NUMA node,
    // else the first active one; "" when the host has none.
    std::string nic_for_gpu(int gpu) const;
    // The first RDMA device on NUMA node `numa`, else the first one; "" when none.
    std::string nic_for_numa(int numa) const;
};

nlohmann::json to_json(const HostTopology& t);
std::string to_text(const HostTopology& t);
// "0-3,8,10-11" for a sorted list of CPU ids.
std::string cpu_list_string(const std::vector<int>& cpus);

// The GID index NCCL_IB_GID_INDEX / UCX_IB_GID_INDEX want: a RoCE v2 entry whose GID is an
// IPv4-mapped address (::ffff:a.b.c.d), on `netdev` when given and present; else any RoCE v2
// IPv4-mapped one; else any RoCE v2 that is not link-local; -1 when there is none (InfiniBand).
// Ties go to the lowest index. GIDs are written as 8 groups of 4 hex digits (sysfs form).
int choose_roce_gid_index(const std::vector<GidEntry>& gids, const std::string& netdev = "");

}  // namespace deepshard::topology
