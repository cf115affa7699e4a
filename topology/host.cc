#include "topology/host.h"

#include <algorithm>
#include <cstdio>
#include <sstream>

#include "topology/hardware.h"

namespace deepshard::topology {

int HostTopology::numa_of_cpu(int pu) const {
    for (const auto& n : numa_nodes) {
        if (std::find(n.cpus.begin(), n.cpus.end(), pu) != n.cpus.end()) {
            return n.os_index;
        }
    }
    return -1;
}

std::string HostTopology::nic_for_gpu(int gpu) const {
    for (const auto& g : gpus) {
        if (g.index == gpu) {
            if (!g.nearest_nic.empty()) {
                return g.nearest_nic;
            }
            return nic_for_numa(g.numa_node);
        }
    }
    return nic_for_numa(-1);
}

std::string HostTopology::nic_for_numa(int numa) const {
    for (const auto& d : rdma) {
        if (numa >= 0 && d.numa_node == numa) {
            return d.name;
        }
    }
    return rdma.empty() ? std::string() : rdma.front().name;
}

int choose_roce_gid_index(const std::vector<GidEntry>& gids, const std::string& netdev) {
    const auto ipv4_mapped = [](const std::string& gid) { return gid.rfind("0000:0000:0000:0000:0000:ffff:", 0) == 0; };
    // Lower score is better; -1 = not usable.
    auto score = [&](const GidEntry& g) {
        if (g.type != "RoCE v2") {
            return -1;
        }
        const bool v4 = ipv4_mapped(g.gid);
        if (v4 && !netdev.empty() && g.netdev == netdev) {
            return 0;
        }
        if (v4) {
            return 1;
        }
        if (g.gid.rfind("fe80:", 0) != 0) {
            return 2;
        }
        return -1;
    };
    int best = -1, best_score = 99;
    for (const auto& g : gids) {
        const int s = score(g);
        if (s >= 0 && (s < best_score || (s == best_score && g.index < best))) {
            best = g.index;
            best_score = s;
        }
    }
    return best;
}

std::string cpu_list_string(const std::vector<int>& cpus) {
    std::string out;
    for (size_t i = 0; i < cpus.size();) {
        size_t j = i;
        while (j + 1 < cpus.size() && cpus[j + 1] == cpus[j] + 1) {
            ++j;
        }
        out += (out.empty() ? "" : ",") + std::to_string(cpus[i]);
        if (j > i) {
            out += "-" + std::to_string(cpus[j]);
        }
        i = j + 1;
    }
    return out;
}

nlohmann::json to_json(const HostTopology& t) {
    nlohmann::json j;
    j["hostname"] = t.hostname;
    j["synthesized"] = t.synthesized;
    j["sockets"] = t.sockets;
    j["cores"] = t.cores;
    j["pus"] = t.pus;
    j["memory_bytes"] = t.memory_bytes;
    j["available_memory_bytes"] = t.available_memory_bytes;
    j["numa_nodes"] = nlohmann::json::array();
    for (const auto& n : t.numa_nodes) {
        j["numa_nodes"].push_back({{"os_index", n.os_index},
                                   {"memory_bytes", n.memory_bytes},
                                   {"cpus", cpu_list_string(n.cpus)},
                                   {"num_cpus", n.cpus.size()}});
    }
    j["pci"] = nlohmann::json::array();
    for (const auto& p : t.pci) {
        char ids[16];
        std::snprintf(ids, sizeof(ids), "%04x:%04x", p.vendor_id, p.device_id);
        j["pci"].push_back({{"bus_id", p.bus_id},
                            {"kind", p.kind},
                            {"class", p.class_name},
                            {"ids", ids},
                            {"numa_node", p.numa_node},
                            {"os_devices", p.os_devices}});
    }
    j["gpus"] = nlohmann::json::array();
    for (const auto& g : t.gpus) {
        j["gpus"].push_back({{"index", g.index},
                             {"name", g.name},
                             {"pci_bus_id", g.pci_bus_id},
                             {"numa_node", g.numa_node},
                             {"memory_bytes", g.memory_bytes},
                             {"arch", g.arch},
                             {"nearest_nic", g.nearest_nic},
                             {"nic_pci_distance", g.nic_distance}});
    }
    j["gpu_source"] = t.gpu_source;
    j["rdma"] = nlohmann::json::array();
    for (const auto& d : t.rdma) {
        nlohmann::json ports = nlohmann::json::array();
        for (const auto& p : d.ports) {
            nlohmann::json gids = nlohmann::json::array();
            for (const auto& g : p.gids) {
                gids.push_back({{"index", g.index}, {"gid", g.gid}, {"type", g.type}, {"netdev", g.netdev}});
            }
            ports.push_back({{"port", p.port},
                             {"state", p.state},
                             {"link_layer", p.link_layer},
                             {"active_mtu", p.active_mtu},
                             {"rate_gbps", p.rate_gbps},
                             {"roce_gid_index", p.roce_gid_index},
                             {"gids", gids}});
        }
        j["rdma"].push_back(
            {{"name", d.name}, {"pci_bus_id", d.pci_bus_id}, {"numa_node", d.numa_node}, {"ports", ports}});
    }
    j["rdma_source"] = t.rdma_source;
    j["notes"] = t.notes;
    return j;
}

std::string to_text(const HostTopology& t) {
    std::ostringstream o;
    o << "host " << t.hostname << (t.synthesized ? " (described, not discovered)" : "") << "\n";
    o << "  " << t.sockets << " socket(s), " << t.numa_nodes.size() << " NUMA node(s), " << t.cores << " cores, "
      << t.pus << " hardware threads, " << format_gb(static_cast<double>(t.memory_bytes)) << " RAM\n";
    for (const auto& n : t.numa_nodes) {
        o << "  NUMA " << n.os_index << ": " << format_gb(static_cast<double>(n.memory_bytes)) << ", cpus "
          << cpu_list_string(n.cpus) << "\n";
    }
    if (!t.pci.empty()) {
        o << "  PCI devices:\n";
        for (const auto& p : t.pci) {
            o << "    " << p.bus_id << "  " << p.kind << " (" << p.class_name << ")";
            if (p.numa_node >= 0) {
                o << "  NUMA " << p.numa_node;
            }
            for (const auto& d : p.os_devices) {
                o << "  " << d;
            }
            o << "\n";
        }
    }
    o << "  GPUs: " << t.gpus.size() << " (" << t.gpu_source << ")\n";
    for (const auto& g : t.gpus) {
        o << "    cuda" << g.index << "  " << g.name << "  " << g.arch << "  "
          << format_gb(static_cast<double>(g.memory_bytes)) << "  " << g.pci_bus_id << "  NUMA " << g.numa_node;
        if (!g.nearest_nic.empty()) {
            o << "  nearest NIC " << g.nearest_nic << " (" << g.nic_distance << " PCI hops)";
        }
        o << "\n";
    }
    o << "  RDMA devices: " << t.rdma.size() << " (" << t.rdma_source << ")\n";
    for (const auto& d : t.rdma) {
        o << "    " << d.name << "  " << d.pci_bus_id << "  NUMA " << d.numa_node << "\n";
        for (const auto& p : d.ports) {
            o << "      port " << p.port << ": " << p.state << ", " << p.link_layer << ", " << p.rate_gbps
              << " Gb/s, MTU " << p.active_mtu << ", " << p.gids.size() << " GIDs";
            if (p.roce_gid_index >= 0) {
                o << ", RoCE v2 GID index " << p.roce_gid_index;
            }
            o << "\n";
        }
    }
    for (const auto& n : t.notes) {
        o << "  note: " << n << "\n";
    }
    return o.str();
}

}  // namespace deepshard::topology
