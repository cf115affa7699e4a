// FP8 x FP8 GEMM with DeepSeek's block scaling through cuBLASLt (Hopper, cuBLAS >= 12.9):
//   y[m, n] (+)= x[m, k] . W[n, k]^T
// with x quantized per token and 128-column block (quantize_fp8_act: CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F)
// and W the checkpoint's FP8 weight with its 128x128 block scales (weight_scale_inv:
// CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F), fp32 accumulation, fp32 output (or BF16 output widened by
// a kernel where the library offers no fp32 one).
//
// The scale-tensor layouts cuBLASLt expects are not something this code can check without a GPU, so
// Fp8Gemm::create runs a self-test on the device: a small problem with non-uniform random scales and a
// block count that needs padding, computed for each candidate layout and compared with a double-precision
// host reference; the first layout that agrees is used, and when none does (or no algorithm exists, e.g.
// before sm_90) the path reports unavailable and callers use the BF16 tensor-core kernel instead.
//
// Per call nothing is allocated and no heuristic runs: plans (descriptors + algorithm) are cached by
// (padded m, n, k, accumulate), created on first use (the engine's warm-up step, before graph capture).
// Activation buffers are sized at create() for max_m rows and max_k columns.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>

#include "common/status.h"
#include "kernels/cuda/cuda_handles.h"
#include "kernels/weight_view.h"

namespace deepshard::kernels::cuda {

// The scale layouts tried by the self-test (data layouts are fixed: W row-major [n, k] = cuBLASLt's A,
// column-major [k, n] with op T; x row-major [m, k] = B, column-major [k, m], op N).
// "Padded": the inner block count is rounded up to a multiple of 4 (16-byte rows), which PyTorch's
// _scaled_mm does for these modes; the self-test also tries the unpadded forms.
enum class Fp8WeightScaleLayout {
    kBlocksKInner,  // scale[nb][kb(_pad)]: the checkpoint's row-major grid
    kBlocksNInner,  // scale[kb][nb(_pad)]: transposed
};
enum class Fp8ActScaleLayout {
    kTokensInner,  // scale[kb][m_pad]: token-major per block (m_pad is a multiple of 16)
    kBlocksInner,  // scale[m_pad][kb(_pad)]
};

struct Fp8GemmConfig {
    Fp8WeightScaleLayout weight_layout = Fp8WeightScaleLayout::kBlocksKInner;
    bool weight_padded = true;
    Fp8ActScaleLayout act_layout = Fp8ActScaleLayout::kTokensInner;
    bool act_padded = false;
    bool f32_output = true;
};
std::string describe(const Fp8GemmConfig& c);

// Rows a call with m tokens computes (and the y / workspace rows it may write): m rounded up to a
// power of two >= 16, then to a multiple of 256 past 256 (a bounded set of plan shapes).
int64_t fp8_padded_rows(int64_t m);

// Whether a device weight view can go through this path: FP8 with its 128x128 grid aligned to the view
// (row_offset, col_offset multiples of 128), k a multiple of 128, n a multiple of 16, rows 16-byte
// aligned. Host-only check.
bool fp8_lt_compatible(const WeightView& w);

// Scale floats a weight needs in the configured layout (the repacked copy pack_weight_scales_host writes).
int64_t fp8_weight_scale_floats(const WeightView& w, const Fp8GemmConfig& c);

// Host-side repacking of the checkpoint grid blocks a view uses into the configured layout (padding
// entries are 1): `grid` is a host copy of the view's scale grid (scale_ld columns, indexed from
// row_offset / 128 and col_offset / 128 like WeightView::scale).
void pack_weight_scales_host(const WeightView& w, const float* grid, const Fp8GemmConfig& c, float* out);

class Fp8Gemm {
public:
    // Runs the self-test on the current device (kUnavailable with the reason when no layout works).
    static StatusOr<std::unique_ptr<Fp8Gemm>> create(const CublasLtHandle* handle, int64_t max_m, int64_t max_k,
                                                     int64_t max_n, cudaStream_t stream);
    ~Fp8Gemm();

    const Fp8GemmConfig& config() const { return config_; }

    // y (+)= quantize(x) . W^T with `scales` the weight's scales repacked in config().weight_layout
    // (device, fp8_weight_scale_floats). y needs fp8_padded_rows(m) rows of storage (rows past m are
    // scratch). m <= max_m, k <= max_k, n <= max_n.
    Status gemm(const WeightView& w, const float* scales, const float* x, int64_t m, int64_t ldx, float* y,
                int64_t ldy, bool accumulate, cudaStream_t stream);

    // Plans created so far (tests: no plan appears on a repeated shape).
    size_t plan_count() const { return plans_.size(); }

private:
    struct Plan;
    Fp8Gemm() = default;
    StatusOr<Plan*> plan(int64_t m_pad, int64_t n, int64_t k, int64_t lda, int64_t ldy, bool accumulate);
    Status try_config(const Fp8GemmConfig& c, cudaStream_t stream, std::string* why);

    const CublasLtHandle* handle_ = nullptr;
    int64_t max_m_ = 0, max_k_ = 0, max_n_ = 0;
    Fp8GemmConfig config_;
    DeviceBuffer act_q_, act_scale_, out_bf16_;
    std::map<std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, bool>, std::unique_ptr<Plan>> plans_;
};

}  // namespace deepshard::kernels::cuda
