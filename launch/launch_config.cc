// Hostfile, rankfile and environment for a shard job. The RoCE GID index is read from the GID table
// (sysfs) rather than typed by hand: the usual NCCL_IB_GID_INDEX=3 is only right when entry 3
// happens to be the RoCE v2 IPv4-mapped one, which depends on the order addresses were configured.
#include "launch/launch_config.h"

#include "topology/plan_file.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

namespace deepshard::launch {

namespace fs = std::filesystem;

namespace {

std::string read_first_line(const fs::path& p) {
    std::ifstream in(p);
    std::string s;
    if (in) {
        std::getline(in, s);
    }
    while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ' || s.back() == '\0')) {
        s.pop_back();
    }
    return s;
}

std::vector<std::string> sorted_entries(const fs::path& dir) {
    std::vector<std::string> out;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec)) {
        out.push_back(e.path().filename().string());
    }
    std::sort(out.begin(), out.end());
    return out;
}

bool all_digits(const std::string& s) {
    return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// "0-3,8": comma-separated N or N-M (N <= M).
bool valid_cpu_list(const std::string& list) {
    std::stringstream ss(list);
    int parts = 0;
    for (std::string part; std::getline(ss, part, ',');) {
        const auto dash = part.find('-');
        const std::string a = part.substr(0, dash), b = dash == std::string::npos ? a : part.substr(dash + 1);
        if (!all_digits(a) || !all_digits(b) || a.size() > 6 || b.size() > 6 || std::stol(a) > std::stol(b)) {
            return false;
        }
        ++parts;
    }
    return parts > 0 && list.back() != ',';
}

// Every CPU of the list "0-3,8" is in `pus`.
bool cpus_within(const std::string& list, const std::vector<int>& pus) {
    std::stringstream ss(list);
    for (std::string part; std::getline(ss, part, ',');) {
        const auto dash = part.find('-');
        const std::string a = part.substr(0, dash), b = dash == std::string::npos ? a : part.substr(dash + 1);
        if (!all_digits(a) || !all_digits(b)) {
            return false;
        }
        for (long c = std::stol(a); c <= std::stol(b); ++c) {
            if (std::find(pus.begin(), pus.end(), static_cast<int>(c)) == pus.end()) {
                return false;
            }
        }
    }
    return true;
}

}  // namespace

StatusOr<PlanRanks> parse_plan_ranks(const std::string& plan_text,
                                     const std::string& source,
                                     const std::string& default_host) {
    DS_ASSIGN_OR_RETURN(topology::PlanFile file, topology::PlanFile::from_json(plan_text, source));
    PlanRanks p;
    p.world_size = file.world_size;
    p.ranks.resize(static_cast<size_t>(p.world_size));
    for (int r = 0; r < p.world_size; ++r) {
        p.ranks[static_cast<size_t>(r)].rank = r;
        p.ranks[static_cast<size_t>(r)].host = default_host;
    }
    if (!file.ranks.empty() && static_cast<int>(file.ranks.size()) != p.world_size) {
        return invalid_argument("plan " + source + ": field 'ranks' must be an array of world_size (" +
                                std::to_string(p.world_size) + ") entries");
    }
    for (const auto& e : file.ranks) {
        const std::string where = "plan " + source + ": rank " + std::to_string(e.rank);
        RankSlot& s = p.ranks[static_cast<size_t>(e.rank)];
        if (!e.host.empty()) {
            s.host = e.host;
        }
        if (s.host.find_first_of(" \t=") != std::string::npos) {
            return invalid_argument(where + ": host '" + s.host + "' cannot go into a hostfile");
        }
        s.numa = e.numa;
        s.gpu = e.gpu;
        s.cpus = e.cpus;
        s.nic = e.nic;
        if (!s.cpus.empty() && !valid_cpu_list(s.cpus)) {
            return invalid_argument(where + ": cpus '" + s.cpus + "' is not a CPU list like 0-3,8");
        }
        p.gpu = p.gpu || s.gpu >= 0;
    }
    for (const auto& r : p.ranks) {
        auto it = std::find_if(p.hosts.begin(), p.hosts.end(), [&](const HostSlots& h) { return h.host == r.host; });
        if (it == p.hosts.end()) {
            p.hosts.push_back({r.host, 1});
        } else {
            it->slots++;
        }
    }
    return p;
}

