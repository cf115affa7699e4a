// MLA decode / prefill attention over the paged latent cache (see mla_attention.h for the contract).
// One kernel serves both: a block takes (query, split, head group), stages kMlaTileTokens cached
// vectors at a time in shared memory (fp32, converted from the cache dtype; 16-byte loads when the
// cache layout is aligned), scores them against all its heads (a warp per (head, token) dot, lanes over
// the 576 dims), runs the fp32 online softmax (a warp per head) and accumulates P.V into registers (each
// thread owns latent columns tid and tid + 256 for every head of the group).
// BF16 caches take the tensor-core variant instead where the dims allow (mla_attention_tc.cu: same work
// units and outputs, Q.K^T and P.V on mma.sync; mla_set_tensor_cores(false) turns it off).
// Split modes: uniform (num_splits blocks per query) or scheduled (offsets from mla_plan_decode: a
// variable number per query, balanced by length; blocks past the schedule exit at once).
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstdint>
#include <string>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/launch_util.h"
#include "kernels/cuda/mla_attention.h"
#include "kernels/cuda/mla_attention_kernel.h"

namespace deepshard::kernels::cuda {

namespace {

using internal::bad_arg;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kHg = kMlaHeadsPerBlock;
constexpr int kTk = kMlaTileTokens;
constexpr int kCols = kMlaMaxLatentDim / kThreads;  // latent columns per thread
static_assert(kTk == 32, "the softmax step maps one lane to one token of the tile");
static_assert(kMlaMaxLatentDim % kThreads == 0, "latent columns are spread evenly over the threads");

using internal::MlaBlockWork;
using internal::MlaKernelParams;
using internal::mla_block_work;
using KernelParams = MlaKernelParams;

template <typename T>
__device__ __forceinline__ float load_cache(const T* p);
template <>
__device__ __forceinline__ float load_cache<float>(const float* p) {
    return *p;
}
template <>
__device__ __forceinline__ float load_cache<uint16_t>(const uint16_t* p) {
    return decode_bf16(*p);
}

// 16 bytes of cache values into fp32.
template <typename T>
__device__ __forceinline__ void store_vec(const uint4& v, float* dst);
template <>
__device__ __forceinline__ void store_vec<float>(const uint4& v, float* dst) {
    dst[0] = __uint_as_float(v.x);
    dst[1] = __uint_as_float(v.y);
    dst[2] = __uint_as_float(v.z);
    dst[3] = __uint_as_float(v.w);
}
template <>
__device__ __forceinline__ void store_vec<uint16_t>(const uint4& v, float* dst) {
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        dst[2 * i] = __uint_as_float(w[i] << 16);
        dst[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
}

size_t smem_floats(int32_t dim) { return static_cast<size_t>(kHg + kTk) * dim + kHg * kTk + 3 * kHg; }

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) mla_attention_kernel(KernelParams p) {
    extern __shared__ float smem[];
    const int R = p.cache.latent_dim, D = R + p.cache.rope_dim;
    float* sq = smem;             // [kHg][D]: q_lat | q_pe
    float* skv = sq + kHg * D;    // [kTk][D]: latent | rope
    float* ss = skv + kTk * D;    // [kHg][kTk]: scores, then probabilities
    float* s_m = ss + kHg * kTk;  // running max per head
    float* s_l = s_m + kHg;       // running sum per head
    float* s_alpha = s_l + kHg;   // rescale of this tile per head

    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const MlaBlockWork w = mla_block_work(p, blockIdx.x);
    if (!w.active) return;  // the whole block leaves before any barrier
    const int64_t q = w.q, slot = w.slot, row = w.row;
    const int32_t nsplits = w.nsplits, begin = w.begin, end = w.end;
    const int h0 = w.h0, hg = w.hg;
    const bool bad = w.bad;

    for (int idx = tid; idx < hg * D; idx += kThreads) {
        const int h = idx / D, d = idx % D;
        sq[idx] = d < R ? p.q_lat[q * p.q_lat_ld_token + (h0 + h) * p.q_lat_ld_head + d]
                        : p.q_pe[q * p.q_pe_ld_token + (h0 + h) * p.q_pe_ld_head + (d - R)];
    }
    if (tid < kHg) {
        s_m[tid] = -INFINITY;
        s_l[tid] = bad ? NAN : 0.0f;  // a bad table row poisons every output of the query
    }
    float acc[kHg][kCols];
#pragma unroll
    for (int h = 0; h < kHg; ++h) {
#pragma unroll
        for (int k = 0; k < kCols; ++k) acc[h][k] = bad ? NAN : 0.0f;
    }

    const T* cache = static_cast<const T*>(p.cache.data);
    const int32_t* table = p.block_tables + (bad ? 0 : row) * p.max_blocks;
    const int32_t bs = p.cache.block_size;
    constexpr int kVec = 16 / sizeof(T);  // cache values per 16-byte load
    for (int32_t t0 = begin; t0 < end; t0 += kTk) {
        const int n = min(kTk, end - t0);
        __syncthreads();  // the previous tile's readers are done (and q/init are visible on the first)
        // Stage the tile. Rows past the range are zero (0 * p must stay 0); a block id outside the pool
        // reads as NaN, which poisons this query's outputs.
        if (p.vec) {
            const int per_token = D / kVec;
            for (int c = tid; c < kTk * per_token; c += kThreads) {
                const int j = c / per_token, part = c % per_token;
                float* dst = skv + j * D + part * kVec;
                if (j < n) {
                    const int32_t pos = t0 + j;
                    const int32_t id = table[pos / bs];
                    if (id >= 0 && id < p.cache.num_blocks) {
                        const T* src = cache + id * p.cache.block_stride + (pos % bs) * p.cache.token_stride +
                                       part * kVec;
                        store_vec<T>(*reinterpret_cast<const uint4*>(src), dst);
                    } else {
#pragma unroll
                        for (int i = 0; i < kVec; ++i) dst[i] = NAN;
                    }
                } else {
#pragma unroll
                    for (int i = 0; i < kVec; ++i) dst[i] = 0.0f;
                }
            }
        } else {
            for (int j = warp; j < kTk; j += kWarps) {
                float* dst = skv + j * D;
                const T* src = nullptr;
                bool valid_id = true;
                if (j < n) {
                    const int32_t pos = t0 + j;
                    const int32_t id = table[pos / bs];
                    valid_id = id >= 0 && id < p.cache.num_blocks;
                    if (valid_id)
                        src = cache + id * p.cache.block_stride + (pos % bs) * p.cache.token_stride;
                }
                for (int d = lane; d < D; d += 32)
                    dst[d] = src != nullptr ? load_cache<T>(src + d) : (valid_id ? 0.0f : NAN);
            }
        }
        __syncthreads();
        // Scores: a warp per (head, token) pair, lanes over the dims.
        for (int pr = warp; pr < hg * kTk; pr += kWarps) {
            const int h = pr / kTk, j = pr % kTk;
            float s = -INFINITY;
            if (j < n) {
                const float* qh = sq + h * D;
                const float* kj = skv + j * D;
                float dot = 0.0f;
                for (int d = lane; d < D; d += 32) dot = fmaf(qh[d], kj[d], dot);
                s = warp_sum(dot) * p.scale;
            }
            if (lane == 0)
                ss[h * kTk + j] = s;
        }
        __syncthreads();
        // Online softmax in fp32: a warp per head, a lane per token of the tile.
        for (int h = warp; h < hg; h += kWarps) {
            const float s = ss[h * kTk + lane];
            const float m_old = s_m[h];
            const float m_new = fmaxf(m_old, warp_max(s));
            // Nothing seen yet (all masked): keep p = 0 and avoid exp(-inf - -inf).
            const float pj = m_new == -INFINITY ? 0.0f : expf(s - m_new);
            const float alpha = m_new == -INFINITY ? 1.0f : expf(m_old - m_new);
            const float sum = warp_sum(pj);
            ss[h * kTk + lane] = pj;
            if (lane == 0) {
                s_l[h] = s_l[h] * alpha + sum;
                s_m[h] = m_new;
                s_alpha[h] = alpha;
            }
        }
        __syncthreads();
        // P.V into the register accumulators.
#pragma unroll
        for (int h = 0; h < kHg; ++h) {
            if (h < hg) {
                const float a = s_alpha[h];
#pragma unroll
                for (int k = 0; k < kCols; ++k) acc[h][k] *= a;
            }
        }
        for (int j = 0; j < n; ++j) {
            float v[kCols];
#pragma unroll
            for (int k = 0; k < kCols; ++k) {
                const int c = tid + k * kThreads;
                v[k] = c < R ? skv[j * D + c] : 0.0f;
            }
#pragma unroll
            for (int h = 0; h < kHg; ++h) {
                if (h < hg) {
                    const float pj = ss[h * kTk + j];
#pragma unroll
                    for (int k = 0; k < kCols; ++k) acc[h][k] = fmaf(pj, v[k], acc[h][k]);
                }
            }
        }
    }
    __syncthreads();  // s_m / s_l final (also when this split had no tile)

#pragma unroll
    for (int h = 0; h < kHg; ++h) {
        if (h < hg) {
            const float l = s_l[h];
            const float inv = l == 0.0f ? 0.0f : 1.0f / l;  // NaN l stays NaN
            float* dst;
            if (nsplits == 1) {
                dst = p.out + q * p.out_ld_token + (h0 + h) * p.out_ld_head;
            } else {
                const int64_t ps = slot * p.num_heads + h0 + h;
                dst = p.part_out + ps * R;
                if (tid == 0)
                    p.part_lse[ps] = mla_partial_lse(s_m[h], l);
            }
#pragma unroll
            for (int k = 0; k < kCols; ++k) {
                const int c = tid + k * kThreads;
                if (c < R)
                    dst[c] = acc[h][k] * inv;
            }
        }
    }
}

// out[q, h, :] = sum_s w_s * part_out[slot_s, h, :], w from the splits' lse. A block per (query, head).
// Queries with a single split were written directly by the attention kernel.
__global__ void mla_combine_kernel(const float* part_lse,
                                   const float* part_out,
                                   int32_t num_splits,  // uniform mode
                                   const int32_t* offsets,  // scheduled mode (nullptr: uniform)
                                   int32_t num_heads,
                                   int32_t R,
                                   float* out,
                                   int64_t out_ld_token,
                                   int64_t out_ld_head) {
    __shared__ float w[kMlaMaxSplits];
    const int64_t q = blockIdx.x / num_heads;
    const int h = static_cast<int>(blockIdx.x % num_heads);
    const int64_t first_slot = offsets != nullptr ? offsets[q] : q * num_splits;
    const int32_t ns = offsets != nullptr ? offsets[q + 1] - offsets[q] : num_splits;
    if (ns <= 1) return;
    const int64_t first = first_slot * num_heads + h;  // splits are num_heads apart
    if (threadIdx.x == 0)
        mla_combine_weights(part_lse + first, num_heads, ns, w);
    __syncthreads();
    float* dst = out + q * out_ld_token + h * out_ld_head;
    for (int c = threadIdx.x; c < R; c += blockDim.x) {
        float v = 0.0f;
        for (int s = 0; s < ns; ++s) v = fmaf(w[s], part_out[(first + s * num_heads) * R + c], v);
        dst[c] = v;
    }
}

__global__ void mla_plan_kernel(const int32_t* lens, int32_t batch, int32_t max_ctas, int32_t* offsets) {
    if (blockIdx.x == 0 && threadIdx.x == 0) mla_plan_splits(lens, batch, max_ctas, offsets);
}

bool strides_ok(int64_t ld_token, int64_t ld_head, int32_t heads, int32_t width) {
    return ld_head >= width && ld_token >= (heads - 1) * ld_head + width;
}

// 16-byte staging is possible when every token's D values start 16-byte aligned and D is a whole
// number of 16-byte chunks.
bool vec_ok(const MlaCache& c) {
    const int64_t esz = kv_dtype_size(c.dtype);
    const int64_t D = int64_t{c.latent_dim} + c.rope_dim;
    return reinterpret_cast<uintptr_t>(c.data) % 16 == 0 && (c.token_stride * esz) % 16 == 0 &&
           (c.block_stride * esz) % 16 == 0 && (D * esz) % 16 == 0;
}

template <typename T>
Status launch_t(const KernelParams& p, int64_t blocks, size_t smem, cudaStream_t stream) {
    if (smem > 48 * 1024) {
        int device = 0, optin = 0;
        DS_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
        DS_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
        if (smem > static_cast<size_t>(optin)) {
            return bad_arg("mla_attention", "latent_dim + rope_dim needs " + std::to_string(smem) +
                                                " bytes of shared memory, the device allows " + std::to_string(optin));
        }
        DS_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(mla_attention_kernel<T>,
                                                     cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                     static_cast<int>(smem)));
    }
    mla_attention_kernel<T><<<static_cast<unsigned>(blocks), kThreads, smem, stream>>>(p);
    DS_CUDA_RETURN_IF_LAUNCH_ERROR("mla_attention_kernel");
    return ok_status();
}

Status launch(const char* op,
              const MlaAttentionArgs& a,
              int32_t num_splits,
              int64_t slots,  // blocks per head group
              const int32_t* offsets,
              const int32_t* query_rows,
              const int32_t* kv_lens,
              int32_t len_add,
              float* part_lse,
              float* part_out,
              cudaStream_t stream) {
    KernelParams p{};
    p.cache = a.cache;
    p.num_heads = a.num_heads;
    p.head_groups = (a.num_heads + kHg - 1) / kHg;
    p.num_splits = num_splits;
    p.scale = a.softmax_scale;
    p.num_queries = a.num_queries;
    p.q_lat = a.q_lat;
    p.q_lat_ld_token = a.q_lat_ld_token;
    p.q_lat_ld_head = a.q_lat_ld_head;
    p.q_pe = a.q_pe;
    p.q_pe_ld_token = a.q_pe_ld_token;
    p.q_pe_ld_head = a.q_pe_ld_head;
    p.block_tables = a.block_tables;
    p.num_table_rows = a.num_table_rows;
    p.max_blocks = a.max_blocks_per_seq;
    p.query_rows = query_rows;
    p.kv_lens = kv_lens;
    p.len_add = len_add;
    p.offsets = offsets;
    p.vec = vec_ok(a.cache);
    p.out = a.out;
    p.out_ld_token = a.out_ld_token;
    p.out_ld_head = a.out_ld_head;
    p.part_lse = part_lse;
    p.part_out = part_out;

    const int64_t blocks = slots * p.head_groups;
    if (blocks > INT_MAX) {
        return bad_arg(op, "num_queries " + std::to_string(a.num_queries) + " x splits x head groups exceeds the grid");
    }
    if (mla_tensor_cores() && internal::mla_tc_usable(a.cache, p.vec)) return internal::launch_mla_tc(p, blocks, stream);
    const size_t smem = smem_floats(a.cache.latent_dim + a.cache.rope_dim) * sizeof(float);
    return a.cache.dtype == KvDType::kF32 ? launch_t<float>(p, blocks, smem, stream)
                                          : launch_t<uint16_t>(p, blocks, smem, stream);
}

// Off until the kernel has run on hardware: it was written in a session without a GPU (the GPU check's
// mla_attention_cuda_test and gpu_kernels_bench turn it on explicitly and compare it).
std::atomic<bool> g_tensor_cores{false};

}  // namespace

