// MLA attention over a BF16 paged latent cache on tensor cores (mla_attention_kernel.h). The fp32 kernel
// (mla_attention.cu) runs a warp per (head, token) dot product on CUDA cores: on an H200 it reached about
// 6 TFLOP/s, 24 GB/s of cache at 128 heads. Here a block of 4 warps takes the same work unit (one query,
// one split of its cache range, 16 heads) and does both products as mma.sync.m16n8k16 (BF16 in, fp32
// accumulate):
//   S[16 heads, 32 tokens] = Q[16, D] . K^T      each warp 8 tokens, D / 16 k-steps
//   O[16 heads, R]        += P[16, 32] . V[32, R] each warp R / 4 latent columns, 2 k-steps
// with the tile staged raw (16-byte copies of the BF16 rows, no conversion) in shared memory whose rows
// are padded by 8 elements, so the fragment loads of a warp fall in distinct banks. q is rounded to
// BF16 once, the probabilities once per tile; the online softmax (running max, sum, rescale) stays fp32.
// Fragment layouts (PTX ISA, mma.m16n8k16 .bf16): g = lane / 4, t = lane % 4;
//   A regs: {row g, cols 2t..2t+1}, {row g+8, same}, {row g, cols 2t+8..}, {row g+8, cols 2t+8..}
//   B regs: {k 2t..2t+1, col g}, {k 2t+8..2t+9, col g};  C: {row g, cols 2t, 2t+1}, {row g+8, same}.
#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <string>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_math.h"
#include "kernels/cuda/launch_util.h"
#include "kernels/cuda/mla_attention_kernel.h"

namespace deepshard::kernels::cuda::internal {

namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kHg = kMlaHeadsPerBlock;
constexpr int kTk = kMlaTileTokens;
constexpr int kPad = 8;                                       // BF16 elements of row padding
constexpr int kMaxColTiles = kMlaMaxLatentDim / (8 * kWarps);  // n8 tiles of latent columns per warp
static_assert(kHg == 16, "one m16 row block of heads");
static_assert(kTk == 8 * kWarps, "each warp scores 8 tokens of the tile");
static_assert(kTk == 32, "the softmax maps one lane to one token of the tile");
constexpr uint16_t kBf16Nan = 0x7fc0;

__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    __trap();  // launch_mla_tc refuses devices below sm_80
#endif
}

