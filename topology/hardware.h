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

    bool is_gpu() const { return kind == DeviceKind::kGpu; }
    bool has_fp8() const { return fp8_tflops > 0; }
};

// Achievable fractions of the peaks above and the latency floors. Every field is documented in
// hardware.cc with the measurement it comes from.
struct Efficiency {
    double hbm = 0;          // fraction of peak memory bandwidth a weight-streaming GEMM reaches
    double fp8_mma = 0;      // fraction of FP8 peak reached by block-scaled FP8 GEMMs
    double bf16_mma = 0;     // fraction of BF16 peak reached by BF16 GEMMs
    double dequant_mma = 0;  // fraction of BF16 peak with FP8 weights dequantized on the fly
    double attention = 0;    // fraction of BF16 peak reached by the MLA attention kernels
    double nvlink = 0;       // fraction of NVLink per-direction bandwidth reached by collectives
    double nic = 0;          // fraction of NIC line rate reached by NCCL/RDMA
};

struct Latencies {
    double kernel_floor_us = 0;      // smallest time one GPU kernel takes (launch + ramp + tail)
    int kernels_per_layer = 0;       // kernels one decoder layer launches in a decode step
    double cpu_op_floor_us = 0;      // same floor for a CPU op (thread-pool fork/join)
    double collective_intra_us = 0;  // fixed cost of one small allreduce / all-to-all inside a node
    double collective_inter_us = 0;  // same across nodes (RDMA)
    double p2p_intra_us = 0;         // one point-to-point message inside a node
    double p2p_inter_us = 0;         // one point-to-point message across nodes
    double cpu_collective_us = 0;    // MPI collective between CPU ranks on one host (shared memory)
};

struct HardwareTable {
    std::vector<DeviceSpec> devices;
    Efficiency efficiency;
    Latencies latency;
    // Host-side constants for CPU-only nodes: what one node of that kind is assumed to be.
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

// A CPU-only node with `ram_bytes` of memory.
DeviceSpec cpu_device(int64_t ram_bytes);

// "Y GB" with one decimal (1e9 bytes), used in every human message.
std::string format_gb(double bytes);

}  // namespace deepshard::topology