void mla_set_tensor_cores(bool on) { g_tensor_cores.store(on); }
bool mla_tensor_cores() { return g_tensor_cores.load(); }

Status validate_mla_args(const char* op, const MlaAttentionArgs& a) {
    const MlaCache& c = a.cache;
    auto n = [](int64_t v) { return std::to_string(v); };
    if (a.num_heads <= 0)
        return bad_arg(op, "num_heads must be positive, got " + n(a.num_heads));
    if (c.latent_dim <= 0 || c.latent_dim > kMlaMaxLatentDim) {
        return bad_arg(op, "cache.latent_dim " + n(c.latent_dim) + " is outside [1, " + n(kMlaMaxLatentDim) + "]");
    }
    if (c.rope_dim < 0 || c.rope_dim > kMlaMaxRopeDim) {
        return bad_arg(op, "cache.rope_dim " + n(c.rope_dim) + " is outside [0, " + n(kMlaMaxRopeDim) + "]");
    }
    if (c.block_size <= 0)
        return bad_arg(op, "cache.block_size must be positive, got " + n(c.block_size));
    if (c.num_blocks <= 0)
        return bad_arg(op, "cache.num_blocks must be positive, got " + n(c.num_blocks));
    if (c.token_stride < int64_t{c.latent_dim} + c.rope_dim) {
        return bad_arg(op, "cache.token_stride " + n(c.token_stride) + " is below latent_dim + rope_dim");
    }
    if (c.num_blocks > 1 && c.block_stride < c.token_stride * c.block_size) {
        return bad_arg(op, "cache.block_stride " + n(c.block_stride) + " is below token_stride * block_size");
    }
    if (c.data == nullptr)
        return bad_arg(op, "cache.data is null");
    if (c.dtype != KvDType::kF32 && c.dtype != KvDType::kBF16)
        return bad_arg(op, "cache.dtype " + n(static_cast<int32_t>(c.dtype)) + " is neither f32 nor bf16");
    if (!std::isfinite(a.softmax_scale) || a.softmax_scale <= 0.0f) {
        return bad_arg(op, "softmax_scale must be positive and finite");
    }
    if (a.num_queries < 0)
        return bad_arg(op, "num_queries is negative");
    if (a.num_queries == 0)
        return ok_status();
    if (a.q_lat == nullptr)
        return bad_arg(op, "q_lat is null");
    if (a.q_pe == nullptr && c.rope_dim > 0)
        return bad_arg(op, "q_pe is null");
    if (a.out == nullptr)
        return bad_arg(op, "out is null");
    if (a.block_tables == nullptr)
        return bad_arg(op, "block_tables is null");
    if (!strides_ok(a.q_lat_ld_token, a.q_lat_ld_head, a.num_heads, c.latent_dim)) {
        return bad_arg(op, "q_lat strides (token " + n(a.q_lat_ld_token) + ", head " + n(a.q_lat_ld_head) +
                               ") do not hold num_heads x latent_dim");
    }
    if (c.rope_dim > 0 && !strides_ok(a.q_pe_ld_token, a.q_pe_ld_head, a.num_heads, c.rope_dim)) {
        return bad_arg(op, "q_pe strides (token " + n(a.q_pe_ld_token) + ", head " + n(a.q_pe_ld_head) +
                               ") do not hold num_heads x rope_dim");
    }
    if (!strides_ok(a.out_ld_token, a.out_ld_head, a.num_heads, c.latent_dim)) {
        return bad_arg(op, "out strides (token " + n(a.out_ld_token) + ", head " + n(a.out_ld_head) +
                               ") do not hold num_heads x latent_dim");
    }
    if (a.num_table_rows <= 0)
        return bad_arg(op, "num_table_rows must be positive");
    if (a.max_blocks_per_seq <= 0)
        return bad_arg(op, "max_blocks_per_seq must be positive");
    if (int64_t{a.max_blocks_per_seq} * c.block_size > INT_MAX) {
        return bad_arg(op, "max_blocks_per_seq x block_size exceeds int32 positions");
    }
    return ok_status();
}

