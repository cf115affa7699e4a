// `deepshard topo`: what this host offers the planner — sockets, NUMA nodes, cores, PCI devices
// (GPUs, NICs) with NUMA affinity and PCI distance, RDMA ports and GID tables, CUDA GPUs.
// Text by default, --json for the machine-readable form. Missing sources report zero devices.
#include <cstdio>
#include <iostream>

#include "cli/commands.h"
#include "kernels/kernels.h"
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
    // The ISA the CPU kernels run here (amx > avx512bf16 > avx512 > avx2 > scalar), and what the CPU
    // offers; they differ where DS_ISA forces a lower one.
    const char* isa = kernels::isa_name(kernels::active_isa());
    const char* detected = kernels::isa_name(kernels::detected_isa());
    if (a.json) {
        nlohmann::json j = topology::to_json(host);
        j["cpu_kernels"] = {{"isa", isa}, {"detected_isa", detected}, {"fast_is_exact", kernels::fast_is_exact()}};
        std::cout << j.dump(2) << "\n";
    } else {
        std::cout << topology::to_text(host);
        std::cout << "CPU kernels: isa " << isa << " (CPU offers " << detected << ")"
                  << (kernels::fast_is_exact() ? "; numerics fast = exact here (no BF16 dot products)" : "") << "\n";
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
