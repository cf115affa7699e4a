// Discovers this host (`deepshard topo`): hwloc for sockets, NUMA nodes, cores and PCI devices with
// their NUMA affinity and PCI distance; libibverbs for RDMA devices, ports, link layer and GID
// tables; the CUDA runtime, loaded with dlopen, for GPUs. Each source that is missing (no hwloc I/O
// support, no RDMA devices, no libcudart or no driver) gives an empty list and a note saying why,
// never an error: a CPU-only host is a valid answer. Lives in its own component
// (deepshard::topology_discovery) so that the planner core links none of these libraries.
#pragma once

#include "common/status.h"
#include "topology/host.h"

namespace deepshard::topology {

struct DiscoveryOptions {
    bool cuda = true;  // try libcudart
    bool rdma = true;  // try libibverbs
};

StatusOr<HostTopology> discover_host(const DiscoveryOptions& options = {});

}  // namespace deepshard::topology
