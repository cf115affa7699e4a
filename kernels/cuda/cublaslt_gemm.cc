// cuBLASLt BF16 GEMM (fp32 output, fp32 tensor-core accumulation) and the official DeepSeek "bf16"
// matmul built on it: FP8 weights dequantized with their block scales, rounded once to BF16.
// Row-major y[m,n] = x[m,k] * W[n,k]^T is the column-major D[n,m] = op(A)[n,k] * B[k,m] with A = W seen
// as column-major [k,n] (transposed) and B = x seen as column-major [k,m].
#include <cstdint>
#include <memory>
#include <utility>

#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/launch_util.h"

namespace deepshard::kernels::cuda {

namespace {

struct DescDeleter {
    void operator()(cublasLtMatmulDescOpaque_t* d) const noexcept { cublasLtMatmulDescDestroy(d); }
    void operator()(cublasLtMatrixLayoutOpaque_t* d) const noexcept { cublasLtMatrixLayoutDestroy(d); }
    void operator()(cublasLtMatmulPreferenceOpaque_t* d) const noexcept { cublasLtMatmulPreferenceDestroy(d); }
};
using MatmulDesc = std::unique_ptr<cublasLtMatmulDescOpaque_t, DescDeleter>;
using Layout = std::unique_ptr<cublasLtMatrixLayoutOpaque_t, DescDeleter>;
using Preference = std::unique_ptr<cublasLtMatmulPreferenceOpaque_t, DescDeleter>;

StatusOr<Layout> make_layout(cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld) {
    cublasLtMatrixLayout_t l = nullptr;
    DS_CUBLAS_RETURN_IF_ERROR(
        cublasLtMatrixLayoutCreate(&l, type, static_cast<uint64_t>(rows), static_cast<uint64_t>(cols), ld));
    return Layout(l);
}

// Largest power of two (<= 256) dividing the address.
uint32_t pointer_alignment(const void* p) {
    const auto v = reinterpret_cast<uintptr_t>(p);
    uint32_t a = 256;
    while (a > 1 && (v % a) != 0) a /= 2;
    return a;
}

size_t align_up(size_t v, size_t a) {
    return (v + a - 1) / a * a;
}

}  // namespace

Status gemm_bf16(const CublasLtHandle& handle, const uint16_t* x, int64_t m, int64_t ldx, const uint16_t* w, int64_t n,
                 int64_t k, int64_t ldw, float* y, int64_t ldy, bool accumulate, cudaStream_t stream) {
    if (handle.get() == nullptr) return internal::bad_arg("gemm_bf16", "empty cuBLASLt handle");
    if (m < 0 || n <= 0 || k <= 0 || ldx < k || ldw < k || ldy < n ||
        (m > 0 && (x == nullptr || w == nullptr || y == nullptr))) {
        return internal::bad_arg("gemm_bf16", "need m >= 0, n, k > 0, ldx/ldw >= k, ldy >= n and non-null pointers");
    }
    if (m == 0) return ok_status();

    cublasLtMatmulDesc_t op_raw = nullptr;
    DS_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescCreate(&op_raw, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    MatmulDesc op(op_raw);
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    DS_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(op.get(), CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    DS_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(op.get(), CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));

    DS_ASSIGN_OR_RETURN(Layout a, make_layout(CUDA_R_16BF, k, n, ldw));
    DS_ASSIGN_OR_RETURN(Layout b, make_layout(CUDA_R_16BF, k, m, ldx));
    DS_ASSIGN_OR_RETURN(Layout c, make_layout(CUDA_R_32F, n, m, ldy));

    cublasLtMatmulPreference_t pref_raw = nullptr;
    DS_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulPreferenceCreate(&pref_raw));
    Preference pref(pref_raw);
    const uint64_t ws = handle.workspace_bytes();
    DS_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulPreferenceSetAttribute(
        pref.get(), CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    // The heuristic assumes 256-byte aligned pointers unless told otherwise; views into a checkpoint
    // (column slices) can be less aligned, and an algorithm picked for more would fail or misread.
    const std::pair<cublasLtMatmulPreferenceAttributes_t, const void*> aligns[] = {
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, w},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, x},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, y},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, y}};
    for (const auto& [attr, ptr] : aligns) {
        const uint32_t a = pointer_alignment(ptr);
        DS_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulPreferenceSetAttribute(pref.get(), attr, &a, sizeof(a)));
    }

    cublasLtMatmulHeuristicResult_t heur{};
    int found = 0;
    DS_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulAlgoGetHeuristic(handle.get(), op.get(), a.get(), b.get(), c.get(),
                                                             c.get(), pref.get(), 1, &heur, &found));
    if (found == 0) {
        return Status(StatusCode::kCuda, "gemm_bf16: cuBLASLt has no algorithm for m=" + std::to_string(m) +
                                             " n=" + std::to_string(n) + " k=" + std::to_string(k));
    }
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    DS_CUBLAS_RETURN_IF_ERROR(cublasLtMatmul(handle.get(), op.get(), &alpha, w, a.get(), x, b.get(), &beta, y, c.get(),
                                             y, c.get(), &heur.algo, handle.workspace(), ws, stream));
    return ok_status();
}

Status matmul_bf16(const CublasLtHandle& handle, const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y,
                   int64_t ldy, bool accumulate, DeviceBuffer& scratch, cudaStream_t stream) {
    DevWeight dw{};
    DS_RETURN_IF_ERROR(internal::check_weight("matmul_bf16", w, &dw));
    const int64_t n = w.rows, k = w.cols;
    if (m < 0 || ldx < k || ldy < n || (m > 0 && (x == nullptr || y == nullptr))) {
        return internal::bad_arg("matmul_bf16", "need m >= 0, ldx >= k, ldy >= n and non-null x/y");
    }
    if (m == 0) return ok_status();
    // BF16 weights are used in place; anything else gets a dense BF16 copy after x's.
    const bool direct = w.dtype == DType::kBF16;
    const size_t x_bytes = align_up(static_cast<size_t>(m * k) * 2, 256);
    const size_t w_bytes = direct ? 0 : static_cast<size_t>(n * k) * 2;
    DS_RETURN_IF_ERROR(scratch.reserve(x_bytes + w_bytes));
    auto* xb = static_cast<uint16_t*>(scratch.get());
    DS_RETURN_IF_ERROR(f32_to_bf16(x, m, k, ldx, xb, stream));
    const uint16_t* wb = static_cast<const uint16_t*>(w.data);
    int64_t ldw = w.ld;
    if (!direct) {
        auto* wd = reinterpret_cast<uint16_t*>(static_cast<char*>(scratch.get()) + x_bytes);
        DS_RETURN_IF_ERROR(dequant_to_bf16(w, wd, stream));
        wb = wd;
        ldw = k;
    }
    return gemm_bf16(handle, xb, m, k, wb, n, k, ldw, y, ldy, accumulate, stream);
}

}  // namespace deepshard::kernels::cuda