size_t mla_decode_scratch_bytes(int64_t batch, int32_t num_heads, int32_t latent_dim, int32_t num_splits) {
    if (num_splits <= 1 || batch <= 0 || num_heads <= 0 || latent_dim <= 0)
        return 0;
    return static_cast<size_t>(batch) * num_splits * num_heads * (static_cast<size_t>(latent_dim) + 1) * sizeof(float);
}

int32_t mla_decode_num_splits(int64_t batch, int32_t num_heads, int64_t max_seq_len, int32_t num_sms) {
    const int64_t groups = (std::max<int64_t>(num_heads, 1) + kHg - 1) / kHg;
    const int64_t base = std::max<int64_t>(batch, 1) * groups;
    const int64_t want = (2 * std::max<int64_t>(num_sms, 1) + base - 1) / base;
    const int64_t by_len = std::max<int64_t>(max_seq_len, 0) / (2 * kTk);  // at least two tiles per split
    return static_cast<int32_t>(std::max<int64_t>(1, std::min<int64_t>({want, by_len, kMlaMaxSplits})));
}

Status check_mla_block_tables(const int32_t* tables,
                              int64_t rows,
                              int32_t max_blocks_per_seq,
                              const int32_t* kv_lens,
                              int32_t block_size,
                              int32_t num_blocks) {
    const char* op = "check_mla_block_tables";
    if (rows < 0 || max_blocks_per_seq <= 0 || block_size <= 0 ||
        (rows > 0 && (tables == nullptr || kv_lens == nullptr))) {
        return bad_arg(op, "need rows >= 0, positive max_blocks_per_seq / block_size and non-null tables / kv_lens");
    }
    for (int64_t r = 0; r < rows; ++r) {
        const int64_t len = kv_lens[r];
        if (len < 0 || len > int64_t{max_blocks_per_seq} * block_size) {
            return bad_arg(op, "kv_lens[" + std::to_string(r) + "] = " + std::to_string(len) + " is outside [0, " +
                                   std::to_string(int64_t{max_blocks_per_seq} * block_size) +
                                   "] (max_blocks_per_seq x block_size)");
        }
        for (int64_t k = 0; k < (len + block_size - 1) / block_size; ++k) {
            const int32_t id = tables[r * max_blocks_per_seq + k];
            if (id < 0 || id >= num_blocks) {
                return bad_arg(op, "block_tables[" + std::to_string(r) + "][" + std::to_string(k) +
                                       "] = " + std::to_string(id) + " is outside the cache's [0, " +
                                       std::to_string(num_blocks) + ")");
            }
        }
    }
    return ok_status();
}