__device__ __forceinline__ uint32_t ld32(const uint16_t* p) { return *reinterpret_cast<const uint32_t*>(p); }
__device__ __forceinline__ uint32_t pack2(uint16_t lo, uint16_t hi) {
    return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__global__ void __launch_bounds__(kThreads) mla_attention_tc_kernel(MlaKernelParams p) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const int R = p.cache.latent_dim, D = R + p.cache.rope_dim, Dp = D + kPad, Ps = kTk + kPad;
    uint16_t* sq = reinterpret_cast<uint16_t*>(smem_raw);   // [kHg][Dp]: q_lat | q_pe (BF16)
    uint16_t* skv = sq + kHg * Dp;                          // [kTk][Dp]: latent | rope (BF16, raw)
    uint16_t* sp = skv + kTk * Dp;                          // [kHg][Ps]: probabilities (BF16)
    float* ss = reinterpret_cast<float*>(sp + kHg * Ps);    // [kHg][kTk]: scores (fp32)
    float* s_m = ss + kHg * kTk;                            // running max per head
    float* s_l = s_m + kHg;                                 // running sum per head
    float* s_alpha = s_l + kHg;                             // this tile's rescale per head

    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g = lane / 4, t = lane % 4;
    const MlaBlockWork w = mla_block_work(p, blockIdx.x);
    if (!w.active) return;  // the whole block leaves before any barrier
    const int64_t q = w.q, slot = w.slot, row = w.row;
    const int32_t nsplits = w.nsplits, begin = w.begin, end = w.end;
    const int h0 = w.h0, hg = w.hg;
    const bool bad = w.bad;

    // q in BF16; the rows of absent heads are zero (their scores and outputs are never used).
    for (int idx = tid; idx < kHg * D; idx += kThreads) {
        const int h = idx / D, d = idx % D;
        float v = 0.0f;
        if (h < hg) {
            v = d < R ? p.q_lat[q * p.q_lat_ld_token + (h0 + h) * p.q_lat_ld_head + d]
                      : p.q_pe[q * p.q_pe_ld_token + (h0 + h) * p.q_pe_ld_head + (d - R)];
        }
        sq[h * Dp + d] = encode_bf16(v);
    }
    if (tid < kHg) {
        s_m[tid] = -INFINITY;
        s_l[tid] = bad ? NAN : 0.0f;  // a bad table row poisons every output of the query
        s_alpha[tid] = 1.0f;
    }
    const int cols = R / kWarps, col0 = warp * cols, tiles = cols / 8;
    float acc[kMaxColTiles][4];
#pragma unroll
    for (int nt = 0; nt < kMaxColTiles; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[nt][e] = bad ? NAN : 0.0f;
    }

    const uint16_t* cache = static_cast<const uint16_t*>(p.cache.data);
    const int32_t* table = p.block_tables + (bad ? 0 : row) * p.max_blocks;
    const int32_t bs = p.cache.block_size;
    const int per_token = D / 8;  // 16-byte chunks per cached row
    for (int32_t t0 = begin; t0 < end; t0 += kTk) {
        const int n = min(kTk, end - t0);
        __syncthreads();  // the previous tile's readers are done (q and the init are visible on the first)
        for (int c = tid; c < kTk * per_token; c += kThreads) {
            const int j = c / per_token, part = c % per_token;
            uint4* dst = reinterpret_cast<uint4*>(skv + j * Dp + part * 8);
            uint4 v = make_uint4(0, 0, 0, 0);  // rows past the range are zero (0 * p stays 0)
            if (j < n) {
                const int32_t pos = t0 + j;
                const int32_t id = table[pos / bs];
                if (id >= 0 && id < p.cache.num_blocks) {
                    v = *reinterpret_cast<const uint4*>(cache + id * p.cache.block_stride +
                                                        (pos % bs) * p.cache.token_stride + part * 8);
                } else {
                    const uint32_t nan2 = pack2(kBf16Nan, kBf16Nan);  // a block id outside the pool
                    v = make_uint4(nan2, nan2, nan2, nan2);
                }
            }
            *dst = v;
        }
        __syncthreads();
        // S = Q . K^T: this warp's 8 tokens.
        {
            float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            const uint16_t* krow = skv + (warp * 8 + g) * Dp;
            for (int k0 = 0; k0 < D; k0 += 16) {
                const uint32_t a[4] = {ld32(sq + g * Dp + k0 + 2 * t), ld32(sq + (g + 8) * Dp + k0 + 2 * t),
                                       ld32(sq + g * Dp + k0 + 8 + 2 * t), ld32(sq + (g + 8) * Dp + k0 + 8 + 2 * t)};
                mma_16816(c, a, ld32(krow + k0 + 2 * t), ld32(krow + k0 + 8 + 2 * t));
            }
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int j = warp * 8 + 2 * t + e;
                ss[g * kTk + j] = j < n ? c[e] * p.scale : -INFINITY;
                ss[(g + 8) * kTk + j] = j < n ? c[2 + e] * p.scale : -INFINITY;
            }
        }
        __syncthreads();
        // Online softmax in fp32: a warp per head, a lane per token of the tile.
        for (int h = warp; h < kHg; h += kWarps) {
            if (h >= hg) {
                sp[h * Ps + lane] = 0;
                continue;
            }
            const float s = ss[h * kTk + lane];
            const float m_old = s_m[h];
            const float m_new = fmaxf(m_old, warp_max(s));
            const float pj = m_new == -INFINITY ? 0.0f : expf(s - m_new);
            const float alpha = m_new == -INFINITY ? 1.0f : expf(m_old - m_new);
            const float sum = warp_sum(pj);
            sp[h * Ps + lane] = encode_bf16(pj);
            if (lane == 0) {
                s_l[h] = s_l[h] * alpha + sum;
                s_m[h] = m_new;
                s_alpha[h] = alpha;
            }
        }
        __syncthreads();
        // O = alpha * O + P . V over this warp's latent columns.
        const float a_lo = s_alpha[g], a_hi = s_alpha[g + 8];
#pragma unroll
        for (int nt = 0; nt < kMaxColTiles; ++nt) {
            if (nt < tiles) {
                acc[nt][0] *= a_lo;
                acc[nt][1] *= a_lo;
                acc[nt][2] *= a_hi;
                acc[nt][3] *= a_hi;
            }
        }
#pragma unroll
        for (int k0 = 0; k0 < kTk; k0 += 16) {
            const uint32_t a[4] = {ld32(sp + g * Ps + k0 + 2 * t), ld32(sp + (g + 8) * Ps + k0 + 2 * t),
                                   ld32(sp + g * Ps + k0 + 8 + 2 * t), ld32(sp + (g + 8) * Ps + k0 + 8 + 2 * t)};
            const uint16_t* v0 = skv + (k0 + 2 * t) * Dp;
            const uint16_t* v8 = skv + (k0 + 8 + 2 * t) * Dp;
#pragma unroll
            for (int nt = 0; nt < kMaxColTiles; ++nt) {
                if (nt < tiles) {
                    const int col = col0 + nt * 8 + g;
                    mma_16816(acc[nt], a, pack2(v0[col], v0[Dp + col]), pack2(v8[col], v8[Dp + col]));
                }
            }
        }
    }
    __syncthreads();  // s_m / s_l final (also when this split had no tile)

