// Host discovery. hwloc gives the CPU side and the PCI tree (with I/O discovery on, it also names the
// OS devices under each PCI function: eth0, mlx5_0, ...); libibverbs gives the RDMA ports and GID
// tables (the RoCE v2 GID index NCCL needs is chosen here, not typed by hand); the CUDA runtime is
// dlopen'ed so that nothing links CUDA and a host without it simply reports no GPUs.
#include "topology/discovery.h"

#include <dlfcn.h>
#include <hwloc.h>
#include <net/if.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>

#if DS_WITH_IBVERBS
#include <infiniband/verbs.h>
#endif

namespace deepshard::topology {

namespace {

std::string lower(std::string s) {
    for (char& c : s) {
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    return s;
}

std::string class_name(unsigned cls) {
    switch (cls) {
        case 0x0100:
            return "SCSI";
        case 0x0104:
            return "RAID";
        case 0x0106:
            return "SATA";
        case 0x0108:
            return "NVMe";
        case 0x0200:
            return "Ethernet";
        case 0x0207:
            return "InfiniBand";
        case 0x0300:
            return "VGA";
        case 0x0302:
            return "3D";
        case 0x1200:
            return "Accelerator";
        default:
            break;
    }
    switch (cls >> 8) {
        case 0x01:
            return "Storage";
        case 0x02:
            return "Network";
        case 0x03:
            return "Display";
        default:
            return "Other";
    }
}

struct HwlocTopo {
    hwloc_topology_t t = nullptr;
    ~HwlocTopo() {
        if (t) {
            hwloc_topology_destroy(t);
        }
    }
};

int pci_hops(hwloc_obj_t a, hwloc_obj_t b) {
    std::map<hwloc_obj_t, int> up;
    int d = 0;
    for (hwloc_obj_t o = a; o; o = o->parent) {
        up[o] = d++;
    }
    d = 0;
    for (hwloc_obj_t o = b; o; o = o->parent, ++d) {
        if (auto it = up.find(o); it != up.end()) {
            return it->second + d;
        }
    }
    return -1;
}

Status discover_hwloc(HostTopology* h, std::map<std::string, hwloc_obj_t>* pci_objs, HwlocTopo* ht) {
    if (hwloc_topology_init(&ht->t) != 0) {
        return internal_error("hwloc_topology_init failed");
    }
    hwloc_topology_set_io_types_filter(ht->t, HWLOC_TYPE_FILTER_KEEP_IMPORTANT);
    if (hwloc_topology_load(ht->t) != 0) {
        return internal_error(std::string("hwloc_topology_load failed: ") + std::strerror(errno));
    }
    hwloc_topology_t t = ht->t;
    h->sockets = std::max(1, hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_PACKAGE));
    h->cores = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_CORE);
    h->pus = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_PU);
    h->memory_bytes = static_cast<int64_t>(hwloc_get_root_obj(t)->total_memory);
    const int numa_count = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_NUMANODE);
    for (int i = 0; i < numa_count; ++i) {
        hwloc_obj_t o = hwloc_get_obj_by_type(t, HWLOC_OBJ_NUMANODE, static_cast<unsigned>(i));
        NumaNode n;
        n.os_index = static_cast<int>(o->os_index);
        n.memory_bytes = static_cast<int64_t>(o->attr->numanode.local_memory);
        for (int pu = hwloc_bitmap_first(o->cpuset); pu >= 0; pu = hwloc_bitmap_next(o->cpuset, pu)) {
            n.cpus.push_back(pu);
        }
        h->numa_nodes.push_back(std::move(n));
    }
    for (hwloc_obj_t o = hwloc_get_next_pcidev(t, nullptr); o; o = hwloc_get_next_pcidev(t, o)) {
        const auto& a = o->attr->pcidev;
        PciDevice p;
        char bus[32];
        std::snprintf(bus, sizeof(bus), "%04x:%02x:%02x.%01x", a.domain, a.bus, a.dev, a.func);
        p.bus_id = bus;
        p.vendor_id = a.vendor_id;
        p.device_id = a.device_id;
        p.class_name = class_name(a.class_id);
        const unsigned base = a.class_id >> 8;
        p.kind = base == 0x02   ? "nic"
                 : base == 0x01 ? "storage"
                 : (base == 0x03 || a.class_id == 0x1200) && (a.vendor_id == 0x10de || a.vendor_id == 0x1002) ? "gpu"
                                                                                                              : "other";
        hwloc_obj_t anc = hwloc_get_non_io_ancestor_obj(t, o);
        if (anc && anc->nodeset && hwloc_bitmap_weight(anc->nodeset) == 1) {
            p.numa_node = hwloc_bitmap_first(anc->nodeset);
        } else if (numa_count == 1) {
            p.numa_node = h->numa_nodes.front().os_index;
        }
        for (hwloc_obj_t c = o->io_first_child; c; c = c->next_sibling) {
            if (c->type == HWLOC_OBJ_OS_DEVICE && c->name) {
                p.os_devices.push_back(c->name);
            }
        }
        (*pci_objs)[p.bus_id] = o;
        h->pci.push_back(std::move(p));
    }
    if (h->pci.empty()) {
        h->notes.push_back("hwloc reported no PCI devices (no I/O discovery in this hwloc build or container)");
    }
    return ok_status();
}

