// `deepshard topo`: what this host offers the planner — sockets, NUMA nodes, cores, PCI devices
// (GPUs, NICs) with NUMA affinity and PCI distance, RDMA ports and GID tables, CUDA GPUs.
// Text by default, --json for the machine-readable form. Missing sources report zero devices.
#include <cstdio>
#include <iostream>

#include "cli/commands.h"
#include "topology/discovery.h"

namespace deepshard::cli {

namespace {

struct TopoArgs {
    bool json = false;
    bool no_cuda = false;
    bool no_rdma = false;
};

Status run_topo(const TopoArgs& a) {
    topology::DiscoveryOptions o;
    o.cuda = !a.no_cuda;
    o.rdma = !a.no_rdma;
    DS_ASSIGN_OR_RETURN(topology::HostTopology host, topology::discover_host(o));
    if (a.json) {
        std::cout << topology::to_json(host).dump(2) << "\n";
    } else {
        std::cout << topology::to_text(host);
    }
    return ok_status();
}

}  // namespace

void register_topo(CLI::App& app, int* exit_code) {
    auto a = std::make_shared<TopoArgs>();
    auto* cmd = app.add_subcommand("topo", "Show this host's topology: CPUs, NUMA, PCI, GPUs, RDMA devices");
    cmd->add_flag("--json", a->json, "print JSON");
    cmd->add_flag("--no-cuda", a->no_cuda, "do not load the CUDA runtime");
    cmd->add_flag("--no-rdma", a->no_rdma, "do not query libibverbs");
    cmd->callback([a, exit_code] {
        Status s = run_topo(*a);
        if (!s.ok()) {
            std::fprintf(stderr, "error: %s\n", s.to_string().c_str());
            *exit_code = 1;
        }
    });
}

}  // namespace deepshard::cli
