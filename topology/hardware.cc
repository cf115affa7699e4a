// The one table of hardware constants. Peaks are vendor figures as collected in ANCHORS.md
// ("Physical limits", sources [H1] [H2] [E1] [N2] [F1] [G1]); achievable fractions come from the
// published measurements named next to each; numbers marked "assumption" have no primary source and
// are the first thing to revisit when a real measurement exists (bench/ should replace them).
#include "topology/hardware.h"

#include <algorithm>
#include <cctype>
#include <cstdio>

namespace deepshard::topology {

namespace {

constexpr int64_t kMiB = 1LL << 20;

HardwareTable build_table() {
    HardwareTable t;
    // | device    | arch  | memory (nvidia-smi total) | HBM GB/s | BF16 TF | FP8 TF | NVLink GB/s/dir | NIC GB/s/GPU |
    // |-----------|-------|---------------------------|----------|---------|--------|-----------------|--------------|
    // | A100-40G  | sm_80 | 40,960 MiB                | 1,555    | 312     | –      | 300 (NVLink3)   | 25 (HDR 200G)|
    // | A100-80G  | sm_80 | 81,920 MiB                | 2,039    | 312     | –      | 300 (NVLink3)   | 25 (HDR 200G)|
    // | H100-80G  | sm_90 | 81,559 MiB                | 3,350    | 989     | 1,979  | 450 (NVLink4)   | 50 (NDR 400G)|
    // | H800-80G  | sm_90 | 81,559 MiB                | 3,350    | 989     | 1,979  | 200 (NVLink 400)| 50 (NDR 400G)|
    // | H200-141G | sm_90 | 143,771 MiB               | 4,800    | 989     | 1,979  | 450 (NVLink4)   | 50 (NDR 400G)|
    // Sources: H100 SXM [H1]: 80 GB HBM3 3.35 TB/s, BF16 989 / FP8 1979 dense, NVLink4 900 GB/s (both
    // directions). A100 SXM [H2]: 2,039 GB/s (80 GB), BF16 312, NVLink3 600 GB/s, no FP8 tensor cores;
    // the 40 GB part has 1,555 GB/s (NVIDIA A100 datasheet). H800 = H100 compute with NVLink cut to
    // 400 GB/s (DeepEP measures ~160 GB/s per direction on it [E1]). H200 SXM: 141 GB HBM3e at 4.8 TB/s,
    // H100 compute (NVIDIA H200 product brief). NICs: ConnectX-7 400 Gb/s ~ 50 GB/s [E1]; DGX A100 nodes
    // carry ConnectX-6 HDR 200 Gb/s (DGX A100 user guide). Memory totals: what nvidia-smi prints for
    // the SXM parts (UNVERIFIED for H200; 141 GB nominal), i.e. before the CUDA context.
    t.devices = {
        {"A100-40G", DeviceKind::kGpu, "sm_80", 40960 * kMiB, 1555, 312, 0, 300, 25, "ConnectX-6 HDR 200Gb/s",
         "[H2] NVIDIA A100 datasheet"},
        {"A100-80G", DeviceKind::kGpu, "sm_80", 81920 * kMiB, 2039, 312, 0, 300, 25, "ConnectX-6 HDR 200Gb/s",
         "[H2] NVIDIA A100 datasheet"},
        {"H100-80G", DeviceKind::kGpu, "sm_90", 81559 * kMiB, 3350, 989, 1979, 450, 50, "ConnectX-7 NDR 400Gb/s",
         "[H1] NVIDIA H100 datasheet"},
        {"H800-80G", DeviceKind::kGpu, "sm_90", 81559 * kMiB, 3350, 989, 1979, 200, 50, "ConnectX-7 NDR 400Gb/s",
         "[H1] H100 compute, NVLink 400 GB/s; [E1]"},
        {"H200-141G", DeviceKind::kGpu, "sm_90", 143771 * kMiB, 4800, 989, 1979, 450, 50, "ConnectX-7 NDR 400Gb/s",
         "NVIDIA H200 product brief; [H1] compute"},
    };
    // Achievable fractions of the peaks.
    //  hbm 0.85         FlashMLA reaches 3,000 of 3,350 GB/s (0.90) in its best memory-bound case [F1];
    //                   whole-step weight streaming through many GEMMs is taken a little lower.
    //  fp8_mma 0.75     DeepGEMM 1,550 of 1,979 TFLOPS (0.78) on H800 [G1], rounded down for MoE shapes.
    //  bf16_mma 0.70    assumption (large cuBLAS BF16 GEMMs reach ~0.8; grouped MoE GEMMs less).
    //  dequant_mma 0.55 assumption: FP8 weights expanded to BF16 inside the GEMM on A100 (Marlin-style);
    //                   no published DeepSeek-V3 figure exists (ANCHORS (a): "a real gap").
    //  attention 0.67   FlashMLA 660 of 989 TFLOPS BF16 in its compute-bound case [F1,O1].
    //  nvlink 0.78      DeepEP intranode 153-158 of 200 GB/s per direction on H800 [E1].
    //  nic 0.92         NCCL target 46-48 of 50 GB/s per NDR NIC [N2].
    t.efficiency = {0.85, 0.75, 0.70, 0.55, 0.67, 0.78, 0.92};
    // Latency floors.
    //  kernel_floor_us 5, kernels_per_layer 30: a decode layer is ~30 small kernels (2 norms, q_a, q norm,
    //      q_b, kv_a, kv norm, 2 rope, absorb, attention, un-absorb, o, router + top-k, dispatch, grouped
    //      expert GEMMs, shared expert x4, combine, residual adds); without CUDA graphs each costs at least
    //      the ~4-6 us launch latency (assumption). This floor is what dominates batch-1 decode.
    //  cpu_op_floor_us 20: thread-pool fork/join per op on CPU ranks (assumption).
    //  collective_intra_us 10: small-message NCCL allreduce inside an NVLink node (assumption, nccl-tests order).
    //  collective_inter_us 25: the same across nodes; ANCHORS (b) "tens of us each".
    //  p2p_intra_us 5 / p2p_inter_us 8: one message; RDMA one-way is ~1-2 us plus software (ANCHORS, UNVERIFIED).
    //  cpu_collective_us 5: MPI shared-memory collective (assumption).
    t.latency = {5.0, 30, 20.0, 10.0, 25.0, 5.0, 8.0, 5.0};
    // CPU-only nodes (assumption, a 2-socket server): ~200 GB/s achievable DDR bandwidth, ~3 TFLOPS
    // of AVX-512 / AMX BF16 math on dequantized weights, 100 GbE (12.5 GB/s) between nodes.
    t.cpu_node_mem_bw_gbs = 200;
    t.cpu_node_tflops = 3;
    t.cpu_node_nic_gbs = 12.5;
    return t;
}

std::string upper(std::string_view s) {
    std::string out(s);
    for (char& c : out) {
        c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    }
    return out;
}

std::string known_names() {
    std::string out;
    for (const auto& d : hardware_table().devices) {
        out += d.name + ", ";
    }
    return out + "CPU-<RAM>G";
}

}  // namespace

const HardwareTable& hardware_table() {
    static const HardwareTable table = build_table();
    return table;
}

DeviceSpec cpu_device(int64_t ram_bytes) {
    const HardwareTable& t = hardware_table();
    DeviceSpec d;
    d.kind = DeviceKind::kCpu;
    d.name = "CPU-" + std::to_string((ram_bytes + 500'000'000) / 1'000'000'000) + "G";
    d.arch = "cpu";
    d.memory_bytes = ram_bytes;
    d.mem_bw_gbs = t.cpu_node_mem_bw_gbs;
    d.bf16_tflops = t.cpu_node_tflops;
    d.fp8_tflops = 0;
    d.nvlink_gbs = 10;  // shared-memory copies between ranks of one host (assumption)
    d.nic_gbs = t.cpu_node_nic_gbs;
    d.nic_model = "100GbE";
    d.source = "assumption: 2-socket server (hardware.cc)";
    return d;
}

StatusOr<DeviceSpec> find_device(std::string_view name) {
    std::string u = upper(name);
    if (u.ends_with("GB")) {
        u.pop_back();
    }
    if (u.starts_with("CPU")) {
        if (u.size() < 6 || u[3] != '-') {
            return invalid_argument("device \"" + std::string(name) +
                                    "\": CPU nodes are written CPU-<RAM>G, e.g. CPU-64G");
        }
        const std::string num = u.substr(4, u.size() - 5);
        const char unit = u.back();
        double value = 0;
        size_t used = 0;
        try {
            value = std::stod(num, &used);
        } catch (...) {
            used = 0;
        }
        if (used != num.size() || value <= 0 || (unit != 'G' && unit != 'T')) {
            return invalid_argument("device \"" + std::string(name) +
                                    "\": CPU nodes are written CPU-<RAM>G or CPU-<RAM>T, e.g. CPU-64G");
        }
        return cpu_device(static_cast<int64_t>(value * (unit == 'T' ? 1e12 : 1e9)));
    }
    std::vector<const DeviceSpec*> matches;
    for (const auto& d : hardware_table().devices) {
        const std::string key = upper(d.name);
        if (key == u) {
            return d;
        }
        if (key.starts_with(u + "-")) {
            matches.push_back(&d);
        }
    }
    if (matches.size() == 1) {
        return *matches.front();
    }
    if (matches.size() > 1) {
        std::string options;
        for (const auto* d : matches) {
            options += (options.empty() ? "" : " or ") + d->name;
        }
        return invalid_argument("device \"" + std::string(name) + "\" is ambiguous: say " + options);
    }
    return invalid_argument("unknown device \"" + std::string(name) + "\"; known: " + known_names());
}

StatusOr<DeviceSpec> device_from_gpu_name(std::string_view cuda_name, int64_t memory_bytes) {
    const std::string u = upper(cuda_name);
    for (const char* family : {"H200", "H800", "H100"}) {
        if (u.find(family) != std::string::npos) {
            return find_device(family);
        }
    }
    if (u.find("A100") != std::string::npos) {
        return find_device(memory_bytes > 60'000'000'000LL ? "A100-80G" : "A100-40G");
    }
    return not_found("GPU \"" + std::string(cuda_name) + "\" is not in the hardware table (" + known_names() + ")");
}

std::string format_gb(double bytes) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%.1f GB", bytes / 1e9);
    return buf;
}

}  // namespace deepshard::topology
