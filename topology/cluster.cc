// Cluster descriptions: spec strings, OpenMPI hostfiles, Slurm allocations. Every parse error names
// the offending text (and the line, for files) so a typo in a job script is found at once.
#include "topology/cluster.h"

#include <cctype>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace deepshard::topology {

namespace {

constexpr size_t kMaxNodes = 100000;

std::string trim(std::string_view s) {
    size_t b = 0, e = s.size();
    while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) {
        ++b;
    }
    while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) {
        --e;
    }
    return std::string(s.substr(b, e - b));
}

// A positive decimal integer, the whole string.
std::optional<int64_t> parse_count(std::string_view s) {
    if (s.empty() || s.size() > 9) {
        return std::nullopt;
    }
    int64_t v = 0;
    for (char c : s) {
        if (!std::isdigit(static_cast<unsigned char>(c))) {
            return std::nullopt;
        }
        v = v * 10 + (c - '0');
    }
    return v;
}

std::vector<std::string> split(std::string_view s, char sep) {
    std::vector<std::string> out;
    size_t start = 0;
    for (size_t i = 0; i <= s.size(); ++i) {
        if (i == s.size() || s[i] == sep) {
            out.emplace_back(s.substr(start, i - start));
            start = i + 1;
        }
    }
    return out;
}

// Expands one hostlist item (no top-level commas) with any number of bracket groups.
Status expand_item(std::string_view item, std::vector<std::string>* out, std::string_view whole) {
    std::vector<std::string> acc{""};
    size_t i = 0;
    while (i < item.size()) {
        if (item[i] == ']') {
            return invalid_argument("nodelist \"" + std::string(whole) + "\": ']' without '['");
        }
        if (item[i] != '[') {
            for (auto& a : acc) {
                a += item[i];
            }
            ++i;
            continue;
        }
        const size_t close = item.find(']', i);
        if (close == std::string_view::npos) {
            return invalid_argument("nodelist \"" + std::string(whole) + "\": '[' without ']'");
        }
        const std::string_view body = item.substr(i + 1, close - i - 1);
        if (body.find('[') != std::string_view::npos) {
            return invalid_argument("nodelist \"" + std::string(whole) + "\": nested '['");
        }
        std::vector<std::string> values;
        for (const std::string& r : split(body, ',')) {
            const size_t dash = r.find('-');
            const std::string lo = dash == std::string::npos ? r : r.substr(0, dash);
            const std::string hi = dash == std::string::npos ? r : r.substr(dash + 1);
            const auto a = parse_count(lo), b = parse_count(hi);
            if (!a || !b) {
                return invalid_argument("nodelist \"" + std::string(whole) + "\": bad range \"" + r +
                                        "\" (want N or N-M with decimal numbers)");
            }
            if (*b < *a) {
                return invalid_argument("nodelist \"" + std::string(whole) + "\": range \"" + r + "\" runs backwards");
            }
            if (static_cast<size_t>(*b - *a) >= kMaxNodes) {
                return invalid_argument("nodelist \"" + std::string(whole) + "\": range \"" + r + "\" is too large");
            }
            for (int64_t v = *a; v <= *b; ++v) {
                std::string num = std::to_string(v);
                if (num.size() < lo.size()) {
                    num.insert(0, lo.size() - num.size(), '0');
                }
                values.push_back(std::move(num));
            }
        }
        std::vector<std::string> next;
        for (const auto& a : acc) {
            for (const auto& v : values) {
                next.push_back(a + v);
            }
        }
        if (next.size() > kMaxNodes) {
            return invalid_argument("nodelist \"" + std::string(whole) + "\" expands to too many hosts");
        }
        acc = std::move(next);
        i = close + 1;
    }
    for (auto& a : acc) {
        if (a.empty()) {
            return invalid_argument("nodelist \"" + std::string(whole) + "\" has an empty host name");
        }
        out->push_back(std::move(a));
    }
    return ok_status();
}

const char* kSlurmNodelistVars[] = {"SLURM_JOB_NODELIST", "SLURM_NODELIST"};

// "h100:8", "gpu:h100:8", "8" -> count 8 and type "h100".
std::optional<int> gpu_count_with_type(const std::string& v, std::string* type) {
    const auto parts = split(v, ':');
    const auto n = parse_count(trim(parts.back()));
    if (!n) {
        return std::nullopt;
    }
    if (parts.size() >= 2 && type) {
        const std::string& t = parts[parts.size() - 2];
        if (t != "gpu") {
            *type = t;
        }
    }
    return static_cast<int>(*n);
}

}  // namespace

int Cluster::world_size() const {
    int n = 0;
    for (const auto& node : nodes) {
        n += node.slots;
    }
    return n;
}

