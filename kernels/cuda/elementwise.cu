// Elementwise and row-wise kernels: embedding gather, RMSNorm, SwiGLU, interleaved YaRN RoPE, greedy
// argmax and the BF16 conversions of the cuBLASLt path. Each mirrors a CPU twin (see cuda_kernels.h);
// only reduction order differs from the CPU, never the formula.
#include <cuda_runtime.h>

#include <cfloat>
#include <climits>

#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/launch_util.h"

namespace deepshard::kernels::cuda {

namespace {

using internal::bad_arg;
using internal::grid_for;

constexpr int kThreads = 256;

__global__ void embedding_kernel(DevWeight w, const int32_t* rows, int64_t n, float* out, int64_t ldo) {
    for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
        const int32_t id = rows[i];
        const bool valid = id >= 0 && id < w.rows;
        float* dst = out + i * ldo;
        for (int64_t c = threadIdx.x; c < w.cols; c += blockDim.x) {
            dst[c] = valid ? weight_at(w, id, c) : 0.0f;
        }
    }
}

// Sum over the block of one value per thread; every thread gets the result. blockDim.x % 32 == 0.
__device__ float block_sum(float v) {
    __shared__ float partial[32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();  // partial may still be read by a previous call
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    const int nwarps = blockDim.x / 32;
    v = lane < nwarps ? partial[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__global__ void rmsnorm_kernel(const float* x, int64_t m, int64_t n, int64_t ldx, const float* w, float eps, float* y,
                               int64_t ldy) {
    for (int64_t i = blockIdx.x; i < m; i += gridDim.x) {
        const float* xi = x + i * ldx;
        float ss = 0.0f;
        for (int64_t c = threadIdx.x; c < n; c += blockDim.x) ss += xi[c] * xi[c];
        ss = block_sum(ss);
        const float inv = 1.0f / sqrtf(ss / static_cast<float>(n) + eps);
        float* yi = y + i * ldy;
        // In place is safe: every x value was read by the reduction before this loop writes.
        for (int64_t c = threadIdx.x; c < n; c += blockDim.x) yi[c] = xi[c] * inv * w[c];
    }
}

// h += delta; y = rmsnorm(h) * w, one block per row.
__global__ void add_rmsnorm_kernel(float* h, const float* delta, int64_t m, int64_t n, const float* w, float eps,
                                   float* y) {
    for (int64_t i = blockIdx.x; i < m; i += gridDim.x) {
        float* hi = h + i * n;
        float ss = 0.0f;
        for (int64_t c = threadIdx.x; c < n; c += blockDim.x) {
            float v = hi[c];
            if (delta != nullptr) {
                v += delta[i * n + c];
                hi[c] = v;
            }
            ss += v * v;
        }
        ss = block_sum(ss);
        const float inv = 1.0f / sqrtf(ss / static_cast<float>(n) + eps);
        float* yi = y + i * n;
        // Each thread reads back only the h values it wrote itself.
        for (int64_t c = threadIdx.x; c < n; c += blockDim.x) yi[c] = hi[c] * inv * w[c];
    }
}

__global__ void residual_add_kernel(float* h, const float* x, int64_t n) {
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        h[i] += x[i];
    }
}

__global__ void gather_tokens_kernel(const float* x, int64_t ldx, const int32_t* rows, int64_t n, int64_t cols,
                                     float* out, int64_t ldo) {
    for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
        const float* src = x + static_cast<int64_t>(rows[i]) * ldx;
        for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) out[i * ldo + c] = src[c];
    }
}

// A thread per column; rows in increasing i (the CPU twin's order for every element).
__global__ void scatter_add_kernel(const float* src, int64_t lds, int64_t n, int64_t cols, const int32_t* rows,
                                   const float* w, float* y, int64_t ldy) {
    for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < cols;
         c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        for (int64_t i = 0; i < n; ++i) y[static_cast<int64_t>(rows[i]) * ldy + c] += w[i] * src[i * lds + c];
    }
}