Status mla_decode(const MlaAttentionArgs& a,
                  const int32_t* seq_lens,
                  int32_t num_splits,
                  void* scratch,
                  size_t scratch_bytes,
                  cudaStream_t stream) {
    const char* op = "mla_decode";
    DS_RETURN_IF_ERROR(validate_mla_args(op, a));
    if (num_splits < 1 || num_splits > kMlaMaxSplits) {
        return bad_arg(
            op, "num_splits " + std::to_string(num_splits) + " is outside [1, " + std::to_string(kMlaMaxSplits) + "]");
    }
    if (a.num_queries == 0)
        return ok_status();
    if (seq_lens == nullptr)
        return bad_arg(op, "seq_lens is null");
    if (a.num_queries * a.num_heads > INT_MAX) {
        return bad_arg(op, "num_queries x num_heads exceeds the combine grid");
    }
    if (a.num_table_rows < a.num_queries) {
        return bad_arg(op, "num_table_rows " + std::to_string(a.num_table_rows) + " is below the batch " +
                               std::to_string(a.num_queries));
    }
    const size_t need = mla_decode_scratch_bytes(a.num_queries, a.num_heads, a.cache.latent_dim, num_splits);
    if (need > 0 &&
        (scratch == nullptr || scratch_bytes < need || reinterpret_cast<uintptr_t>(scratch) % alignof(float) != 0)) {
        return bad_arg(op, "scratch needs " + std::to_string(need) +
                               " float-aligned bytes (mla_decode_scratch_bytes), got " + std::to_string(scratch_bytes));
    }
    const int64_t slots = a.num_queries * num_splits;
    if (num_splits == 1)
        return launch(op, a, 1, slots, nullptr, nullptr, seq_lens, 0, nullptr, nullptr, stream);
    float* part_lse = static_cast<float*>(scratch);
    float* part_out = part_lse + slots * a.num_heads;
    DS_RETURN_IF_ERROR(launch(op, a, num_splits, slots, nullptr, nullptr, seq_lens, 0, part_lse, part_out, stream));
    mla_combine_kernel<<<static_cast<unsigned>(a.num_queries * a.num_heads), 128, 0, stream>>>(
        part_lse, part_out, num_splits, nullptr, a.num_heads, a.cache.latent_dim, a.out, a.out_ld_token,
        a.out_ld_head);
    DS_CUDA_RETURN_IF_LAUNCH_ERROR("mla_combine_kernel");
    return ok_status();
}