// ---- CUDA runtime through dlopen. Only ABI-stable entry points are used; the device name is the
// first field of cudaDeviceProp in every CUDA version, and totalGlobalMem follows name[256],
// uuid[16], luid[8] and luidDeviceNodeMask (padded), i.e. at byte 288.
using CudaGetCount = int (*)(int*);
using CudaGetAttr = int (*)(int*, int, int);
using CudaBusId = int (*)(char*, int, int);
using CudaProps = int (*)(void*, int);
using CudaErrStr = const char* (*)(int);
using CudaSetDevice = int (*)(int);
using CudaMemInfo = int (*)(size_t*, size_t*);

void discover_cuda(HostTopology* h) {
    void* lib = nullptr;
    for (const char* name : {"libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0",
                             "/usr/local/cuda/lib64/libcudart.so"}) {
        if ((lib = dlopen(name, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE))) {
            break;
        }
    }
    if (!lib) {
        h->gpu_source = "none: CUDA runtime (libcudart.so) not found";
        return;
    }
    auto count_fn = reinterpret_cast<CudaGetCount>(dlsym(lib, "cudaGetDeviceCount"));
    auto attr_fn = reinterpret_cast<CudaGetAttr>(dlsym(lib, "cudaDeviceGetAttribute"));
    auto bus_fn = reinterpret_cast<CudaBusId>(dlsym(lib, "cudaDeviceGetPCIBusId"));
    auto err_fn = reinterpret_cast<CudaErrStr>(dlsym(lib, "cudaGetErrorString"));
    auto props_fn = reinterpret_cast<CudaProps>(dlsym(lib, "cudaGetDeviceProperties_v2"));
    if (!props_fn) {
        props_fn = reinterpret_cast<CudaProps>(dlsym(lib, "cudaGetDeviceProperties"));
    }
    auto set_fn = reinterpret_cast<CudaSetDevice>(dlsym(lib, "cudaSetDevice"));
    auto mem_fn = reinterpret_cast<CudaMemInfo>(dlsym(lib, "cudaMemGetInfo"));
    if (!count_fn || !attr_fn || !bus_fn) {
        h->gpu_source = "none: libcudart lacks cudaGetDeviceCount / cudaDeviceGetAttribute";
        return;
    }
    int n = 0;
    if (const int err = count_fn(&n); err != 0) {
        h->gpu_source = std::string("none: CUDA runtime: ") + (err_fn ? err_fn(err) : std::to_string(err).c_str());
        return;
    }
    std::vector<uint64_t> props(8192);  // far larger than any cudaDeviceProp
    for (int d = 0; d < n; ++d) {
        GpuDevice g;
        g.index = d;
        int major = 0, minor = 0;
        attr_fn(&major, 75, d);  // cudaDevAttrComputeCapabilityMajor
        attr_fn(&minor, 76, d);  // cudaDevAttrComputeCapabilityMinor
        g.arch = "sm_" + std::to_string(major * 10 + minor);
        char bus[64] = {0};
        if (bus_fn(bus, sizeof(bus), d) == 0) {
            g.pci_bus_id = lower(bus);
        }
        std::fill(props.begin(), props.end(), 0);
        if (props_fn && props_fn(props.data(), d) == 0) {
            const char* raw = reinterpret_cast<const char*>(props.data());
            g.name.assign(raw, strnlen(raw, 256));
            uint64_t mem = 0;
            std::memcpy(&mem, raw + 288, sizeof(mem));
            if (mem > (1ULL << 30) && mem < (1ULL << 42)) {
                g.memory_bytes = static_cast<int64_t>(mem);
            }
        }
        if (g.memory_bytes == 0 && set_fn && mem_fn && set_fn(d) == 0) {
            size_t free_b = 0, total_b = 0;
            if (mem_fn(&free_b, &total_b) == 0) {
                g.memory_bytes = static_cast<int64_t>(total_b);
            }
        }
        h->gpus.push_back(std::move(g));
    }
    h->gpu_source = "CUDA runtime: " + std::to_string(n) + " device(s)";
}

