// BF16 tensor-core GEMM with weights dequantized inside the kernel (the A100 path past the GEMV; also
// the grouped expert GEMM of prefill on any sm_80+ GPU): y[m, n] (+)= x[m, k] . W[n, k]^T.
// A block computes a 64x64 tile of y with 4 warps (2x2, 32x32 each: 2x2 WMMA 16x16x16 fragments); per
// 32-wide k step it stages x (fp32 -> bf16, RNE) and W (stored dtype -> fp32 with its FP8 block scale ->
// bf16, as DeepSeek's weight_dequant rounds) in shared memory; 16-byte weight loads when rows are
// aligned. Accumulation in fp32. nvcuda::wmma keeps the fragment layouts the library's business.
#include <cuda_runtime.h>
#include <mma.h>

#include <cuda_bf16.h>

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

constexpr int kBM = 64, kBN = 64, kBK = 32, kThreads = 128;
constexpr int kLdAB = kBK + 8;  // bf16 elements per staged row (a multiple of 8, rows 16-byte aligned)
constexpr int kLdC = kBN + 4;   // floats per epilogue row

// Shared memory of a block: the staged bf16 tiles (as raw bits), reused by the fp32 epilogue tile.
struct TcTiles {
    uint16_t a[kBM][kLdAB];
    uint16_t b[kBN][kLdAB];
};
union __align__(32) TcSmem {
    TcTiles ab;
    float c[kBM][kLdC];
};

__device__ __forceinline__ uint16_t bf16_bits(float v) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(v));
}

template <DevDType DT>
__device__ __forceinline__ void tc_block(const float* __restrict__ x, int64_t m, int64_t ldx, bool x_vec,
                                         const DevWeight& w, bool w_vec, float* y, int64_t ldy, bool accumulate,
                                         int64_t m0, int64_t n0) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    using namespace nvcuda;
    __shared__ TcSmem sm;
    const int tid = threadIdx.x, warp = tid / 32;
    const int wm = warp / 2, wn = warp % 2;
    const int64_t K = w.cols;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
    }
    for (int64_t k0 = 0; k0 < K; k0 += kBK) {
        __syncthreads();  // the previous step's fragments are loaded (and the union is free)
        const bool full_k = k0 + kBK <= K;
        // x tile: 64 rows x 32 columns, 4 consecutive floats per thread-step.
        for (int idx = tid; idx < kBM * kBK / 4; idx += kThreads) {
            const int row = idx / (kBK / 4), c4 = (idx % (kBK / 4)) * 4;
            const int64_t gr = m0 + row, gc = k0 + c4;
            float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            if (gr < m) {
                if (x_vec && full_k) {
                    const float4 f = __ldg(reinterpret_cast<const float4*>(x + gr * ldx + gc));
                    v[0] = f.x;
                    v[1] = f.y;
                    v[2] = f.z;
                    v[3] = f.w;
                } else {
#pragma unroll
                    for (int e = 0; e < 4; ++e) v[e] = gc + e < K ? x[gr * ldx + gc + e] : 0.0f;
                }
            }
#pragma unroll
            for (int e = 0; e < 4; ++e) sm.ab.a[row][c4 + e] = bf16_bits(v[e]);
        }
        // W tile: 64 rows x 32 columns.
        if (w_vec && full_k) {
            constexpr int V = Vec16<DT>::kVec;
            for (int idx = tid; idx < kBN * (kBK / V); idx += kThreads) {
                const int row = idx / (kBK / V), cv = (idx % (kBK / V)) * V;
                const int64_t gr = n0 + row, gc = k0 + cv;
                float v[V];
                if (gr < w.rows) {
                    const float scale = DT == DevDType::kF8E4M3 ? weight_scale(w, gr, gc) : 1.0f;
                    Vec16<DT>::decode(load_w16<DT>(w, gr, gc), scale, v);
                } else {
#pragma unroll
                    for (int e = 0; e < V; ++e) v[e] = 0.0f;
                }
#pragma unroll
                for (int e = 0; e < V; ++e) sm.ab.b[row][cv + e] = bf16_bits(v[e]);
            }
        } else {
            for (int idx = tid; idx < kBN * kBK; idx += kThreads) {
                const int row = idx / kBK, col = idx % kBK;
                const int64_t gr = n0 + row, gc = k0 + col;
                sm.ab.b[row][col] = bf16_bits(gr < w.rows && gc < K ? load_w<DT>(w, gr, gc) : 0.0f);
            }
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < kBK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb[2];
#pragma unroll
            for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], reinterpret_cast<const __nv_bfloat16*>(&sm.ab.a[wm * 32 + i * 16][kk]), kLdAB);
            // B = W^T: element (k, n) is W[n][k] = b[n][k], i.e. column-major with leading dimension kLdAB.
#pragma unroll
            for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], reinterpret_cast<const __nv_bfloat16*>(&sm.ab.b[wn * 32 + j * 16][kk]), kLdAB);
#pragma unroll
            for (int i = 0; i < 2; ++i) {
#pragma unroll
                for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
            }
        }
    }
    __syncthreads();  // done with a/b: the epilogue reuses the space
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            wmma::store_matrix_sync(&sm.c[wm * 32 + i * 16][wn * 32 + j * 16], acc[i][j], kLdC, wmma::mem_row_major);
        }
    }
    __syncthreads();
    for (int idx = tid; idx < kBM * kBN; idx += kThreads) {
        const int row = idx / kBN, col = idx % kBN;
        const int64_t gr = m0 + row, gc = n0 + col;
        if (gr < m && gc < w.rows) {
            float* dst = y + gr * ldy + gc;
            *dst = accumulate ? *dst + sm.c[row][col] : sm.c[row][col];
        }
    }
