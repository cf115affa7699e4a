// y = x * W^T with W read in its stored dtype (FP8 e4m3 + block scales, BF16, F16, F32) and fp32
// accumulation: the GPU twin of kernels::matmul and the exact path (no BF16 copy of the weights, fp32
// activations). Two kernels, each also in a grouped form for the MoE experts (moe_ops.h):
//  - a GEMV for decode batches (m <= 8; one warp per weight row, each weight element read once for all
//    m rows of x), streaming the weight in 16-byte loads (one FP8 scale per chunk) when rows are aligned;
//  - a 64x64x32 shared-memory tiled GEMM on CUDA cores for larger m.
// Tensor-core paths live in matmul_tc.cu (BF16 MMA) and cublaslt_fp8.cc (Hopper FP8).
#include <cuda_runtime.h>

#include <climits>

#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/launch_util.h"
#include "kernels/cuda/moe_ops.h"
#include "kernels/cuda/weight_load.cuh"

namespace deepshard::kernels::cuda {

namespace {

using internal::load_w;
using internal::load_w16;
using internal::Vec16;

constexpr int kGemvMaxRows = 8;
constexpr int kGemvWarps = 8;

// One warp: y[i, r] (+)= x[i, :] . W[r, :] for i < m (m <= kGemvMaxRows). VEC: 16-byte weight loads.
template <DevDType DT, bool VEC>
__device__ __forceinline__ void gemv_row(const float* __restrict__ x, int m, int64_t ldx, bool x_vec,
                                         const DevWeight& w, int64_t r, float* y, int64_t ldy, bool accumulate) {
    const int lane = threadIdx.x % 32;
    float acc[kGemvMaxRows];
#pragma unroll
    for (int i = 0; i < kGemvMaxRows; ++i) acc[i] = 0.0f;
    if constexpr (VEC) {
        constexpr int V = Vec16<DT>::kVec;
        for (int64_t c = static_cast<int64_t>(lane) * V; c < w.cols; c += 32 * V) {
            const uint4 u = load_w16<DT>(w, r, c);
            const float scale = DT == DevDType::kF8E4M3 ? weight_scale(w, r, c) : 1.0f;
            float wv[V];
            Vec16<DT>::decode(u, scale, wv);
#pragma unroll
            for (int i = 0; i < kGemvMaxRows; ++i) {
                if (i < m) {
                    const float* xr = x + i * ldx + c;
                    float a = acc[i];
                    if (x_vec) {
#pragma unroll
                        for (int e = 0; e < V; e += 4) {
                            const float4 xv = __ldg(reinterpret_cast<const float4*>(xr + e));
                            a = fmaf(xv.x, wv[e], a);
                            a = fmaf(xv.y, wv[e + 1], a);
                            a = fmaf(xv.z, wv[e + 2], a);
                            a = fmaf(xv.w, wv[e + 3], a);
                        }
                    } else {
#pragma unroll
                        for (int e = 0; e < V; ++e) a = fmaf(__ldg(xr + e), wv[e], a);
                    }
                    acc[i] = a;
                }
            }
        }
    } else {
        for (int64_t c = lane; c < w.cols; c += 32) {
            const float wv = load_w<DT>(w, r, c);
#pragma unroll
            for (int i = 0; i < kGemvMaxRows; ++i) {
                if (i < m) acc[i] += __ldg(x + i * ldx + c) * wv;
            }
        }
    }
#pragma unroll
    for (int i = 0; i < kGemvMaxRows; ++i) {
        if (i < m) {
            float v = acc[i];
            for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
            if (lane == 0) {
                float* dst = y + i * ldy + r;
                *dst = accumulate ? *dst + v : v;
            }
        }
    }
}

template <DevDType DT, bool VEC>
__global__ void gemv_kernel(const float* __restrict__ x, int m, int64_t ldx, bool x_vec, DevWeight w, float* y,
                            int64_t ldy, bool accumulate) {
    const int64_t r = static_cast<int64_t>(blockIdx.x) * kGemvWarps + threadIdx.x / 32;
    if (r >= w.rows) return;  // warp-uniform
    gemv_row<DT, VEC>(x, m, ldx, x_vec, w, r, y, ldy, accumulate);
}

// Grouped: blockIdx.y is a work item; rows of the item are contiguous in x and y.
template <DevDType DT, bool VEC>
__global__ void grouped_gemv_kernel(const float* __restrict__ x, int64_t ldx, bool x_vec, const DevWeight* experts,
                                    const MoeItem* items, const int32_t* num_items, float* y, int64_t ldy) {
    if (static_cast<int32_t>(blockIdx.y) >= *num_items) return;
    const MoeItem it = items[blockIdx.y];
    const DevWeight w = experts[it.expert];
    const int64_t r = static_cast<int64_t>(blockIdx.x) * kGemvWarps + threadIdx.x / 32;
    if (r >= w.rows) return;
    gemv_row<DT, VEC>(x + static_cast<int64_t>(it.row_begin) * ldx, it.count, ldx, x_vec, w, r,
                      y + static_cast<int64_t>(it.row_begin) * ldy, ldy, false);
}

constexpr int kTileM = 64, kTileN = 64, kTileK = 32, kTileThreads = 256;

// One block computes y[m0 + 0..63, n0 + 0..63] (+)= x . W^T, rows of x below m.
template <DevDType DT>
__device__ __forceinline__ void tiled_block(const float* __restrict__ x, int64_t m, int64_t ldx, const DevWeight& w,
                                            float* y, int64_t ldy, bool accumulate, int64_t m0, int64_t n0) {
    __shared__ float xs[kTileK][kTileM + 1];
    __shared__ float ws[kTileK][kTileN + 1];
    const int tid = threadIdx.x;
    const int ty = tid / 16, tx = tid % 16;
    const int64_t K = w.cols;
    float acc[4][4] = {};
    for (int64_t k0 = 0; k0 < K; k0 += kTileK) {
        // Load both tiles coalesced along k; out-of-range elements are zero.
        for (int idx = tid; idx < kTileM * kTileK; idx += kTileThreads) {
            const int row = idx / kTileK, col = idx % kTileK;
            const int64_t gr = m0 + row, gc = k0 + col;
            xs[col][row] = (gr < m && gc < K) ? x[gr * ldx + gc] : 0.0f;
        }
        for (int idx = tid; idx < kTileN * kTileK; idx += kTileThreads) {
            const int row = idx / kTileK, col = idx % kTileK;
            const int64_t gr = n0 + row, gc = k0 + col;
            ws[col][row] = (gr < w.rows && gc < K) ? load_w<DT>(w, gr, gc) : 0.0f;
        }
        __syncthreads();
#pragma unroll 8
        for (int kk = 0; kk < kTileK; ++kk) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = xs[kk][ty * 4 + i];
#pragma unroll
            for (int j = 0; j < 4; ++j) b[j] = ws[kk][tx * 4 + j];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int64_t gr = m0 + ty * 4 + i;
        if (gr >= m) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int64_t gc = n0 + tx * 4 + j;
            if (gc >= w.rows) continue;
            float* dst = y + gr * ldy + gc;
            *dst = accumulate ? *dst + acc[i][j] : acc[i][j];
        }
    }
}

template <DevDType DT>
__global__ void __launch_bounds__(kTileThreads) tiled_kernel(const float* __restrict__ x, int64_t m, int64_t ldx,
                                                             DevWeight w, float* y, int64_t ldy, bool accumulate) {
    tiled_block<DT>(x, m, ldx, w, y, ldy, accumulate, static_cast<int64_t>(blockIdx.y) * kTileM,
                    static_cast<int64_t>(blockIdx.x) * kTileN);
}

template <DevDType DT>
__global__ void __launch_bounds__(kTileThreads)
    grouped_tiled_kernel(const float* __restrict__ x, int64_t ldx, const DevWeight* experts, const MoeItem* items,
                         const int32_t* num_items, float* y, int64_t ldy) {
    if (static_cast<int32_t>(blockIdx.y) >= *num_items) return;
    const MoeItem it = items[blockIdx.y];
    const DevWeight w = experts[it.expert];
    tiled_block<DT>(x + static_cast<int64_t>(it.row_begin) * ldx, it.count, ldx, w,
                    y + static_cast<int64_t>(it.row_begin) * ldy, ldy, false, 0,
                    static_cast<int64_t>(blockIdx.x) * kTileN);
}

template <DevDType DT>
void launch(const float* x, int64_t m, int64_t ldx, const DevWeight& w, float* y, int64_t ldy, bool accumulate,
            cudaStream_t stream) {
    if (m <= kGemvMaxRows) {
        const unsigned blocks = static_cast<unsigned>((w.rows + kGemvWarps - 1) / kGemvWarps);
        const bool x_vec = reinterpret_cast<uintptr_t>(x) % 16 == 0 && ldx % 4 == 0;
        if (internal::weight_vec_ok(w)) {
            gemv_kernel<DT, true><<<blocks, kGemvWarps * 32, 0, stream>>>(x, static_cast<int>(m), ldx, x_vec, w, y,
                                                                          ldy, accumulate);
        } else {
            gemv_kernel<DT, false><<<blocks, kGemvWarps * 32, 0, stream>>>(x, static_cast<int>(m), ldx, x_vec, w, y,
                                                                           ldy, accumulate);
        }
    } else {
        const dim3 grid(static_cast<unsigned>((w.rows + kTileN - 1) / kTileN),
                        static_cast<unsigned>((m + kTileM - 1) / kTileM));
        tiled_kernel<DT><<<grid, kTileThreads, 0, stream>>>(x, m, ldx, w, y, ldy, accumulate);
    }
}

template <DevDType DT>
void launch_grouped(const float* x, int64_t ldx, const DevWeight* experts, bool vec, int64_t n, const MoeItem* items,
                    const int32_t* num_items, int64_t max_items, float* y, int64_t ldy, GroupedKernel kind,
                    cudaStream_t stream) {
    if (kind == GroupedKernel::kGemv) {
        const dim3 grid(static_cast<unsigned>((n + kGemvWarps - 1) / kGemvWarps), static_cast<unsigned>(max_items));
        const bool x_vec = reinterpret_cast<uintptr_t>(x) % 16 == 0 && ldx % 4 == 0;
        if (vec) {
            grouped_gemv_kernel<DT, true><<<grid, kGemvWarps * 32, 0, stream>>>(x, ldx, x_vec, experts, items,
                                                                                num_items, y, ldy);
        } else {
            grouped_gemv_kernel<DT, false><<<grid, kGemvWarps * 32, 0, stream>>>(x, ldx, x_vec, experts, items,
                                                                                 num_items, y, ldy);
        }
    } else {
        const dim3 grid(static_cast<unsigned>((n + kTileN - 1) / kTileN), static_cast<unsigned>(max_items));
        grouped_tiled_kernel<DT><<<grid, kTileThreads, 0, stream>>>(x, ldx, experts, items, num_items, y, ldy);
    }
}

}  // namespace

