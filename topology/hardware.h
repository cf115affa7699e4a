// The hardware constants the planner and the cost model use, in ONE table (hardware.cc documents
// every number and where it comes from). Devices are named like the cluster specs name them:
// "A100-40G", "A100-80G", "H100-80G", "H800-80G", "H200-141G", and CPU-only nodes "CPU-<RAM>G".
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace deepshard::topology {

enum class DeviceKind { kGpu, kCpu };

struct DeviceSpec {
    std::string name;  // canonical key, e.g. "H100-80G"
    DeviceKind kind = DeviceKind::kGpu;
    std::string arch;          // "sm_80", "sm_90", "cpu"
    int64_t memory_bytes = 0;  // per GPU (total as nvidia-smi reports it); for CPU: per node (RAM)
    double mem_bw_gbs = 0;     // peak HBM (or DDR, per node) bandwidth, GB/s (1e9 B/s)
    double bf16_tflops = 0;    // dense tensor-core peak (CPU: per node, vector units)
    double fp8_tflops = 0;     // dense FP8 tensor-core peak; 0 = no FP8 tensor cores
    double nvlink_gbs = 0;     // per GPU, per direction; 0 = none (CPU: shared-memory copy bandwidth)
    double nic_gbs = 0;        // scale-out NIC bandwidth per GPU (HGX: one NIC per GPU), per direction
    std::string nic_model;     // the NIC a node of this kind usually carries
    std::string source;        // where the numbers come from
    std::string memory_source; // where memory_bytes comes from when not the table ("" = the table)

    bool is_gpu() const { return kind == DeviceKind::kGpu; }
    bool has_fp8() const { return fp8_tflops > 0; }
};

// Achieved fractions of the peaks above, one per kernel class; hardware.cc gives each one's source
// (a published measurement, or the anchor deployment it was calibrated against).
struct Efficiency {
    // Memory-bound kernels: fraction of peak HBM (CPU: of the node's STREAM triad) bandwidth.
    double hbm_gemm = 0;       // weight-streaming GEMMs: attention projections, dense MLP, shared expert, head
    double hbm_experts = 0;    // grouped routed-expert GEMMs at decode batches (a few rows per expert)
    double hbm_dequant = 0;    // FP8 weights dequantized in software on GPUs without FP8 (W8A16 on sm_80)
    double hbm_kv = 0;         // MLA decode streaming the latent KV cache
    // Compute-bound kernels: fraction of the dense tensor (CPU: vector) peak.
    double fp8_mma = 0;        // block-scaled FP8 GEMMs
    double bf16_mma = 0;       // BF16 GEMMs
    double dequant_mma = 0;    // BF16 GEMMs on FP8 weights dequantized on the fly
    double attention_mma = 0;  // MLA attention core
    // Links: fraction of the per-direction bandwidth.
    double nvlink_a2a = 0;     // MoE dispatch/combine inside a node, batch (prefill) kernels
    double nic_a2a = 0;        // the same across nodes (RDMA), one copy per node, batch kernels
    double nvlink_a2a_ll = 0;  // low-latency (decode) dispatch/combine inside a node
    double nic_a2a_ll = 0;     // low-latency (decode) dispatch/combine across nodes, one message per rank
    double nvlink_allreduce = 0;  // NCCL allreduce / all-gather inside a node
    double nic_allreduce = 0;     // NCCL across nodes
};

// What an expert-parallel group loses to uneven routing: the busiest rank's routed tokens over the
// mean (it sets the pace of every MoE layer's GEMMs and all-to-all).
struct MoeBalance {
    double imbalance = 0;       // no redundant experts
    double imbalance_eplb = 0;  // redundant experts placed by load (EPLB)
};

struct Latencies {
    int kernels_per_layer = 0;       // kernels one decoder layer launches in a decode step
    double collective_intra_us = 0;  // fixed cost of one small allreduce / all-to-all inside a node
    double collective_inter_us = 0;  // same across nodes (RDMA)
    double p2p_intra_us = 0;         // one point-to-point message inside a node
    double p2p_inter_us = 0;         // one point-to-point message across nodes
    double cpu_collective_us = 0;    // MPI collective between CPU ranks on one host (shared memory)
};

// How an inference engine drives the device: the floor of one kernel (launch + ramp + tail: with
// CUDA graphs a few us, from Python eagerly tens) and the host work of one step (scheduling,
// batch metadata, sampling, the coordinator round trip) that the device waits for.
// Engines whose own kernels were measured override the table's kernel-class efficiencies.
struct EngineProfile {
    std::string name;
    double kernel_floor_us = 0;
    double step_overhead_ms = 0;
    bool host_sync_per_layer = false;  // the host waits for the device every layer (eager MoE routing):
                                       // launch time adds to device time instead of hiding behind it
    bool pipelined = true;             // pipeline stages work on different micro-batches at once; else
                                       // a batch goes through the stages one after another
    double hbm_experts = 0;            // > 0: this engine's routed-expert kernels' HBM efficiency
    std::string source;
};

struct HardwareTable {
    std::vector<DeviceSpec> devices;
    Efficiency efficiency;
    Efficiency cpu_efficiency;  // the same terms for CPU ranks (memory terms: of the measured triad)
    MoeBalance moe;
    Latencies latency;
    std::vector<EngineProfile> engines;  // "deepshard" (GPU ranks), "deepshard-cpu", anchors' engines
    // Host-side constants for CPU-only nodes when nothing was measured: what one node is assumed to be.
    double cpu_node_mem_bw_gbs = 0;
    double cpu_node_tflops = 0;
    double cpu_node_nic_gbs = 0;
};

const HardwareTable& hardware_table();

// Finds a device by name, case-insensitively, with unambiguous aliases ("H100" -> "H100-80G").
// "CPU-<N>G" (or "CPU-<N>T") gives a CPU-only node with N GB of RAM. Unknown names list the known ones.
StatusOr<DeviceSpec> find_device(std::string_view name);

// Maps a CUDA device name ("NVIDIA H100 80GB HBM3") and its memory to a table entry, if any.
StatusOr<DeviceSpec> device_from_gpu_name(std::string_view cuda_name, int64_t memory_bytes);

// A CPU-only node with `ram_bytes` of memory. `mem_bw_gbs` > 0: the node's measured STREAM triad
// (the cost model's CPU memory terms are fractions of it); 0: the table's assumed server.
DeviceSpec cpu_device(int64_t ram_bytes, double mem_bw_gbs = 0);

// An engine profile by name ("deepshard", "deepshard-cpu", "cuda-graphs", "python-eager"); unknown
// names list the known ones.
StatusOr<EngineProfile> find_engine(std::string_view name);

// "Y GB" with one decimal (1e9 bytes), used in every human message.
std::string format_gb(double bytes);

}  // namespace deepshard::topology