#endif
}

template <DevDType DT>
__global__ void __launch_bounds__(kThreads) tc_kernel(const float* __restrict__ x, int64_t m, int64_t ldx, bool x_vec,
                                                      DevWeight w, bool w_vec, float* y, int64_t ldy, bool accumulate) {
    tc_block<DT>(x, m, ldx, x_vec, w, w_vec, y, ldy, accumulate, static_cast<int64_t>(blockIdx.y) * kBM,
                 static_cast<int64_t>(blockIdx.x) * kBN);
}

template <DevDType DT>
__global__ void __launch_bounds__(kThreads)
    grouped_tc_kernel(const float* __restrict__ x, int64_t ldx, bool x_vec, const DevWeight* experts, bool w_vec,
                      const MoeItem* items, const int32_t* num_items, float* y, int64_t ldy) {
    if (static_cast<int32_t>(blockIdx.y) >= *num_items) return;
    const MoeItem it = items[blockIdx.y];
    const DevWeight w = experts[it.expert];
    tc_block<DT>(x + static_cast<int64_t>(it.row_begin) * ldx, it.count, ldx, x_vec, w, w_vec,
                 y + static_cast<int64_t>(it.row_begin) * ldy, ldy, false, 0, static_cast<int64_t>(blockIdx.x) * kBN);
}

Status require_sm80(const char* op) {
    int device = 0, major = 0;
    DS_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
    DS_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    if (major < 8) {
        return unavailable(std::string("cuda::") + op + ": BF16 tensor cores need compute capability 8.0+, device " +
                           std::to_string(device) + " has " + std::to_string(major) + ".x");
    }
    return ok_status();
}

}  // namespace

Status matmul_tc(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy, bool accumulate,
                 cudaStream_t stream) {
    const char* op = "matmul_tc";
    DevWeight dw{};
    DS_RETURN_IF_ERROR(internal::check_weight(op, w, &dw));
    if (m < 0 || ldx < w.cols || ldy < w.rows || (m > 0 && (x == nullptr || y == nullptr))) {
        return internal::bad_arg(op, "need m >= 0, ldx >= k, ldy >= n and non-null x/y");
    }
    if (w.rows > (int64_t{1} << 31) / kBN || (m + kBM - 1) / kBM > 65535) {
        return internal::bad_arg(op, "shape exceeds the launch grid");
    }
    if (m == 0) return ok_status();
    DS_RETURN_IF_ERROR(require_sm80(op));
    const bool x_vec = reinterpret_cast<uintptr_t>(x) % 16 == 0 && ldx % 4 == 0;
    const bool w_vec = internal::weight_vec_ok(dw);
    const dim3 grid(static_cast<unsigned>((w.rows + kBN - 1) / kBN), static_cast<unsigned>((m + kBM - 1) / kBM));
    switch (dw.dtype) {
        case DevDType::kF32:
            tc_kernel<DevDType::kF32><<<grid, kThreads, 0, stream>>>(x, m, ldx, x_vec, dw, w_vec, y, ldy, accumulate);
            break;
        case DevDType::kBF16:
            tc_kernel<DevDType::kBF16><<<grid, kThreads, 0, stream>>>(x, m, ldx, x_vec, dw, w_vec, y, ldy, accumulate);
            break;
        case DevDType::kF16:
            tc_kernel<DevDType::kF16><<<grid, kThreads, 0, stream>>>(x, m, ldx, x_vec, dw, w_vec, y, ldy, accumulate);
            break;
        case DevDType::kF8E4M3:
            tc_kernel<DevDType::kF8E4M3><<<grid, kThreads, 0, stream>>>(x, m, ldx, x_vec, dw, w_vec, y, ldy,
                                                                        accumulate);
            break;
    }
    DS_CUDA_RETURN_IF_LAUNCH_ERROR("tc_kernel");
    return ok_status();
}

Status grouped_matmul_tc(const float* x, int64_t ldx, const DevWeight* experts, DevDType dtype, bool vec, int64_t n,
                         int64_t /*k*/, const MoeItem* items, const int32_t* num_items, int64_t max_items, float* y,
                         int64_t ldy, cudaStream_t stream) {
    DS_RETURN_IF_ERROR(require_sm80("grouped_matmul"));
    const bool x_vec = reinterpret_cast<uintptr_t>(x) % 16 == 0 && ldx % 4 == 0;
    const dim3 grid(static_cast<unsigned>((n + kBN - 1) / kBN), static_cast<unsigned>(max_items));
    switch (dtype) {
        case DevDType::kF32:
            grouped_tc_kernel<DevDType::kF32><<<grid, kThreads, 0, stream>>>(x, ldx, x_vec, experts, vec, items,
                                                                             num_items, y, ldy);
            break;
        case DevDType::kBF16:
            grouped_tc_kernel<DevDType::kBF16><<<grid, kThreads, 0, stream>>>(x, ldx, x_vec, experts, vec, items,
                                                                              num_items, y, ldy);
            break;
        case DevDType::kF16:
            grouped_tc_kernel<DevDType::kF16><<<grid, kThreads, 0, stream>>>(x, ldx, x_vec, experts, vec, items,
                                                                             num_items, y, ldy);
            break;
        case DevDType::kF8E4M3:
            grouped_tc_kernel<DevDType::kF8E4M3><<<grid, kThreads, 0, stream>>>(x, ldx, x_vec, experts, vec, items,
                                                                                num_items, y, ldy);
            break;
    }
    DS_CUDA_RETURN_IF_LAUNCH_ERROR("grouped_tc_kernel");
    return ok_status();
}

}  // namespace deepshard::kernels::cuda
