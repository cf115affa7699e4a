// What deepshard-launch writes before it starts anything: the OpenMPI hostfile and rankfile (CPU
// binding per rank, from the plan's rank -> host/NUMA/cores binding) and the MPI/UCX/NCCL
// environment (network interface, RDMA devices, RoCE GID index). Everything here is a pure function
// of its inputs (plan text, a sysfs tree, /proc/net/route, the interface list), so tests feed fake
// trees; launcher.cc gathers the real ones.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "common/status.h"
#include "topology/host.h"

namespace deepshard::launch {

// One rank as launching needs it (a subset of the plan's "ranks" entries).
struct RankSlot {
    int rank = 0;
    std::string host;
    int numa = -1;
    int gpu = -1;
    std::string cpus;  // OS CPU list ("0-13"); "" = unknown (defaults fill it in)
    std::string nic;
};

struct HostSlots {
    std::string host;
    int slots = 0;
};

struct PlanRanks {
    int world_size = 0;
    bool gpu = false;              // some rank drives a GPU
    std::vector<RankSlot> ranks;   // index == rank
    std::vector<HostSlots> hosts;  // first-appearance order (rank order)
    bool single_host() const { return hosts.size() <= 1; }
};

// Reads "world_size" and "ranks" from plan JSON text (`source` names the file in errors). A plan
// without "ranks" puts every rank on `default_host` with no binding.
StatusOr<PlanRanks> parse_plan_ranks(const std::string& plan_text,
                                     const std::string& source,
                                     const std::string& default_host);

// Ranks with no CPU list, or one naming CPUs that `pus` (the CPUs of a host shaped like this one)
// lacks (a plan made for a described node type, e.g. from a hostfile, guesses its CPU ids), get an
// even share of `pus` among the ranks of their host; with more ranks than CPUs they share CPUs
// round-robin. Returns how many ranks got a default list. No-op if `pus` is empty.
int fill_default_cpus(PlanRanks* plan, const std::vector<int>& pus);

// "host slots=N" per host.
std::string hostfile_text(const PlanRanks& plan);
// "rank R=HOST slot=CPUS" per rank, physical (OS) CPU ids: use with
// `--mca rmaps_rank_file_physical 1`. "" when some rank has no CPU list (then: no binding).
std::string rankfile_text(const PlanRanks& plan);

// RDMA devices from a sysfs tree (`root`/class/infiniband/DEV/ports/P/{state,link_layer,gids/I,
// gid_attrs/types/I,gid_attrs/ndevs/I}, DEV/device/numa_node). A missing tree is no devices, not an
// error; unreadable GID entries (the kernel answers EINVAL for unused ones) are skipped. Each
// port's roce_gid_index is set with choose_roce_gid_index.
std::vector<topology::RdmaDevice> read_rdma_sysfs(const std::string& root);

// The RoCE GID choice is topology's (discovery uses the same rule for what libibverbs reports).
using topology::choose_roce_gid_index;

struct NetInterface {
    std::string name;
    bool up = false;
    bool loopback = false;
    std::string ipv4;  // first IPv4 address, "" if none
};

// Interfaces as `root`/class/net shows them (operstate, type 772 = loopback); addresses are not in
// sysfs, callers fill ipv4 from getifaddrs.
std::vector<NetInterface> read_interfaces_sysfs(const std::string& root);
// The interface of the default route in a /proc/net/route file, "" if none.
std::string default_route_interface(const std::string& route_file);

struct NetworkInputs {
    std::string iface_override;  // --iface
    bool single_host = true;
    std::vector<topology::RdmaDevice> rdma;
    std::vector<NetInterface> interfaces;
    std::string default_route_iface;
};

struct NetworkChoice {
    std::string iface;
    std::string iface_reason;
    std::string iface_ipv4;
    std::vector<std::string> hcas;  // active RDMA ports "mlx5_0:1"
    bool roce = false;              // the HCAs are Ethernet (RoCE) ports
    int gid_index = -1;
    std::string gid_reason;
};

// Interface: --iface; else lo for a single-host job; else the netdev of an active RoCE port; else the
// default route's; else the first up, non-loopback interface with an IPv4 address; else lo.
// Error when --iface names an interface that does not exist.
StatusOr<NetworkChoice> choose_network(const NetworkInputs& in);

struct LaunchEnv {
    std::vector<std::pair<std::string, std::string>> mca;  // mpirun --mca NAME VALUE
    std::vector<std::pair<std::string, std::string>> env;  // set for the job and forwarded (-x NAME)
    std::vector<std::string> notes;                        // why, for launch.env and the log
};

LaunchEnv make_launch_env(const NetworkChoice& net, bool single_host, bool gpu);

// launch.env: `export NAME=VALUE` lines (shell-quoted) plus the notes and `commands` as comments.
std::string launch_env_text(const LaunchEnv& env, const std::vector<std::string>& commands);

// Shell-quotes one word ('...' when needed).
std::string shell_quote(const std::string& s);

}  // namespace deepshard::launch