Status matmul(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy, bool accumulate,
              cudaStream_t stream) {
    DevWeight dw{};
    DS_RETURN_IF_ERROR(internal::check_weight("matmul", w, &dw));
    if (m < 0 || ldx < w.cols || ldy < w.rows || (m > 0 && (x == nullptr || y == nullptr))) {
        return internal::bad_arg("matmul", "need m >= 0, ldx >= k (" + std::to_string(w.cols) + "), ldy >= n (" +
                                               std::to_string(w.rows) + ") and non-null x/y");
    }
    if (w.rows > (int64_t{1} << 31) / kTileN || (m + kTileM - 1) / kTileM > 65535) {
        return internal::bad_arg("matmul", "shape exceeds the launch grid (n " + std::to_string(w.rows) + ", m " +
                                               std::to_string(m) + ")");
    }
    if (m == 0) return ok_status();
    switch (dw.dtype) {
        case DevDType::kF32: launch<DevDType::kF32>(x, m, ldx, dw, y, ldy, accumulate, stream); break;
        case DevDType::kBF16: launch<DevDType::kBF16>(x, m, ldx, dw, y, ldy, accumulate, stream); break;
        case DevDType::kF16: launch<DevDType::kF16>(x, m, ldx, dw, y, ldy, accumulate, stream); break;
        case DevDType::kF8E4M3: launch<DevDType::kF8E4M3>(x, m, ldx, dw, y, ldy, accumulate, stream); break;
    }
    DS_CUDA_RETURN_IF_LAUNCH_ERROR(m <= kGemvMaxRows ? "gemv_kernel" : "tiled_kernel");
    return ok_status();
}