bool Cluster::homogeneous() const {
    for (const auto& n : nodes) {
        if (n.device.name != nodes.front().device.name || n.slots != nodes.front().slots) {
            return false;
        }
    }
    return true;
}

StatusOr<Cluster> parse_cluster_spec(std::string_view spec_in) {
    const std::string spec = trim(spec_in);
    const std::string usage = " (want NxGxTYPE like 2x8xH100-80G, GxTYPE like 8xH200-141G, or NxRxCPU-64G)";
    // Split on 'x'/'X' only before the type: the type itself starts with a letter.
    std::vector<std::string> fields;
    size_t start = 0;
    for (size_t i = 0; i < spec.size(); ++i) {
        if ((spec[i] == 'x' || spec[i] == 'X') && i > start && std::isdigit(static_cast<unsigned char>(spec[i - 1]))) {
            const std::string f = spec.substr(start, i - start);
            if (parse_count(f)) {
                fields.push_back(f);
                start = i + 1;
            }
        }
    }
    fields.push_back(spec.substr(start));
    if (fields.size() < 2 || fields.size() > 3) {
        return invalid_argument("cluster spec \"" + spec + "\"" + usage);
    }
    const int64_t nodes = fields.size() == 3 ? *parse_count(fields[0]) : 1;
    const int64_t per_node = *parse_count(fields[fields.size() - 2]);
    if (nodes < 1 || per_node < 1) {
        return invalid_argument("cluster spec \"" + spec + "\": node and device counts must be at least 1");
    }
    if (nodes > 4096 || per_node > 64) {
        return invalid_argument("cluster spec \"" + spec + "\": at most 4096 nodes of at most 64 devices");
    }
    auto device = find_device(fields.back());
    if (!device.ok()) {
        return invalid_argument("cluster spec \"" + spec + "\": " + device.status().message());
    }
    std::vector<HostSlots> hosts;
    for (int64_t n = 0; n < nodes; ++n) {
        hosts.push_back({"node" + std::to_string(n), static_cast<int>(per_node)});
    }
    return cluster_from_hosts(hosts, *device, "spec",
                              std::to_string(nodes) + "x" + std::to_string(per_node) + "x" + device->name);
}

StatusOr<std::vector<HostSlots>> parse_hostfile(std::string_view text, const std::string& source) {
    std::vector<HostSlots> hosts;
    int line_no = 0;
    for (const std::string& raw : split(text, '\n')) {
        ++line_no;
        std::string line = raw;
        if (const size_t hash = line.find('#'); hash != std::string::npos) {
            line.resize(hash);
        }
        std::istringstream in(line);
        std::string host, tok;
        if (!(in >> host)) {
            continue;
        }
        const std::string where = source + ":" + std::to_string(line_no) + ": ";
        int slots = 1;
        while (in >> tok) {
            const size_t eq = tok.find('=');
            const std::string key = tok.substr(0, eq);
            const std::string value = eq == std::string::npos ? "" : tok.substr(eq + 1);
            if (key == "slots" || key == "max_slots" || key == "max-slots") {
                const auto n = parse_count(value);
                if (!n || *n < 1) {
                    return invalid_argument(where + key + " must be a positive integer, got \"" + value + "\"");
                }
                if (key == "slots") {
                    slots = static_cast<int>(*n);
                }
            } else {
                return invalid_argument(where + "unknown field \"" + tok + "\" (want \"host slots=N\")");
            }
        }
        auto it = std::find_if(hosts.begin(), hosts.end(), [&](const HostSlots& h) { return h.host == host; });
        if (it != hosts.end()) {
            it->slots += slots;  // OpenMPI adds the slots of repeated hosts
        } else {
            hosts.push_back({host, slots});
        }
    }
    if (hosts.empty()) {
        return invalid_argument(source + ": the hostfile lists no hosts");
    }
    return hosts;
}

StatusOr<std::vector<HostSlots>> load_hostfile(const std::string& path) {
    std::ifstream in(path);
    if (!in) {
        return not_found("cannot open hostfile " + path);
    }
    std::stringstream ss;
    ss << in.rdbuf();
    return parse_hostfile(ss.str(), path);
}

StatusOr<std::vector<std::string>> expand_nodelist(std::string_view list_in) {
    const std::string list = trim(list_in);
    if (list.empty()) {
        return invalid_argument("nodelist is empty");
    }
    std::vector<std::string> out;
    int depth = 0;
    size_t start = 0;
    for (size_t i = 0; i <= list.size(); ++i) {
        if (i < list.size() && list[i] == '[') {
            ++depth;
        } else if (i < list.size() && list[i] == ']') {
            --depth;
        } else if (i == list.size() || (list[i] == ',' && depth == 0)) {
            const std::string item = trim(std::string_view(list).substr(start, i - start));
            if (item.empty()) {
                return invalid_argument("nodelist \"" + list + "\" has an empty entry");
            }
            DS_RETURN_IF_ERROR(expand_item(item, &out, list));
            start = i + 1;
        }
        if (depth < 0 || depth > 1) {
            return invalid_argument("nodelist \"" + list + "\": unbalanced brackets");
        }
    }
    if (depth != 0) {
        return invalid_argument("nodelist \"" + list + "\": '[' without ']'");
    }
    return out;
}

