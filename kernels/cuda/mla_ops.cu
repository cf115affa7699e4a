// MLA ops around the attention (see mla_ops.h): latent-cache write and the W_UK / W_UV absorptions.
// The absorptions stream the local heads' rows of kv_b_proj once per group of tokens (16 for W_UK,
// 8 for W_UV), so a decode batch reads the weight once; prefill re-reads it from L2 per group.
#include <cuda_runtime.h>

#include <climits>
#include <string>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/launch_util.h"
#include "kernels/cuda/mla_ops.h"

namespace deepshard::kernels::cuda {

namespace {

using internal::bad_arg;

constexpr int kWriteThreads = 128;

__device__ float block_sum_128(float v, float* partial) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = 0.0f;
    for (int w = 0; w < kWriteThreads / 32; ++w) v += partial[w];
    return v;
}

template <typename T>
__device__ __forceinline__ T to_cache(float v);
template <>
__device__ __forceinline__ float to_cache<float>(float v) {
    return v;
}
template <>
__device__ __forceinline__ uint16_t to_cache<uint16_t>(float v) {
    return encode_bf16(v);
}

template <typename T>
__global__ void __launch_bounds__(kWriteThreads)
    cache_write_kernel(float* kv, int64_t ld, const float* norm_w, float eps, const int32_t* positions,
                       const float* inv_freq, MlaCache cache, const int32_t* tables, int64_t num_rows,
                       int32_t max_blocks, const int32_t* table_rows) {
    __shared__ float partial[kWriteThreads / 32];
    const int64_t t = blockIdx.x;
    const int R = cache.latent_dim, rd = cache.rope_dim;
    float* row = kv + t * ld;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < R; c += kWriteThreads) ss += row[c] * row[c];
    ss = block_sum_128(ss, partial);
    const float inv = 1.0f / sqrtf(ss / static_cast<float>(R) + eps);
    const int32_t pos = positions[t];
    // Where the row goes (nullptr: nowhere, a bad table entry).
    T* dst = nullptr;
    const int32_t r = table_rows[t];
    if (r >= 0 && r < num_rows && pos >= 0 && pos / cache.block_size < max_blocks) {
        const int32_t id = tables[static_cast<int64_t>(r) * max_blocks + pos / cache.block_size];
        if (id >= 0 && id < cache.num_blocks) {
            dst = const_cast<T*>(static_cast<const T*>(cache.data)) + id * cache.block_stride +
                  (pos % cache.block_size) * cache.token_stride;
        }
    }
    // Every thread read its latent values for the reduction above; each writes only its own again.
    for (int c = threadIdx.x; c < R; c += kWriteThreads) {
        const float v = row[c] * inv * norm_w[c];
        row[c] = v;
        if (dst != nullptr) dst[c] = to_cache<T>(v);
    }
    for (int i = threadIdx.x; i < rd / 2; i += kWriteThreads) {
        const float angle = static_cast<float>(pos) * inv_freq[i];
        float sn, cs;
        sincosf(angle, &sn, &cs);
        float* v = row + R + 2 * i;
        const float x0 = v[0], x1 = v[1];
        const float y0 = x0 * cs - x1 * sn, y1 = x0 * sn + x1 * cs;
        v[0] = y0;
        v[1] = y1;
        if (dst != nullptr) {
            dst[R + 2 * i] = to_cache<T>(y0);
            dst[R + 2 * i + 1] = to_cache<T>(y1);
        }
    }
}

constexpr int kAbsorbQTokens = 16, kAbsorbQThreads = 128, kAbsorbQMaxNope = 256;