// A warp per (row, 128-column block): 4 values per lane, amax by shuffles.
__global__ void quantize_fp8_kernel(const float* x, int64_t m, int64_t m_pad, int64_t k, int64_t ldx, uint8_t* q,
                                    float* scale, bool m_major) {
    const int64_t kb = k / 128;
    const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
    const int lane = threadIdx.x % 32;
    for (int64_t wi = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32; wi < m_pad * kb;
         wi += warps) {
        const int64_t i = wi / kb, b = wi % kb;
        float v[4];
        float amax = 0.0f;
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            v[e] = i < m ? x[i * ldx + b * 128 + lane * 4 + e] : 0.0f;
            amax = fmaxf(amax, fabsf(v[e]));
        }
        for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
        const float s = amax > 0.0f ? amax / 448.0f : 1.0f;
        uint32_t packed = 0;
#pragma unroll
        for (int e = 0; e < 4; ++e) packed |= static_cast<uint32_t>(encode_e4m3(v[e] / s)) << (8 * e);
        *reinterpret_cast<uint32_t*>(q + i * k + b * 128 + lane * 4) = packed;
        if (lane == 0) scale[m_major ? b * m_pad + i : i * kb + b] = s;
    }
}

__global__ void bf16_to_f32_kernel(const uint16_t* x, int64_t m, int64_t n, int64_t ldx, float* y, int64_t ldy,
                                   bool accumulate) {
    const int64_t total = m * n;
    for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
         idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int64_t r = idx / n, c = idx % n;
        const float v = decode_bf16(x[r * ldx + c]);
        y[r * ldy + c] = accumulate ? y[r * ldy + c] + v : v;
    }
}

__global__ void silu_mul_kernel(const float* gate, const float* up, int64_t n, float* out) {
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

__global__ void rope_kernel(float* x, int64_t T, int64_t ld_token, int64_t heads, int64_t ld_head, int64_t offset,
                            int64_t pairs, const int32_t* positions, const float* inv_freq) {
    const int64_t total = T * heads * pairs;
    for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
         idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int64_t i = idx % pairs;
        const int64_t h = (idx / pairs) % heads;
        const int64_t t = idx / (pairs * heads);
        const float angle = static_cast<float>(positions[t]) * inv_freq[i];
        float sn, cs;
        sincosf(angle, &sn, &cs);  // full-precision range reduction: positions reach 1e5+ radians
        float* v = x + t * ld_token + h * ld_head + offset + 2 * i;
        const float x0 = v[0], x1 = v[1];
        v[0] = x0 * cs - x1 * sn;
        v[1] = x0 * sn + x1 * cs;
    }
}

__device__ __forceinline__ bool better(float v, int32_t i, float bv, int32_t bi) {
    return v > bv || (v == bv && i < bi);
}

__global__ void argmax_kernel(const float* logits, int64_t rows, int64_t vocab, int64_t ld, int32_t* out) {
    __shared__ float sv[32];
    __shared__ int32_t si[32];
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* row = logits + r * ld;
        float bv = -INFINITY;
        int32_t bi = INT_MAX;
        for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
            float v = row[j];
            if (v != v) v = -INFINITY;  // NaN counts as -inf
            if (better(v, static_cast<int32_t>(j), bv, bi)) {
                bv = v;
                bi = static_cast<int32_t>(j);
            }
        }
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            const int32_t oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (better(ov, oi, bv, bi)) {
                bv = ov;
                bi = oi;
            }
        }
        const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
        __syncthreads();
        if (lane == 0) {
            sv[warp] = bv;
            si[warp] = bi;
        }
        __syncthreads();
        if (warp == 0) {
            const int nwarps = blockDim.x / 32;
            bv = lane < nwarps ? sv[lane] : -INFINITY;
            bi = lane < nwarps ? si[lane] : INT_MAX;
            for (int o = 16; o > 0; o >>= 1) {
                const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
                const int32_t oi = __shfl_xor_sync(0xffffffffu, bi, o);
                if (better(ov, oi, bv, bi)) {
                    bv = ov;
                    bi = oi;
                }
            }
            if (lane == 0) out[r] = bi == INT_MAX ? 0 : bi;
        }
    }
}