int32_t grouped_item_rows(GroupedKernel kind) {
    return kind == GroupedKernel::kGemv ? kGemvMaxRows : kTileM;
}

// The tensor-core grouped kernel lives in matmul_tc.cu.
Status grouped_matmul_tc(const float* x, int64_t ldx, const DevWeight* experts, DevDType dtype, bool vec, int64_t n,
                         int64_t k, const MoeItem* items, const int32_t* num_items, int64_t max_items, float* y,
                         int64_t ldy, cudaStream_t stream);

Status grouped_matmul(const float* x, int64_t ldx, const DevWeight* experts, DevDType dtype, bool vec, int64_t n,
                      int64_t k, const MoeItem* items, const int32_t* num_items, int64_t max_items, float* y,
                      int64_t ldy, GroupedKernel kind, cudaStream_t stream) {
    if (n <= 0 || k <= 0 || ldx < k || ldy < n || max_items < 0 || max_items > 65535) {
        return internal::bad_arg("grouped_matmul", "need n, k > 0, ldx >= k, ldy >= n and 0 <= max_items <= 65535 (n " +
                                                       std::to_string(n) + ", k " + std::to_string(k) + ", max_items " +
                                                       std::to_string(max_items) + ")");
    }
    if (max_items == 0) return ok_status();
    if (x == nullptr || y == nullptr || experts == nullptr || items == nullptr || num_items == nullptr) {
        return internal::bad_arg("grouped_matmul", "null pointer");
    }
    if (n > (int64_t{1} << 31) / kTileN) return internal::bad_arg("grouped_matmul", "n exceeds the grid");
    if (kind == GroupedKernel::kTensorCore) {
        return grouped_matmul_tc(x, ldx, experts, dtype, vec, n, k, items, num_items, max_items, y, ldy, stream);
    }
    switch (dtype) {
        case DevDType::kF32:
            launch_grouped<DevDType::kF32>(x, ldx, experts, vec, n, items, num_items, max_items, y, ldy, kind, stream);
            break;
        case DevDType::kBF16:
            launch_grouped<DevDType::kBF16>(x, ldx, experts, vec, n, items, num_items, max_items, y, ldy, kind, stream);
            break;
        case DevDType::kF16:
            launch_grouped<DevDType::kF16>(x, ldx, experts, vec, n, items, num_items, max_items, y, ldy, kind, stream);
            break;
        case DevDType::kF8E4M3:
            launch_grouped<DevDType::kF8E4M3>(x, ldx, experts, vec, n, items, num_items, max_items, y, ldy, kind,
                                              stream);
            break;
    }
    DS_CUDA_RETURN_IF_LAUNCH_ERROR(kind == GroupedKernel::kGemv ? "grouped_gemv_kernel" : "grouped_tiled_kernel");
    return ok_status();
}

}  // namespace deepshard::kernels::cuda
