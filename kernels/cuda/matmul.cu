// y = x * W^T with W read in its stored dtype (FP8 e4m3 + block scales, BF16, F16, F32) and fp32
// accumulation: the GPU twin of kernels::matmul and the A100 path (no BF16 copy of the weights).
// Two straightforward kernels: a GEMV for decode batches (m <= 8; one warp per weight row, each
// weight element read once for all m rows of x) and a 64x64x32 shared-memory tiled GEMM for prefill.
// Correctness first: neither uses tensor cores or vector loads yet (see the report / TODO).
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/launch_util.h"

namespace deepshard::kernels::cuda {

namespace {

constexpr int kGemvMaxRows = 8;
constexpr int kGemvWarps = 8;

template <DevDType DT>
__device__ __forceinline__ float load_w(const DevWeight& w, int64_t r, int64_t c) {
    const int64_t i = r * w.ld + c;
    if constexpr (DT == DevDType::kF32) {
        return static_cast<const float*>(w.data)[i];
    } else if constexpr (DT == DevDType::kBF16) {
        return decode_bf16(static_cast<const uint16_t*>(w.data)[i]);
    } else if constexpr (DT == DevDType::kF16) {
        return decode_f16(static_cast<const uint16_t*>(w.data)[i]);
    } else {
        return decode_e4m3(static_cast<const uint8_t*>(w.data)[i]) * weight_scale(w, r, c);
    }
}

template <DevDType DT>
__global__ void gemv_kernel(const float* __restrict__ x, int m, int64_t ldx, DevWeight w, float* y, int64_t ldy,
                            bool accumulate) {
    const int lane = threadIdx.x % 32;
    const int64_t r = static_cast<int64_t>(blockIdx.x) * kGemvWarps + threadIdx.x / 32;
    if (r >= w.rows) {
        return;  // whole warp leaves together: r is warp-uniform
    }
    float acc[kGemvMaxRows];
#pragma unroll
    for (int i = 0; i < kGemvMaxRows; ++i) acc[i] = 0.0f;
    for (int64_t c = lane; c < w.cols; c += 32) {
        const float wv = load_w<DT>(w, r, c);
#pragma unroll
        for (int i = 0; i < kGemvMaxRows; ++i) {
            if (i < m) acc[i] += __ldg(x + i * ldx + c) * wv;
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

constexpr int kTileM = 64, kTileN = 64, kTileK = 32, kTileThreads = 256;

template <DevDType DT>
__global__ void __launch_bounds__(kTileThreads) tiled_kernel(const float* __restrict__ x, int64_t m, int64_t ldx,
                                                             DevWeight w, float* y, int64_t ldy, bool accumulate) {
    __shared__ float xs[kTileK][kTileM + 1];
    __shared__ float ws[kTileK][kTileN + 1];
    const int tid = threadIdx.x;
    const int ty = tid / 16, tx = tid % 16;
    const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kTileM;
    const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kTileN;
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
void launch(const float* x, int64_t m, int64_t ldx, const DevWeight& w, float* y, int64_t ldy, bool accumulate,
            cudaStream_t stream) {
    if (m <= kGemvMaxRows) {
        const unsigned blocks = static_cast<unsigned>((w.rows + kGemvWarps - 1) / kGemvWarps);
        gemv_kernel<DT><<<blocks, kGemvWarps * 32, 0, stream>>>(x, static_cast<int>(m), ldx, w, y, ldy, accumulate);
    } else {
        const dim3 grid(static_cast<unsigned>((w.rows + kTileN - 1) / kTileN),
                        static_cast<unsigned>((m + kTileM - 1) / kTileM));
        tiled_kernel<DT><<<grid, kTileThreads, 0, stream>>>(x, m, ldx, w, y, ldy, accumulate);
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

}  // namespace deepshard::kernels::cuda