int fill_default_cpus(PlanRanks* plan, const std::vector<int>& pus) {
    if (pus.empty()) {
        return 0;
    }
    int filled = 0;
    for (auto& r : plan->ranks) {
        if (!r.cpus.empty() && !cpus_within(r.cpus, pus)) {
            r.cpus.clear();
        }
    }
    std::map<std::string, std::vector<RankSlot*>> by_host;
    for (auto& r : plan->ranks) {
        by_host[r.host].push_back(&r);
    }
    for (auto& [host, ranks] : by_host) {
        const size_t n = ranks.size();
        for (size_t i = 0; i < n; ++i) {
            if (!ranks[i]->cpus.empty()) {
                continue;
            }
            std::vector<int> mine;
            if (n <= pus.size()) {
                const size_t lo = i * pus.size() / n;
                const size_t hi = (i + 1) * pus.size() / n;
                mine.assign(pus.begin() + static_cast<std::ptrdiff_t>(lo),
                            pus.begin() + static_cast<std::ptrdiff_t>(hi));
            } else {
                mine.push_back(pus[i % pus.size()]);
            }
            ranks[i]->cpus = topology::cpu_list_string(mine);
            ++filled;
        }
    }
    return filled;
}

std::string hostfile_text(const PlanRanks& plan) {
    std::string out;
    for (const auto& h : plan.hosts) {
        out += h.host + " slots=" + std::to_string(h.slots) + "\n";
    }
    return out;
}

std::string rankfile_text(const PlanRanks& plan) {
    std::string out;
    for (const auto& r : plan.ranks) {
        if (r.cpus.empty()) {
            return "";
        }
        out += "rank " + std::to_string(r.rank) + "=" + r.host + " slot=" + r.cpus + "\n";
    }
    return out;
}

std::vector<topology::RdmaDevice> read_rdma_sysfs(const std::string& root) {
    std::vector<topology::RdmaDevice> out;
    const fs::path base = fs::path(root) / "class" / "infiniband";
    for (const std::string& name : sorted_entries(base)) {
        topology::RdmaDevice d;
        d.name = name;
        const std::string numa = read_first_line(base / name / "device" / "numa_node");
        d.numa_node = all_digits(numa) ? std::stoi(numa) : -1;
        std::vector<std::string> ports = sorted_entries(base / name / "ports");
        for (const std::string& pn : ports) {
            if (!all_digits(pn)) {
                continue;
            }
            const fs::path pdir = base / name / "ports" / pn;
            topology::RdmaPort port;
            port.port = std::stoi(pn);
            // "4: ACTIVE" -> "ACTIVE"
            std::string state = read_first_line(pdir / "state");
            if (auto colon = state.find(':'); colon != std::string::npos) {
                state = state.substr(colon + 1);
                state.erase(0, state.find_first_not_of(' '));
            }
            port.state = state;
            port.link_layer = read_first_line(pdir / "link_layer");
            for (const std::string& gi : sorted_entries(pdir / "gids")) {
                if (!all_digits(gi)) {
                    continue;
                }
                topology::GidEntry g;
                g.index = std::stoi(gi);
                g.gid = read_first_line(pdir / "gids" / gi);
                if (g.gid.empty() || g.gid == "0000:0000:0000:0000:0000:0000:0000:0000") {
                    continue;
                }
                const std::string type = read_first_line(pdir / "gid_attrs" / "types" / gi);
                g.type = type == "RoCE v2"                                       ? "RoCE v2"
                         : type == "IB/RoCE v1" && port.link_layer == "Ethernet" ? "RoCE v1"
                                                                                 : "IB";
                g.netdev = read_first_line(pdir / "gid_attrs" / "ndevs" / gi);
                port.gids.push_back(std::move(g));
            }
            std::sort(port.gids.begin(), port.gids.end(),
                      [](const topology::GidEntry& a, const topology::GidEntry& b) { return a.index < b.index; });
            port.roce_gid_index = port.link_layer == "Ethernet" ? choose_roce_gid_index(port.gids) : -1;
            d.ports.push_back(std::move(port));
        }
        out.push_back(std::move(d));
    }
    return out;
}