__global__ void dequant_bf16_kernel(DevWeight w, uint16_t* out) {
    const int64_t total = w.rows * w.cols;
    for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
         idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int64_t r = idx / w.cols, c = idx % w.cols;
        out[idx] = encode_bf16(weight_at(w, r, c));
    }
}

__global__ void f32_to_bf16_kernel(const float* x, int64_t m, int64_t k, int64_t ldx, uint16_t* out) {
    const int64_t total = m * k;
    for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
         idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int64_t r = idx / k, c = idx % k;
        out[idx] = encode_bf16(x[r * ldx + c]);
    }
}

}  // namespace

Status embedding(const WeightView& w, const int32_t* rows, int64_t n, float* out, int64_t ldo, cudaStream_t stream) {
    DevWeight dw{};
    DS_RETURN_IF_ERROR(internal::check_weight("embedding", w, &dw));
    if (n < 0 || ldo < w.cols || (n > 0 && (rows == nullptr || out == nullptr))) {
        return bad_arg("embedding", "need n >= 0, ldo >= cols and non-null rows/out");
    }
    if (n == 0) return ok_status();
    embedding_kernel<<<grid_for(n, 1, 65535), kThreads, 0, stream>>>(dw, rows, n, out, ldo);
    DS_CUDA_RETURN_IF_LAUNCH_ERROR("embedding_kernel");
    return ok_status();
}

Status rmsnorm(const float* x, int64_t m, int64_t n, int64_t ldx, const float* w, float eps, float* y, int64_t ldy,
               cudaStream_t stream) {
    if (m < 0 || n <= 0 || ldx < n || ldy < n || (m > 0 && (x == nullptr || w == nullptr || y == nullptr))) {
        return bad_arg("rmsnorm", "need m >= 0, n > 0, ldx/ldy >= n and non-null pointers");
    }
    if (m == 0) return ok_status();
    const int threads = n >= 4096 ? 1024 : kThreads;
    rmsnorm_kernel<<<grid_for(m, 1, 65535), threads, 0, stream>>>(x, m, n, ldx, w, eps, y, ldy);
    DS_CUDA_RETURN_IF_LAUNCH_ERROR("rmsnorm_kernel");
    return ok_status();
}

Status add_rmsnorm(float* h, const float* delta, int64_t m, int64_t n, const float* w, float eps, float* y,
                   cudaStream_t stream) {
    if (m < 0 || n <= 0 || (m > 0 && (h == nullptr || w == nullptr || y == nullptr)) || (y == h && m > 0)) {
        return bad_arg("add_rmsnorm", "need m >= 0, n > 0, non-null h/w/y and y distinct from h");
    }
    if (m == 0) return ok_status();
    const int threads = n >= 4096 ? 1024 : kThreads;
    add_rmsnorm_kernel<<<grid_for(m, 1, 65535), threads, 0, stream>>>(h, delta, m, n, w, eps, y);
    DS_CUDA_RETURN_IF_LAUNCH_ERROR("add_rmsnorm_kernel");
    return ok_status();
}

Status residual_add(float* h, const float* x, int64_t n, cudaStream_t stream) {
    if (n < 0 || (n > 0 && (h == nullptr || x == nullptr))) return bad_arg("residual_add", "need n >= 0 and non-null pointers");
    if (n == 0) return ok_status();
    residual_add_kernel<<<grid_for(n, kThreads, 1 << 16), kThreads, 0, stream>>>(h, x, n);
    DS_CUDA_RETURN_IF_LAUNCH_ERROR("residual_add_kernel");
    return ok_status();
}