size_t mla_scheduled_scratch_bytes(int64_t batch, int32_t num_heads, int32_t latent_dim, int32_t max_ctas) {
    if (batch <= 0 || num_heads <= 0 || latent_dim <= 0)
        return 0;
    return static_cast<size_t>(mla_schedule_max_slots(batch, max_ctas)) * num_heads *
           (static_cast<size_t>(latent_dim) + 1) * sizeof(float);
}

Status mla_plan_decode(const int32_t* seq_lens, int64_t batch, int32_t max_ctas, int32_t* offsets,
                       cudaStream_t stream) {
    if (batch < 0 || batch > INT_MAX / (kMlaMaxSplits + 1) || max_ctas <= 0) {
        return bad_arg("mla_plan_decode", "need 0 <= batch (" + std::to_string(batch) +
                                              ") within int32 slots and max_ctas > 0");
    }
    if (batch == 0) return ok_status();
    if (seq_lens == nullptr || offsets == nullptr) return bad_arg("mla_plan_decode", "null seq_lens / offsets");
    mla_plan_kernel<<<1, 32, 0, stream>>>(seq_lens, static_cast<int32_t>(batch), max_ctas, offsets);
    DS_CUDA_RETURN_IF_LAUNCH_ERROR("mla_plan_kernel");
    return ok_status();
}