#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int h = g + 8 * half;
        if (h >= hg) continue;
        const float l = s_l[h];
        const float inv = l == 0.0f ? 0.0f : 1.0f / l;  // NaN l stays NaN
        float* dst;
        if (nsplits == 1) {
            dst = p.out + q * p.out_ld_token + (h0 + h) * p.out_ld_head;
        } else {
            dst = p.part_out + (slot * p.num_heads + h0 + h) * R;
        }
#pragma unroll
        for (int nt = 0; nt < kMaxColTiles; ++nt) {
            if (nt < tiles) {
                const int col = col0 + nt * 8 + 2 * t;
                dst[col] = acc[nt][2 * half] * inv;
                dst[col + 1] = acc[nt][2 * half + 1] * inv;
            }
        }
    }
    if (nsplits > 1 && tid < hg) p.part_lse[slot * p.num_heads + h0 + tid] = mla_partial_lse(s_m[tid], s_l[tid]);
}

}  // namespace

bool mla_tc_usable(const MlaCache& c, bool vec) {
    const int32_t D = c.latent_dim + c.rope_dim;
    if (c.dtype != KvDType::kBF16 || !vec || D % 16 != 0 || c.latent_dim % (8 * kWarps) != 0 ||
        c.latent_dim > kMlaMaxLatentDim) {
        return false;
    }
    // Once per process: the device's compute capability (the engine uses one device per process).
    static const int major = [] {
        int device = 0, m = 0;
        if (cudaGetDevice(&device) != cudaSuccess) return 0;
        if (cudaDeviceGetAttribute(&m, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) return 0;
        return m;
    }();
    return major >= 8;
}

size_t mla_tc_smem_bytes(int32_t latent_dim, int32_t rope_dim) {
    const size_t Dp = static_cast<size_t>(latent_dim) + rope_dim + kPad;
    return (kHg + kTk) * Dp * 2 + kHg * (kTk + kPad) * 2 + (kHg * kTk + 3 * kHg) * 4;
}

Status launch_mla_tc(const MlaKernelParams& p, int64_t blocks, cudaStream_t stream) {
    const size_t smem = mla_tc_smem_bytes(p.cache.latent_dim, p.cache.rope_dim);
    if (smem > 48 * 1024) {
        int device = 0, optin = 0;
        DS_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
        DS_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
        if (smem > static_cast<size_t>(optin)) {
            return bad_arg("mla_attention", "latent_dim + rope_dim needs " + std::to_string(smem) +
                                                " bytes of shared memory, the device allows " + std::to_string(optin));
        }
        DS_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(mla_attention_tc_kernel,
                                                     cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                     static_cast<int>(smem)));
    }
    mla_attention_tc_kernel<<<static_cast<unsigned>(blocks), kThreads, smem, stream>>>(p);
    DS_CUDA_RETURN_IF_LAUNCH_ERROR("mla_attention_tc_kernel");
    return ok_status();
}

}  // namespace deepshard::kernels::cuda::internal