StatusOr<std::vector<int>> expand_tasks_per_node(std::string_view counts, size_t nodes) {
    std::vector<int> out;
    for (const std::string& part : split(trim(counts), ',')) {
        std::string num = trim(part);
        int64_t repeat = 1;
        if (const size_t p = num.find("(x"); p != std::string::npos) {
            const auto r = num.back() == ')' ? parse_count(num.substr(p + 2, num.size() - p - 3)) : std::nullopt;
            if (!r || *r < 1) {
                return invalid_argument("task counts \"" + std::string(counts) + "\": bad repeat in \"" + part + "\"");
            }
            repeat = *r;
            num = num.substr(0, p);
        }
        const auto n = parse_count(num);
        if (!n || *n < 1) {
            return invalid_argument("task counts \"" + std::string(counts) + "\": \"" + part +
                                    "\" is not a positive count");
        }
        for (int64_t i = 0; i < repeat && out.size() <= nodes; ++i) {
            out.push_back(static_cast<int>(*n));
        }
    }
    if (out.size() != nodes) {
        return invalid_argument("task counts \"" + std::string(counts) + "\" describe " + std::to_string(out.size()) +
                                " nodes, the nodelist has " + std::to_string(nodes));
    }
    return out;
}

EnvLookup process_env() {
    return [](const std::string& name) -> std::optional<std::string> {
        const char* v = std::getenv(name.c_str());
        if (v == nullptr) {
            return std::nullopt;
        }
        return std::string(v);
    };
}

StatusOr<std::vector<HostSlots>> hosts_from_slurm(const EnvLookup& env, std::string* gpu_type_hint) {
    std::optional<std::string> list;
    for (const char* var : kSlurmNodelistVars) {
        if ((list = env(var))) {
            break;
        }
    }
    if (!list) {
        return invalid_argument("not inside a Slurm allocation: SLURM_JOB_NODELIST is not set");
    }
    auto names = expand_nodelist(*list);
    if (!names.ok()) {
        return invalid_argument("SLURM_JOB_NODELIST: " + names.status().message());
    }
    const size_t n = names->size();
    if (auto nn = env("SLURM_JOB_NUM_NODES")) {
        const auto v = parse_count(trim(*nn));
        if (!v || static_cast<size_t>(*v) != n) {
            return invalid_argument("SLURM_JOB_NUM_NODES=" + *nn + " but SLURM_JOB_NODELIST=" + *list + " names " +
                                    std::to_string(n) + " nodes");
        }
    }
    std::vector<int> slots;
    std::string type;
    if (auto v = env("SLURM_NTASKS_PER_NODE")) {
        const auto c = parse_count(trim(*v));
        if (!c || *c < 1) {
            return invalid_argument("SLURM_NTASKS_PER_NODE=\"" + *v + "\" is not a positive count");
        }
        slots.assign(n, static_cast<int>(*c));
    } else if (auto tv = env("SLURM_TASKS_PER_NODE")) {
        auto t = expand_tasks_per_node(*tv, n);
        if (!t.ok()) {
            return invalid_argument("SLURM_TASKS_PER_NODE: " + t.status().message());
        }
        slots = *t;
    } else {
        for (const char* var : {"SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE"}) {
            if (auto g = env(var)) {
                const auto c = gpu_count_with_type(*g, &type);
                if (!c || *c < 1) {
                    return invalid_argument(std::string(var) + "=\"" + *g + "\" is not a GPU count");
                }
                slots.assign(n, *c);
                break;
            }
        }
        if (slots.empty()) {
            if (auto nt = env("SLURM_NTASKS")) {
                const auto c = parse_count(trim(*nt));
                if (!c || *c < 1 || *c % static_cast<int64_t>(n) != 0) {
                    return invalid_argument("SLURM_NTASKS=" + *nt + " does not divide evenly over " +
                                            std::to_string(n) + " nodes");
                }
                slots.assign(n, static_cast<int>(*c / static_cast<int64_t>(n)));
            } else {
                slots.assign(n, 1);
            }
        }
    }
    if (type.empty()) {
        if (auto g = env("SLURM_GPUS_PER_NODE")) {
            gpu_count_with_type(*g, &type);
        }
    }
    if (gpu_type_hint) {
        *gpu_type_hint = type;
    }
    std::vector<HostSlots> hosts;
    for (size_t i = 0; i < n; ++i) {
        hosts.push_back({(*names)[i], slots[i]});
    }
    return hosts;
}