std::vector<NetInterface> read_interfaces_sysfs(const std::string& root) {
    std::vector<NetInterface> out;
    const fs::path base = fs::path(root) / "class" / "net";
    for (const std::string& name : sorted_entries(base)) {
        NetInterface n;
        n.name = name;
        const std::string oper = read_first_line(base / name / "operstate");
        n.loopback = read_first_line(base / name / "type") == "772" || name == "lo";
        // Loopback and some virtual links (veth in a namespace, tun) report "unknown" while working.
        n.up = oper == "up" || (oper == "unknown" && read_first_line(base / name / "carrier") == "1");
        out.push_back(std::move(n));
    }
    return out;
}

std::string default_route_interface(const std::string& route_file) {
    std::ifstream in(route_file);
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
        std::istringstream ss(line);
        std::string iface, dest, gw, flags;
        if (ss >> iface >> dest >> gw >> flags && dest == "00000000") {
            return iface;
        }
    }
    return "";
}

StatusOr<NetworkChoice> choose_network(const NetworkInputs& in) {
    NetworkChoice c;
    auto find = [&](const std::string& name) -> const NetInterface* {
        for (const auto& i : in.interfaces) {
            if (i.name == name) {
                return &i;
            }
        }
        return nullptr;
    };
    // RDMA ports that can carry traffic, and the RoCE netdev they sit on.
    std::string roce_netdev;
    for (const auto& d : in.rdma) {
        for (const auto& p : d.ports) {
            if (p.state != "ACTIVE") {
                continue;
            }
            c.hcas.push_back(d.name + ":" + std::to_string(p.port));
            if (p.link_layer == "Ethernet") {
                c.roce = true;
                if (roce_netdev.empty()) {
                    for (const auto& g : p.gids) {
                        if (g.index == p.roce_gid_index && !g.netdev.empty()) {
                            roce_netdev = g.netdev;
                        }
                    }
                }
            }
        }
    }
    if (!in.iface_override.empty()) {
        if (!find(in.iface_override)) {
            std::string names;
            for (const auto& i : in.interfaces) {
                names += (names.empty() ? "" : ", ") + i.name;
            }
            return invalid_argument("--iface " + in.iface_override + ": no such network interface (have: " + names +
                                    ")");
        }
        c.iface = in.iface_override;
        c.iface_reason = "given with --iface";
    } else if (in.single_host) {
        const NetInterface* lo = nullptr;
        for (const auto& i : in.interfaces) {
            if (i.loopback && !lo) {
                lo = &i;
            }
        }
        c.iface = lo ? lo->name : "lo";
        c.iface_reason = "every rank is on this host: loopback";
    } else if (!roce_netdev.empty() && find(roce_netdev)) {
        c.iface = roce_netdev;
        c.iface_reason = "the netdev of the active RoCE port";
    } else if (const NetInterface* r = find(in.default_route_iface); r && r->up && !r->loopback) {
        c.iface = r->name;
        c.iface_reason = "the default route's interface";
    } else {
        for (const auto& i : in.interfaces) {
            if (i.up && !i.loopback && !i.ipv4.empty()) {
                c.iface = i.name;
                c.iface_reason = "the first up interface with an IPv4 address";
                break;
            }
        }
        if (c.iface.empty()) {
            c.iface = "lo";
            c.iface_reason = "no other usable interface found: loopback (multi-host jobs will fail; pass --iface)";
        }
    }
    if (const NetInterface* i = find(c.iface)) {
        c.iface_ipv4 = i->ipv4;
    }
    if (c.iface == "lo" && c.iface_ipv4.empty()) {
        c.iface_ipv4 = "127.0.0.1";
    }
    // GID index of the first active RoCE port, preferring the GID on the chosen interface.
    for (const auto& d : in.rdma) {
        for (const auto& p : d.ports) {
            if (p.state != "ACTIVE" || p.link_layer != "Ethernet" || c.gid_index >= 0) {
                continue;
            }
            c.gid_index = choose_roce_gid_index(p.gids, c.iface);
            if (c.gid_index >= 0) {
                std::string gid;
                for (const auto& g : p.gids) {
                    gid = g.index == c.gid_index
                              ? g.gid + " (" + g.type + (g.netdev.empty() ? "" : ", " + g.netdev) + ")"
                              : gid;
                }
                c.gid_reason =
                    d.name + " port " + std::to_string(p.port) + " GID[" + std::to_string(c.gid_index) + "] = " + gid;
            } else {
                c.gid_reason = d.name + " port " + std::to_string(p.port) + ": no RoCE v2 GID in the table";
            }
        }
    }
    return c;
}