// Block (head h, 128 latent columns); tokens in groups of kAbsorbQTokens with their q_nope in shared memory.
__global__ void __launch_bounds__(kAbsorbQThreads)
    absorb_q_kernel(const float* q, int64_t T, int64_t ld_token, int64_t ld_head, int64_t nope, DevWeight w,
                    int64_t head_rows, int64_t heads, float* q_lat) {
    __shared__ float sq[kAbsorbQTokens][kAbsorbQMaxNope];
    const int64_t h = blockIdx.x;
    const int64_t R = w.cols;
    const int64_t r = static_cast<int64_t>(blockIdx.y) * kAbsorbQThreads + threadIdx.x;
    for (int64_t t0 = 0; t0 < T; t0 += kAbsorbQTokens) {
        const int n = static_cast<int>(T - t0 < kAbsorbQTokens ? T - t0 : kAbsorbQTokens);
        __syncthreads();
        for (int idx = threadIdx.x; idx < n * nope; idx += kAbsorbQThreads) {
            const int i = idx / static_cast<int>(nope), d = idx % static_cast<int>(nope);
            sq[i][d] = q[(t0 + i) * ld_token + h * ld_head + d];
        }
        __syncthreads();
        if (r >= R) continue;
        float acc[kAbsorbQTokens];
#pragma unroll
        for (int i = 0; i < kAbsorbQTokens; ++i) acc[i] = 0.0f;
        for (int64_t d = 0; d < nope; ++d) {
            const float wv = weight_at(w, h * head_rows + d, r);
#pragma unroll
            for (int i = 0; i < kAbsorbQTokens; ++i) acc[i] = fmaf(sq[i][d], wv, acc[i]);
        }
        for (int i = 0; i < n; ++i) q_lat[((t0 + i) * heads + h) * R + r] = acc[i];
    }
}

constexpr int kAbsorbOTokens = 8, kAbsorbOWarps = 8;

// Block (head h, kAbsorbOWarps output columns j): a warp per j, lanes over the latent; tokens in groups
// of kAbsorbOTokens with their o_lat rows in shared memory (dynamic: kAbsorbOTokens * latent floats).
__global__ void __launch_bounds__(kAbsorbOWarps * 32)
    absorb_out_kernel(const float* o_lat, int64_t T, int64_t heads, DevWeight w, int64_t head_rows, int64_t nope,
                      int64_t v, float* o) {
    extern __shared__ float so[];  // [kAbsorbOTokens][R]
    const int64_t h = blockIdx.x;
    const int64_t R = w.cols;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t j = static_cast<int64_t>(blockIdx.y) * kAbsorbOWarps + warp;
    for (int64_t t0 = 0; t0 < T; t0 += kAbsorbOTokens) {
        const int n = static_cast<int>(T - t0 < kAbsorbOTokens ? T - t0 : kAbsorbOTokens);
        __syncthreads();
        for (int64_t idx = threadIdx.x; idx < n * R; idx += blockDim.x) {
            const int64_t i = idx / R, c = idx % R;
            so[i * R + c] = o_lat[((t0 + i) * heads + h) * R + c];
        }
        __syncthreads();
        if (j >= v) continue;  // warp-uniform
        float acc[kAbsorbOTokens];
#pragma unroll
        for (int i = 0; i < kAbsorbOTokens; ++i) acc[i] = 0.0f;
        const int64_t wrow = h * head_rows + nope + j;
        for (int64_t c = lane; c < R; c += 32) {
            const float wv = weight_at(w, wrow, c);
#pragma unroll
            for (int i = 0; i < kAbsorbOTokens; ++i) acc[i] = fmaf(so[i * R + c], wv, acc[i]);
        }
#pragma unroll
        for (int i = 0; i < kAbsorbOTokens; ++i) {
            float s = acc[i];
            for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
            if (lane == 0 && i < n) o[(t0 + i) * heads * v + h * v + j] = s;
        }
    }
}

}  // namespace

Status mla_cache_write(float* kv, int64_t T, int64_t ld, const float* norm_w, float eps, const int32_t* positions,
                       const float* inv_freq, const MlaCache& cache, const int32_t* block_tables,
                       int64_t num_table_rows, int32_t max_blocks_per_seq, const int32_t* table_rows,
                       cudaStream_t stream) {
    const char* op = "mla_cache_write";
    const int64_t R = cache.latent_dim, rd = cache.rope_dim;
    if (T < 0) return bad_arg(op, "T is negative");
    if (R <= 0 || rd < 0 || rd % 2 != 0) {
        return bad_arg(op, "cache.latent_dim must be positive and cache.rope_dim even (got " + std::to_string(R) +
                               ", " + std::to_string(rd) + ")");
    }
    if (ld < R + rd) return bad_arg(op, "ld " + std::to_string(ld) + " is below latent_dim + rope_dim");
    if (cache.token_stride < R + rd || cache.block_size <= 0 || cache.num_blocks <= 0) {
        return bad_arg(op, "cache.token_stride / block_size / num_blocks inconsistent");
    }
    if (cache.dtype != KvDType::kF32 && cache.dtype != KvDType::kBF16) return bad_arg(op, "cache.dtype unknown");
    if (max_blocks_per_seq <= 0 || num_table_rows <= 0) {
        return bad_arg(op, "num_table_rows and max_blocks_per_seq must be positive");
    }
    if (T == 0) return ok_status();
    if (kv == nullptr || norm_w == nullptr || positions == nullptr || (rd > 0 && inv_freq == nullptr) ||
        cache.data == nullptr || block_tables == nullptr || table_rows == nullptr) {
        return bad_arg(op, "null pointer");
    }
    if (T > INT_MAX) return bad_arg(op, "T exceeds the grid");
    if (cache.dtype == KvDType::kF32) {
        cache_write_kernel<float><<<static_cast<unsigned>(T), kWriteThreads, 0, stream>>>(
            kv, ld, norm_w, eps, positions, inv_freq, cache, block_tables, num_table_rows, max_blocks_per_seq,
            table_rows);
    } else {
        cache_write_kernel<uint16_t><<<static_cast<unsigned>(T), kWriteThreads, 0, stream>>>(
            kv, ld, norm_w, eps, positions, inv_freq, cache, block_tables, num_table_rows, max_blocks_per_seq,
            table_rows);
    }
    DS_CUDA_RETURN_IF_LAUNCH_ERROR("cache_write_kernel");
    return ok_status();
}

