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
    // Achieved fractions of the peaks, per kernel class. "[X]" is an ANCHORS.md source; "calibrated"
    // names the one published deployment the value was fitted to (tests/topology/cost_model_test.cc
    // holds every other anchor against it); "assumption" has neither and is the first to replace
    // with a measurement.
    Efficiency& e = t.efficiency;
    e.hbm_gemm = 0.80;       // FlashMLA streams 3,000 of 3,350 GB/s (0.90) in its best memory-bound case [F1];
                             // whole-step weight streaming through many GEMMs a little lower (assumption).
    e.hbm_experts = 0.70;    // assumption: grouped expert GEMMs with a few rows per expert, below hbm_gemm.
                             // (TensorRT-LLM's early-2025 kernels measured 0.30: its engine profile below.)
    e.hbm_dequant = 0.27;    // calibrated: Chitu 3x8 A800-40GB, FP8 weights run as W8A16, batch 32 (214.5 tok/s):
                             // expanding FP8 to BF16 in software on GPUs without FP8 (its BF16 run streams the
                             // same experts at the plain rate).
    e.hbm_kv = 0.90;         // FlashMLA memory-bound decode, 3,000 of 3,350 GB/s [F1].
    e.fp8_mma = 0.75;        // DeepGEMM 1,350-1,550 of 1,979 FP8 TFLOPS on H800 [G1] (0.68-0.78).
    e.bf16_mma = 0.70;       // assumption (large cuBLAS BF16 GEMMs reach ~0.8; grouped MoE GEMMs less).
    e.dequant_mma = 0.55;    // assumption: FP8 weights expanded to BF16 inside the GEMM (Marlin-style).
    e.attention_mma = 0.67;  // FlashMLA 660 of 989 BF16 TFLOPS in its compute-bound case [F1,O1].
    e.nvlink_a2a = 0.78;     // DeepEP normal kernels, intranode: 153-158 of 200 GB/s per direction on H800 [E1].
    e.nic_a2a = 0.86;        // DeepEP normal kernels, internode EP16: 43 of 50 GB/s per CX7 [E1].
    e.nvlink_a2a_ll = 0.55;  // DeepEP low-latency EP8, 128 tokens x top-8: 77 us dispatch / 114 us combine
                             // = 98 / 129 GB/s of H800's 200 [E1].
    e.nic_a2a_ll = 0.78;     // DeepEP low-latency EP256: 194 us dispatch / 360 us combine for 128 tokens x
                             // top-8 = 39 / 41 GB/s of 50 [E1].
    e.nvlink_allreduce = 0.80;  // assumption below NCCL's ~476 GB/s busbw with NVLS on 8xH100 [N2].
    e.nic_allreduce = 0.92;     // NCCL target 46-48 of 50 GB/s per NDR NIC [N2].
    // CPU ranks: memory terms are fractions of the node's STREAM triad (measured by `deepshard plan`
    // on the host it plans for, else the assumed server below); compute terms of its vector peak.
    Efficiency& c = t.cpu_efficiency;
    c.hbm_gemm = c.hbm_experts = c.hbm_dequant = 0.70;  // bench/RESULTS.md: batch-1 GEMV weight reads run at
                                                        // 63-82% of the same run's triad (small/medium fp8).
    c.hbm_kv = 0.70;                                    // same kernels' class (assumption).
    c.fp8_mma = 0;                                      // no FP8 math on CPUs: the dequant path is used
    c.bf16_mma = c.dequant_mma = c.attention_mma = 1.0;  // cpu_node_tflops is already an achieved figure
    c.nvlink_a2a = c.nvlink_a2a_ll = c.nvlink_allreduce = 1.0;  // shared memory: the figure is achieved
    c.nic_a2a = c.nic_a2a_ll = c.nic_allreduce = 0.9;           // TCP over Ethernet (assumption)
    // Routing imbalance (assumptions: no anchor separates it from the kernel terms). Uniform top-8
    // routing over 256 experts gives the busiest of 8 ranks ~1.05x the mean at 1k tokens; real
    // routing is skewed toward hot experts, which redundant experts placed by load mostly undo.
    t.moe = {1.30, 1.10};
    // Latency floors.
    //  kernels_per_layer 30: a decode layer is ~30 small kernels (2 norms, q_a, q norm, q_b, kv_a, kv norm,
    //      2 rope, absorb, attention, un-absorb, o, router + top-k, dispatch, grouped expert GEMMs, shared
    //      expert x4, combine, residual adds); each costs at least the engine's kernel floor.
    //  collective_intra_us 10: small-message NCCL allreduce inside an NVLink node (assumption, nccl-tests order).
    //  collective_inter_us 25: the same across nodes; ANCHORS (b) "tens of us each".
    //  p2p_intra_us 5 / p2p_inter_us 8: one message; RDMA one-way is ~1-2 us plus software (ANCHORS, UNVERIFIED).
    //  cpu_collective_us 5: MPI shared-memory collective (assumption).
    t.latency = {30, 10.0, 25.0, 5.0, 8.0, 5.0};
    // Engines: kernel floor and host time per step.
    t.engines = {
        {"deepshard", 6.0, 0.5, false, true, 0,
         "decode as CUDA graphs (DESIGN 5): the cuda-graphs floor; step overhead 0.5 ms = the coordinator round "
         "trip and engine loop measured in bench/RESULTS.md (Serving: 0.4-1.5 ms transport + wait, 60-500 us loop)"},
        {"deepshard-cpu", 20.0, 0.5, false, true, 0,
         "CPU ranks: thread-pool fork/join per op (assumption); step overhead as deepshard"},
        {"cuda-graphs", 6.0, 0.0, false, true, 0,
         "decode as CUDA graphs (SGLang, DeepSeek's own engine): the floor calibrated on TRT-LLM below"},
        {"trtllm", 6.0, 0.0, false, true, 0.30,
         "TensorRT-LLM PyTorch backend, early 2025 [T2]. Floor calibrated: 8xH200 TP8 batch 1 with MTP3 (158 tok/s "
         "per user; MTP speedup 2.16 from ANCHORS (e)) is launch-bound. Expert reads calibrated: its 8xH200 "
         "TP8/EP8+ADP run at concurrency 1024 (1,436 tok/s per GPU) reads all 32 local experts per layer"},
        {"chitu", 13.0, 0.0, true, false, 0,
         "Chitu (thu-pacman/chitu, PyTorch eager, the host waits on MoE routing every layer, a pipeline stage "
         "per node run one after another): floor calibrated on its 6x8 A800 BF16 batch-1 run (29.8 tok/s)"},
    };
    // CPU-only nodes when nothing was measured (assumption, a 2-socket server): ~200 GB/s STREAM, ~3 TFLOPS
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