LaunchEnv make_launch_env(const NetworkChoice& net, bool single_host, bool gpu) {
    LaunchEnv e;
    e.notes.push_back("network interface " + net.iface + ": " + net.iface_reason);
    // MPI (control, host-memory collectives): TCP on the chosen interface; shared memory inside a host.
    e.mca.emplace_back("btl", "self,vader,tcp");
    e.mca.emplace_back("btl_tcp_if_include", net.iface);
    e.mca.emplace_back("oob_tcp_if_include", net.iface);
    e.env.emplace_back("NCCL_SOCKET_IFNAME", net.iface);
    if (net.hcas.empty()) {
        e.notes.push_back("no active RDMA port: UCX and NCCL use TCP/shared memory");
        if (!single_host) {
            e.env.emplace_back("UCX_NET_DEVICES", net.iface);
        }
        if (gpu) {
            e.env.emplace_back("NCCL_IB_DISABLE", "1");
        }
        return e;
    }
    std::string hcas, ucx = single_host ? "" : net.iface;
    for (const auto& h : net.hcas) {
        hcas += (hcas.empty() ? "" : ",") + h;
        ucx += (ucx.empty() ? "" : ",") + h;
    }
    e.notes.push_back("RDMA ports: " + hcas + (net.roce ? " (RoCE)" : " (InfiniBand)"));
    e.env.emplace_back("NCCL_IB_HCA", hcas);
    e.env.emplace_back("UCX_NET_DEVICES", ucx);
    if (net.roce) {
        if (net.gid_index >= 0) {
            e.notes.push_back("RoCE GID index " + std::to_string(net.gid_index) + ": " + net.gid_reason);
            e.env.emplace_back("NCCL_IB_GID_INDEX", std::to_string(net.gid_index));
            e.env.emplace_back("UCX_IB_GID_INDEX", std::to_string(net.gid_index));
        } else {
            e.notes.push_back("warning: " + net.gid_reason + "; NCCL/UCX pick their default GID");
        }
    }
    return e;
}

std::string shell_quote(const std::string& s) {
    if (!s.empty() && s.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.,:/=@+%") ==
                          std::string::npos) {
        return s;
    }
    std::string out = "'";
    for (char c : s) {
        out += c == '\'' ? std::string("'\\''") : std::string(1, c);
    }
    return out + "'";
}

std::string launch_env_text(const LaunchEnv& env, const std::vector<std::string>& commands) {
    std::string out = "# Written by deepshard-launch: the environment of the shard job.\n";
    for (const auto& n : env.notes) {
        out += "# " + n + "\n";
    }
    for (const auto& [k, v] : env.mca) {
        out += "export OMPI_MCA_" + k + "=" + shell_quote(v) + "\n";
    }
    for (const auto& [k, v] : env.env) {
        out += "export " + k + "=" + shell_quote(v) + "\n";
    }
    for (const auto& c : commands) {
        out += "# " + c + "\n";
    }
    return out;
}

}  // namespace deepshard::launch