HostTopology describe_node(const std::string& host, const DeviceSpec& device, int gpus) {
    HostTopology t;
    t.hostname = host;
    t.synthesized = true;
    t.sockets = 2;
    // DGX-class nodes: 2 x 56-core Xeon (H100/H200/H800), 2 x 64-core EPYC (A100); CPU nodes: 2 x 32.
    t.cores = device.is_gpu() ? (device.arch == "sm_80" ? 128 : 112) : 64;
    t.pus = t.cores;
    t.memory_bytes = device.is_gpu() ? 2'000'000'000'000LL : device.memory_bytes;
    for (int n = 0; n < 2; ++n) {
        NumaNode numa;
        numa.os_index = n;
        numa.memory_bytes = t.memory_bytes / 2;
        for (int c = n * t.cores / 2; c < (n + 1) * t.cores / 2; ++c) {
            numa.cpus.push_back(c);
        }
        t.numa_nodes.push_back(std::move(numa));
    }
    const double nic_gbps = device.nic_gbs * 8;
    if (gpus == 0) {
        t.pci.push_back({"0000:01:00.0", "nic", "Ethernet", 0, 0, 0, {"eth0"}});
        t.gpu_source = "none (CPU-only node)";
        t.rdma_source = "none (CPU-only node, TCP)";
        return t;
    }
    for (int g = 0; g < gpus; ++g) {
        const int numa = g * 2 / gpus;
        char gpu_bus[32], nic_bus[32];
        std::snprintf(gpu_bus, sizeof(gpu_bus), "0000:%02x:00.0", 0x18 + 0x10 * g);
        std::snprintf(nic_bus, sizeof(nic_bus), "0000:%02x:00.0", 0x19 + 0x10 * g);
        const std::string nic = "mlx5_" + std::to_string(g);
        t.pci.push_back({gpu_bus, "gpu", "3D", 0x10de, 0, numa, {"cuda" + std::to_string(g)}});
        t.pci.push_back({nic_bus, "nic", "InfiniBand", 0x15b3, 0, numa, {nic}});
        GpuDevice gd;
        gd.index = g;
        gd.name = device.name;
        gd.pci_bus_id = gpu_bus;
        gd.numa_node = numa;
        gd.memory_bytes = device.memory_bytes;
        gd.arch = device.arch;
        gd.nearest_nic = nic;
        gd.nic_distance = 2;  // GPU and NIC share a PCIe switch on HGX baseboards
        t.gpus.push_back(gd);
        RdmaDevice rd;
        rd.name = nic;
        rd.pci_bus_id = nic_bus;
        rd.numa_node = numa;
        RdmaPort port;
        port.state = "ACTIVE";
        port.link_layer = "InfiniBand";
        port.active_mtu = 4096;
        port.rate_gbps = nic_gbps;
        rd.ports.push_back(port);
        t.rdma.push_back(rd);
    }
    t.gpu_source = "described: " + std::to_string(gpus) + " x " + device.name;
    t.rdma_source = "described: one " + device.nic_model + " per GPU";
    return t;
}

StatusOr<Cluster> cluster_from_hosts(const std::vector<HostSlots>& hosts,
                                     const DeviceSpec& device,
                                     const std::string& source,
                                     const std::string& description) {
    if (hosts.empty()) {
        return invalid_argument(source + ": no hosts");
    }
    Cluster c;
    c.source = source;
    c.description = description;
    for (const auto& h : hosts) {
        if (h.slots < 1) {
            return invalid_argument(source + ": host " + h.host + " has no slots");
        }
        Node node;
        node.host = h.host;
        node.slots = h.slots;
        node.device = device;
        node.gpus = device.is_gpu() ? h.slots : 0;
        node.topo = describe_node(h.host, device, node.gpus);
        c.nodes.push_back(std::move(node));
    }
    return c;
}

nlohmann::json to_json(const Cluster& c) {
    nlohmann::json j;
    j["description"] = c.description;
    j["source"] = c.source;
    j["world_size"] = c.world_size();
    j["nodes"] = nlohmann::json::array();
    for (const auto& n : c.nodes) {
        j["nodes"].push_back({{"host", n.host},
                              {"slots", n.slots},
                              {"device", n.device.name},
                              {"gpus", n.gpus},
                              {"rank_memory_bytes", n.rank_memory_bytes()},
                              {"described", n.topo.synthesized}});
    }
    return j;
}

}  // namespace deepshard::topology
