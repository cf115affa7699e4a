// GEMM dispatch (see gemm.h).
#include "model/gpu/gemm.h"

#include "common/dtype.h"
#include "kernels/cuda/cuda_kernels.h"

namespace deepshard::model::gpu {

namespace kc = kernels::cuda;

namespace {
constexpr int64_t kGemvRows = 8;  // kernels::cuda::matmul's GEMV limit
}

Status GemmRunner::run_exact(const kernels::WeightView& w, const float* x, int64_t m, int64_t ldx, float* y,
                             int64_t ldy, bool accumulate, cudaStream_t stream) const {
    return kc::matmul(x, m, ldx, w, y, ldy, accumulate, stream);
}

Status GemmRunner::run(const kernels::WeightView& w, const float* x, int64_t m, int64_t ldx, float* y, int64_t ldy,
                       bool accumulate, cudaStream_t stream) const {
    if (exact_) return kc::matmul(x, m, ldx, w, y, ldy, accumulate, stream);
    // FP8 cuBLASLt at every batch size, decode included: on an H200 it beat our fp32-activation GEMV at
    // every DeepSeek-V3 shape at m = 1 (1.0-3.2x; bench/RESULTS.md "GPU check") and by 2-13x at m = 8.
    if (fp8_ != nullptr && model_ != nullptr) {
        if (const float* scales = model_->lt_scales(w)) {
            return fp8_->gemm(w, scales, x, m, ldx, y, ldy, accumulate, stream);
        }
    }
    // BF16 weights: cuBLASLt BF16, 1.7-30x our own kernels on an H200 at every measured shape and batch.
    if (lt_ != nullptr && bf16_x_ != nullptr && w.dtype == DType::kBF16 && sm_major_ >= 8) {
        const int64_t k = w.cols, m_pad = gemm_rows_padded(m);
        if (m_pad * k <= bf16_x_elems_) {
            DS_RETURN_IF_ERROR(kc::f32_to_bf16(x, m, k, ldx, bf16_x_, stream));
            return kc::gemm_bf16(*lt_, bf16_x_, m_pad, k, static_cast<const uint16_t*>(w.data), w.rows, k, w.ld, y,
                                 ldy, accumulate, stream);
        }
    }
    if (m <= kGemvRows) return kc::matmul(x, m, ldx, w, y, ldy, accumulate, stream);
    if (sm_major_ >= 8) return kc::matmul_tc(x, m, ldx, w, y, ldy, accumulate, stream);
    return kc::matmul(x, m, ldx, w, y, ldy, accumulate, stream);
}

kc::GroupedKernel GemmRunner::grouped(int64_t tokens, int64_t experts, int64_t top_k) const {
    if (tokens * top_k <= kGemvRows * experts) return kc::GroupedKernel::kGemv;
    if (exact_ || sm_major_ < 8) return kc::GroupedKernel::kTiled;
    return kc::GroupedKernel::kTensorCore;
}

std::string GemmRunner::describe() const {
    if (exact_) return "exact (fp32 activations, weights dequantized in the kernels)";
    std::string s = "fast (";
    if (fp8_ != nullptr) s += "FP8 cuBLASLt block-scaled [" + kc::describe(fp8_->config()) + "] for FP8 weights, ";
    if (lt_ != nullptr && bf16_x_ != nullptr && sm_major_ >= 8) s += "cuBLASLt BF16 for BF16 weights, ";
    s += "GEMV <= 8 rows";
    s += sm_major_ >= 8 ? ", BF16 tensor cores above" : ", fp32 tiles above";
    return s + ")";
}

}  // namespace deepshard::model::gpu
