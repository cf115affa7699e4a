// GEMM dispatch of the CUDA engine: which kernel computes y = x . W^T for a weight and a batch size.
//   exact precision: kernels::cuda::matmul (fp32 activations; GEMV up to 8 rows, fp32 tiles above);
//   fast precision:  the FP8 x FP8 cuBLASLt block-scaled GEMM for FP8 weights that have repacked scales
//                    (Hopper, after its self-test) at every batch size; BF16 weights: cuBLASLt BF16
//                    (sm_80+) at every batch size, the rows padded like the FP8 path's so a graph bucket
//                    and an eager batch of the same padded size run the same algorithm; other weights: up
//                    to 8 rows the 16-byte-load GEMV, above BF16 tensor cores with the weight dequantized
//                    in the kernel (sm_80+), else the fp32 tiles.
// The router GEMM always takes the exact path (routing decisions are what the golden sets pin down).
#pragma once

#include <string>

#include "kernels/cuda/cublaslt_fp8.h"
#include "kernels/cuda/moe_ops.h"
#include "kernels/weight_view.h"
#include "model/gpu/device_model.h"
#include "model/gpu/plan.h"

namespace deepshard::model::gpu {

class GemmRunner {
public:
    GemmRunner() = default;
    // lt + bf16_x: the cuBLASLt BF16 path for BF16 weights in fast precision (bf16_x holds the activations
    // rounded to BF16: gemm_rows_padded(max rows) x max k elements, zero-initialized); null = off.
    GemmRunner(bool exact, int sm_major, kernels::cuda::Fp8Gemm* fp8, const DeviceModel* model,
               const kernels::cuda::CublasLtHandle* lt = nullptr, uint16_t* bf16_x = nullptr, int64_t bf16_x_elems = 0)
        : exact_(exact), sm_major_(sm_major), fp8_(fp8), model_(model), lt_(lt), bf16_x_(bf16_x),
          bf16_x_elems_(bf16_x_elems) {}

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
    const kernels::cuda::CublasLtHandle* lt_ = nullptr;
    uint16_t* bf16_x_ = nullptr;
    int64_t bf16_x_elems_ = 0;
};

}  // namespace deepshard::model::gpu