#if DS_WITH_IBVERBS
std::string gid_string(const uint8_t* raw) {
    char buf[48];
    std::snprintf(buf, sizeof(buf), "%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x", raw[0],
                  raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7], raw[8], raw[9], raw[10], raw[11], raw[12],
                  raw[13], raw[14], raw[15]);
    return buf;
}

double port_rate_gbps(const ibv_port_attr& pa) {
    double lane = 0;
    switch (pa.active_speed) {
        case 1:
            lane = 2.5;
            break;
        case 2:
            lane = 5;
            break;
        case 4:
        case 8:
            lane = 10;
            break;
        case 16:
            lane = 14;
            break;
        case 32:
            lane = 25;
            break;
        case 64:
            lane = 50;
            break;
        case 128:
            lane = 100;
            break;
        default:
            break;
    }
    int width = 0;
    switch (pa.active_width) {
        case 1:
            width = 1;
            break;
        case 2:
            width = 4;
            break;
        case 4:
            width = 8;
            break;
        case 8:
            width = 12;
            break;
        case 16:
            width = 2;
            break;
        default:
            break;
    }
    return lane * width;
}

std::string read_line(const std::string& path) {
    std::ifstream in(path);
    std::string s;
    std::getline(in, s);
    return s;
}

void discover_rdma(HostTopology* h) {
    int n = 0;
    errno = 0;
    ibv_device** list = ibv_get_device_list(&n);
    if (!list) {
        h->rdma_source = std::string("none: libibverbs: ") + (errno ? std::strerror(errno) : "no device list");
        return;
    }
    for (int i = 0; i < n; ++i) {
        RdmaDevice d;
        d.name = ibv_get_device_name(list[i]);
        const std::string sys = list[i]->ibdev_path;
        const std::string numa = read_line(sys + "/device/numa_node");
        d.numa_node = numa.empty() ? -1 : std::atoi(numa.c_str());
        char target[512] = {0};
        if (readlink((sys + "/device").c_str(), target, sizeof(target) - 1) > 0) {
            const char* slash = std::strrchr(target, '/');
            d.pci_bus_id = slash ? slash + 1 : target;
        }
        ibv_context* ctx = ibv_open_device(list[i]);
        if (!ctx) {
            h->notes.push_back("cannot open RDMA device " + d.name + ": " + std::strerror(errno));
            h->rdma.push_back(std::move(d));
            continue;
        }
        ibv_device_attr attr{};
        if (ibv_query_device(ctx, &attr) == 0) {
            for (int p = 1; p <= attr.phys_port_cnt; ++p) {
                ibv_port_attr pa{};
                if (ibv_query_port(ctx, static_cast<uint8_t>(p), &pa) != 0) {
                    continue;
                }
                RdmaPort port;
                port.port = p;
                port.state = ibv_port_state_str(pa.state);
                port.link_layer = pa.link_layer == IBV_LINK_LAYER_ETHERNET ? "Ethernet" : "InfiniBand";
                port.active_mtu = 128 << static_cast<int>(pa.active_mtu);
                port.rate_gbps = port_rate_gbps(pa);
                for (int gi = 0; gi < pa.gid_tbl_len; ++gi) {
                    ibv_gid_entry e{};
                    if (ibv_query_gid_ex(ctx, static_cast<uint32_t>(p), static_cast<uint32_t>(gi), &e, 0) != 0) {
                        continue;
                    }
                    static const uint8_t zero[16] = {0};
                    if (std::memcmp(e.gid.raw, zero, 16) == 0) {
                        continue;
                    }
                    GidEntry g;
                    g.index = gi;
                    g.gid = gid_string(e.gid.raw);
                    g.type = e.gid_type == IBV_GID_TYPE_ROCE_V2   ? "RoCE v2"
                             : e.gid_type == IBV_GID_TYPE_ROCE_V1 ? "RoCE v1"
                                                                  : "IB";
                    char ifname[IF_NAMESIZE] = {0};
                    if (e.ndev_ifindex != 0 && if_indextoname(e.ndev_ifindex, ifname)) {
                        g.netdev = ifname;
                    }
                    port.gids.push_back(std::move(g));
                }
                port.roce_gid_index = port.link_layer == "Ethernet" ? choose_roce_gid_index(port.gids) : -1;
                d.ports.push_back(std::move(port));
            }
        }
        ibv_close_device(ctx);
        h->rdma.push_back(std::move(d));
    }
    ibv_free_device_list(list);
    h->rdma_source = "libibverbs: " + std::to_string(n) + " device(s)";
}
#endif