Status gather_tokens(const float* x, int64_t ldx, const int32_t* rows, int64_t n, int64_t cols, float* out,
                     int64_t ldo, cudaStream_t stream) {
    if (n < 0 || cols <= 0 || ldx < cols || ldo < cols || (n > 0 && (x == nullptr || rows == nullptr || out == nullptr))) {
        return bad_arg("gather_tokens", "need n >= 0, cols > 0, ldx/ldo >= cols and non-null pointers");
    }
    if (n == 0) return ok_status();
    gather_tokens_kernel<<<grid_for(n, 1, 65535), kThreads, 0, stream>>>(x, ldx, rows, n, cols, out, ldo);
    DS_CUDA_RETURN_IF_LAUNCH_ERROR("gather_tokens_kernel");
    return ok_status();
}

Status scatter_add_weighted(const float* src, int64_t lds, int64_t n, int64_t cols, const int32_t* rows,
                            const float* w, float* y, int64_t ldy, cudaStream_t stream) {
    if (n < 0 || cols <= 0 || lds < cols || ldy < cols ||
        (n > 0 && (src == nullptr || rows == nullptr || w == nullptr || y == nullptr))) {
        return bad_arg("scatter_add_weighted", "need n >= 0, cols > 0, lds/ldy >= cols and non-null pointers");
    }
    if (n == 0) return ok_status();
    scatter_add_kernel<<<grid_for(cols, kThreads, 1 << 16), kThreads, 0, stream>>>(src, lds, n, cols, rows, w, y, ldy);
    DS_CUDA_RETURN_IF_LAUNCH_ERROR("scatter_add_kernel");
    return ok_status();
}

Status quantize_fp8_act(const float* x, int64_t m, int64_t m_pad, int64_t k, int64_t ldx, uint8_t* q, float* scale,
                        bool m_major, cudaStream_t stream) {
    if (m < 0 || m_pad < m || k <= 0 || k % 128 != 0 || ldx < k ||
        (m_pad > 0 && (q == nullptr || scale == nullptr)) || (m > 0 && x == nullptr)) {
        return bad_arg("quantize_fp8_act", "need 0 <= m <= m_pad, k a positive multiple of 128, ldx >= k and "
                                           "non-null pointers (m " + std::to_string(m) + ", k " + std::to_string(k) + ")");
    }
    if (m_pad == 0) return ok_status();
    if (reinterpret_cast<uintptr_t>(q) % 4 != 0) return bad_arg("quantize_fp8_act", "q must be 4-byte aligned");
    quantize_fp8_kernel<<<grid_for(m_pad * (k / 128), kThreads / 32, 1 << 16), kThreads, 0, stream>>>(
        x, m, m_pad, k, ldx, q, scale, m_major);
    DS_CUDA_RETURN_IF_LAUNCH_ERROR("quantize_fp8_kernel");
    return ok_status();
}

Status widen_bf16(const uint16_t* x, int64_t m, int64_t n, int64_t ldx, float* y, int64_t ldy, bool accumulate,
                   cudaStream_t stream) {
    if (m < 0 || n <= 0 || ldx < n || ldy < n || (m > 0 && (x == nullptr || y == nullptr))) {
        return bad_arg("widen_bf16", "need m >= 0, n > 0, ldx/ldy >= n and non-null pointers");
    }
    if (m == 0) return ok_status();
    bf16_to_f32_kernel<<<grid_for(m * n, kThreads, 1 << 16), kThreads, 0, stream>>>(x, m, n, ldx, y, ldy, accumulate);
    DS_CUDA_RETURN_IF_LAUNCH_ERROR("bf16_to_f32_kernel");
    return ok_status();
}