Status mla_absorb_q(const float* q, int64_t T, int64_t ld_token, int64_t ld_head, int64_t heads, int64_t nope,
                    const WeightView& wkv_b, int64_t head_rows, float* q_lat, cudaStream_t stream) {
    const char* op = "mla_absorb_q";
    DevWeight dw{};
    DS_RETURN_IF_ERROR(internal::check_weight(op, wkv_b, &dw));
    if (T < 0 || heads <= 0 || nope <= 0 || nope > kAbsorbQMaxNope || head_rows < nope ||
        heads * head_rows > wkv_b.rows) {
        return bad_arg(op, "need T >= 0, heads > 0, 0 < nope <= " + std::to_string(kAbsorbQMaxNope) +
                               " <= head_rows and heads * head_rows <= wkv_b.rows (" + std::to_string(wkv_b.rows) + ")");
    }
    if (ld_head < nope || ld_token < (heads - 1) * ld_head + nope) return bad_arg(op, "q strides too small");
    if (T == 0) return ok_status();
    if (q == nullptr || q_lat == nullptr) return bad_arg(op, "null q / q_lat");
    const dim3 grid(static_cast<unsigned>(heads), static_cast<unsigned>((wkv_b.cols + kAbsorbQThreads - 1) / kAbsorbQThreads));
    absorb_q_kernel<<<grid, kAbsorbQThreads, 0, stream>>>(q, T, ld_token, ld_head, nope, dw, head_rows, heads, q_lat);
    DS_CUDA_RETURN_IF_LAUNCH_ERROR("absorb_q_kernel");
    return ok_status();
}

Status mla_absorb_out(const float* o_lat, int64_t T, int64_t heads, const WeightView& wkv_b, int64_t head_rows,
                      int64_t nope, int64_t v, float* o, cudaStream_t stream) {
    const char* op = "mla_absorb_out";
    DevWeight dw{};
    DS_RETURN_IF_ERROR(internal::check_weight(op, wkv_b, &dw));
    if (T < 0 || heads <= 0 || nope < 0 || v <= 0 || head_rows < nope + v || heads * head_rows > wkv_b.rows) {
        return bad_arg(op, "need T >= 0, heads > 0, v > 0, nope + v <= head_rows and heads * head_rows <= wkv_b.rows");
    }
    const size_t smem = static_cast<size_t>(kAbsorbOTokens) * wkv_b.cols * sizeof(float);
    if (smem > 48 * 1024) return bad_arg(op, "latent width " + std::to_string(wkv_b.cols) + " exceeds 1536");
    if (T == 0) return ok_status();
    if (o_lat == nullptr || o == nullptr) return bad_arg(op, "null o_lat / o");
    const dim3 grid(static_cast<unsigned>(heads), static_cast<unsigned>((v + kAbsorbOWarps - 1) / kAbsorbOWarps));
    absorb_out_kernel<<<grid, kAbsorbOWarps * 32, smem, stream>>>(o_lat, T, heads, dw, head_rows, nope, v, o);
    DS_CUDA_RETURN_IF_LAUNCH_ERROR("absorb_out_kernel");
    return ok_status();
}

}  // namespace deepshard::kernels::cuda
