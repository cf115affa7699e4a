// GEMM dispatch of the CUDA engine: which kernel computes y = x . W^T for a weight and a batch size.
//   exact precision: kernels::cuda::matmul (fp32 activations; GEMV up to 8 rows, fp32 tiles above);
//   fast precision:  the FP8 x FP8 cuBLASLt block-scaled GEMM for FP8 weights that have repacked scales
//                    (Hopper, after its self-test) at every batch size; other weights: up to 8 rows the
//                    16-byte-load GEMV, above BF16 tensor cores with the weight dequantized in the kernel
//                    (sm_80+), else the fp32 tiles.
// The router GEMM always takes the exact path (routing decisions are what the golden sets pin down).
#pragma once

#include <string>

#include "kernels/cuda/cublaslt_fp8.h"
#include "kernels/cuda/moe_ops.h"
#include "kernels/weight_view.h"
#include "model/gpu/device_model.h"

namespace deepshard::model::gpu {

class GemmRunner {
public:
    GemmRunner() = default;
    GemmRunner(bool exact, int sm_major, kernels::cuda::Fp8Gemm* fp8, const DeviceModel* model)
        : exact_(exact), sm_major_(sm_major), fp8_(fp8), model_(model) {}

    // y[m, n] (+)= x[m, k] . W^T. y must have gemm_rows_padded(m) rows of storage (the FP8 path pads).
    Status run(const kernels::WeightView& w, const float* x, int64_t m, int64_t ldx, float* y, int64_t ldy,
               bool accumulate, cudaStream_t stream) const;
    // Always the exact kernels.
    Status run_exact(const kernels::WeightView& w, const float* x, int64_t m, int64_t ldx, float* y, int64_t ldy,
                     bool accumulate, cudaStream_t stream) const;
    // The grouped-GEMM kernel for an MoE layer of `tokens` tokens.
    kernels::cuda::GroupedKernel grouped(int64_t tokens, int64_t experts, int64_t top_k) const;
    std::string describe() const;

private:
    bool exact_ = true;
    int sm_major_ = 0;
    kernels::cuda::Fp8Gemm* fp8_ = nullptr;
    const DeviceModel* model_ = nullptr;
};

}  // namespace deepshard::model::gpu