Status silu_mul(const float* gate, const float* up, int64_t n, float* out, cudaStream_t stream) {
    if (n < 0 || (n > 0 && (gate == nullptr || up == nullptr || out == nullptr))) {
        return bad_arg("silu_mul", "need n >= 0 and non-null pointers");
    }
    if (n == 0) return ok_status();
    silu_mul_kernel<<<grid_for(n, kThreads, 1 << 16), kThreads, 0, stream>>>(gate, up, n, out);
    DS_CUDA_RETURN_IF_LAUNCH_ERROR("silu_mul_kernel");
    return ok_status();
}

Status rope_interleaved(float* x, int64_t T, int64_t ld_token, int64_t heads, int64_t ld_head, int64_t offset,
                        int64_t rope_dim, const int32_t* positions, const float* inv_freq, cudaStream_t stream) {
    if (T < 0 || heads <= 0 || rope_dim <= 0 || rope_dim % 2 != 0 || offset < 0 || ld_head < offset + rope_dim ||
        ld_token < (heads - 1) * ld_head + offset + rope_dim) {
        return bad_arg("rope_interleaved", "inconsistent shape (T " + std::to_string(T) + ", heads " +
                                               std::to_string(heads) + ", ld_head " + std::to_string(ld_head) +
                                               ", offset " + std::to_string(offset) + ", rope_dim " +
                                               std::to_string(rope_dim) + ", ld_token " + std::to_string(ld_token) +
                                               ")");
    }
    if (T > 0 && (x == nullptr || positions == nullptr || inv_freq == nullptr)) {
        return bad_arg("rope_interleaved", "null pointer");
    }
    if (T == 0) return ok_status();
    const int64_t pairs = rope_dim / 2;
    rope_kernel<<<grid_for(T * heads * pairs, kThreads, 1 << 16), kThreads, 0, stream>>>(
        x, T, ld_token, heads, ld_head, offset, pairs, positions, inv_freq);
    DS_CUDA_RETURN_IF_LAUNCH_ERROR("rope_kernel");
    return ok_status();
}

Status argmax(const float* logits, int64_t rows, int64_t vocab, int64_t ld, int32_t* out, cudaStream_t stream) {
    if (rows < 0 || vocab <= 0 || vocab > INT_MAX - 1 || ld < vocab ||
        (rows > 0 && (logits == nullptr || out == nullptr))) {
        return bad_arg("argmax", "need rows >= 0, 0 < vocab < INT_MAX, ld >= vocab and non-null pointers");
    }
    if (rows == 0) return ok_status();
    argmax_kernel<<<grid_for(rows, 1, 65535), 1024, 0, stream>>>(logits, rows, vocab, ld, out);
    DS_CUDA_RETURN_IF_LAUNCH_ERROR("argmax_kernel");
    return ok_status();
}

Status dequant_to_bf16(const WeightView& w, uint16_t* out, cudaStream_t stream) {
    DevWeight dw{};
    DS_RETURN_IF_ERROR(internal::check_weight("dequant_to_bf16", w, &dw));
    if (out == nullptr) return bad_arg("dequant_to_bf16", "null output");
    dequant_bf16_kernel<<<grid_for(w.rows * w.cols, kThreads, 1 << 16), kThreads, 0, stream>>>(dw, out);
    DS_CUDA_RETURN_IF_LAUNCH_ERROR("dequant_bf16_kernel");
    return ok_status();
}

Status f32_to_bf16(const float* x, int64_t m, int64_t k, int64_t ldx, uint16_t* out, cudaStream_t stream) {
    if (m < 0 || k <= 0 || ldx < k || (m > 0 && (x == nullptr || out == nullptr))) {
        return bad_arg("f32_to_bf16", "need m >= 0, k > 0, ldx >= k and non-null pointers");
    }
    if (m == 0) return ok_status();
    f32_to_bf16_kernel<<<grid_for(m * k, kThreads, 1 << 16), kThreads, 0, stream>>>(x, m, k, ldx, out);
    DS_CUDA_RETURN_IF_LAUNCH_ERROR("f32_to_bf16_kernel");
    return ok_status();
}

}  // namespace deepshard::kernels::cuda