Status mla_decode_scheduled(const MlaAttentionArgs& a,
                            const int32_t* seq_lens,
                            const int32_t* offsets,
                            int32_t max_ctas,
                            void* scratch,
                            size_t scratch_bytes,
                            cudaStream_t stream) {
    const char* op = "mla_decode_scheduled";
    DS_RETURN_IF_ERROR(validate_mla_args(op, a));
    if (max_ctas <= 0) return bad_arg(op, "max_ctas must be positive");
    if (a.num_queries == 0)
        return ok_status();
    if (seq_lens == nullptr)
        return bad_arg(op, "seq_lens is null");
    if (offsets == nullptr)
        return bad_arg(op, "offsets is null");
    if (a.num_table_rows < a.num_queries) {
        return bad_arg(op, "num_table_rows " + std::to_string(a.num_table_rows) + " is below the batch " +
                               std::to_string(a.num_queries));
    }
    const int64_t slots = mla_schedule_max_slots(a.num_queries, max_ctas);
    if (slots * a.num_heads > INT_MAX || a.num_queries * a.num_heads > INT_MAX) {
        return bad_arg(op, "batch x heads exceeds the grid");
    }
    const size_t need = mla_scheduled_scratch_bytes(a.num_queries, a.num_heads, a.cache.latent_dim, max_ctas);
    if (scratch == nullptr || scratch_bytes < need || reinterpret_cast<uintptr_t>(scratch) % alignof(float) != 0) {
        return bad_arg(op, "scratch needs " + std::to_string(need) +
                               " float-aligned bytes (mla_scheduled_scratch_bytes), got " +
                               std::to_string(scratch_bytes));
    }
    float* part_lse = static_cast<float*>(scratch);
    float* part_out = part_lse + slots * a.num_heads;
    DS_RETURN_IF_ERROR(launch(op, a, 0, slots, offsets, nullptr, seq_lens, 0, part_lse, part_out, stream));
    mla_combine_kernel<<<static_cast<unsigned>(a.num_queries * a.num_heads), 128, 0, stream>>>(
        part_lse, part_out, 0, offsets, a.num_heads, a.cache.latent_dim, a.out, a.out_ld_token, a.out_ld_head);
    DS_CUDA_RETURN_IF_LAUNCH_ERROR("mla_combine_kernel");
    return ok_status();
}

Status mla_prefill(const MlaAttentionArgs& a,
                   const int32_t* query_rows,
                   const int32_t* query_pos,
                   cudaStream_t stream) {
    const char* op = "mla_prefill";
    DS_RETURN_IF_ERROR(validate_mla_args(op, a));
    if (a.num_queries == 0)
        return ok_status();
    if (query_rows == nullptr)
        return bad_arg(op, "query_rows is null");
    if (query_pos == nullptr)
        return bad_arg(op, "query_pos is null");
    return launch(op, a, 1, a.num_queries, nullptr, query_rows, query_pos, 1, nullptr, nullptr, stream);
}

}  // namespace deepshard::kernels::cuda