// One "Key:  N kB" line of /proc/meminfo, in bytes; 0 when absent or out of range.
int64_t meminfo_bytes(const char* want) {
    std::ifstream in("/proc/meminfo");
    std::string key, unit;
    int64_t kib = 0;
    while (in >> key >> kib) {
        std::getline(in, unit);
        if (key == want) {
            return kib > 0 && kib < (int64_t{1} << 50) ? kib * 1024 : 0;
        }
    }
    return 0;
}

// MemAvailable of /proc/meminfo (the kernel's estimate of what new allocations can get without
// swapping, page cache included), in bytes; 0 when unknown. Values beyond the host's RAM are refused.
int64_t available_memory(int64_t total_bytes) {
    const int64_t bytes = meminfo_bytes("MemAvailable:");
    return total_bytes > 0 && bytes > total_bytes ? 0 : bytes;
}

}  // namespace

StatusOr<HostTopology> discover_host(const DiscoveryOptions& options) {
    HostTopology h;
    char name[256] = {0};
    if (gethostname(name, sizeof(name) - 1) == 0) {
        h.hostname = name;
    }
    HwlocTopo ht;
    std::map<std::string, hwloc_obj_t> pci_objs;
    DS_RETURN_IF_ERROR(discover_hwloc(&h, &pci_objs, &ht));
    // hwloc adds up the NUMA nodes' memory, which in some VMs misses memory the kernel has
    // (e.g. hot-plugged: node0 11 GB of a 24 GB MemTotal); the RAM is what the kernel says.
    h.memory_bytes = std::max(h.memory_bytes, meminfo_bytes("MemTotal:"));
    h.available_memory_bytes = available_memory(h.memory_bytes);

    h.rdma_source = "none: built without libibverbs";
#if DS_WITH_IBVERBS
    if (options.rdma) {
        discover_rdma(&h);
    } else {
        h.rdma_source = "not probed";
    }
#endif
    if (options.cuda) {
        discover_cuda(&h);
    } else {
        h.gpu_source = "not probed";
    }
    // NUMA affinity and nearest NIC of each GPU, from the PCI tree.
    for (auto& g : h.gpus) {
        auto it = pci_objs.find(g.pci_bus_id);
        if (it == pci_objs.end()) {
            continue;
        }
        for (const auto& p : h.pci) {
            if (p.bus_id == g.pci_bus_id) {
                g.numa_node = p.numa_node;
            }
        }
        for (const auto& p : h.pci) {
            if (p.kind != "nic") {
                continue;
            }
            std::string nic = p.os_devices.empty() ? p.bus_id : p.os_devices.front();
            for (const auto& r : h.rdma) {
                if (r.pci_bus_id == p.bus_id) {
                    nic = r.name;
                }
            }
            const int hops = pci_hops(it->second, pci_objs[p.bus_id]);
            if (hops >= 0 && (g.nic_distance < 0 || hops < g.nic_distance)) {
                g.nic_distance = hops;
                g.nearest_nic = nic;
            }
        }
    }
    int hwloc_gpus = 0;
    for (const auto& p : h.pci) {
        hwloc_gpus += p.kind == "gpu" && p.vendor_id == 0x10de ? 1 : 0;
    }
    if (hwloc_gpus > 0 && h.gpus.empty()) {
        h.notes.push_back("the PCI bus shows " + std::to_string(hwloc_gpus) +
                          " NVIDIA GPU(s) but the CUDA runtime reported none (" + h.gpu_source + ")");
    }
    return h;
}

}  // namespace deepshard::topology