DeviceSpec cpu_device(int64_t ram_bytes, double mem_bw_gbs) {
    const HardwareTable& t = hardware_table();
    DeviceSpec d;
    d.kind = DeviceKind::kCpu;
    d.name = "CPU-" + std::to_string((ram_bytes + 500'000'000) / 1'000'000'000) + "G";
    d.arch = "cpu";
    d.memory_bytes = ram_bytes;
    d.mem_bw_gbs = mem_bw_gbs > 0 ? mem_bw_gbs : t.cpu_node_mem_bw_gbs;
    d.bf16_tflops = t.cpu_node_tflops;
    d.fp8_tflops = 0;
    d.nvlink_gbs = 10;  // shared-memory copies between ranks of one host (assumption)
    d.nic_gbs = t.cpu_node_nic_gbs;
    d.nic_model = "100GbE";
    d.source = mem_bw_gbs > 0 ? "this host: memory bandwidth measured (STREAM triad)"
                              : "assumption: 2-socket server (hardware.cc)";
    return d;
}

StatusOr<EngineProfile> find_engine(std::string_view name) {
    std::string known;
    for (const auto& e : hardware_table().engines) {
        if (e.name == name) {
            return e;
        }
        known += (known.empty() ? "" : ", ") + e.name;
    }
    return invalid_argument("unknown engine profile \"" + std::string(name) + "\"; known: " + known);
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
