// Internal to the MLA attention kernels (mla_attention.cu, mla_attention_tc.cu): the launch parameters
// both kernel variants take, and the BF16 tensor-core variant's launcher. Not part of the kernels API.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "common/status.h"
#include "kernels/cuda/mla_attention.h"

namespace deepshard::kernels::cuda::internal {

struct MlaKernelParams {
    MlaCache cache;
    int32_t num_heads, head_groups, num_splits;
    float scale;
    int64_t num_queries;
    const float* q_lat;
    int64_t q_lat_ld_token, q_lat_ld_head;
    const float* q_pe;
    int64_t q_pe_ld_token, q_pe_ld_head;
    const int32_t* block_tables;
    int64_t num_table_rows;
    int32_t max_blocks;
    const int32_t* query_rows;  // nullptr: query i uses row i
    const int32_t* kv_lens;     // kv length of query i = kv_lens[i] + len_add
    int32_t len_add;
    const int32_t* offsets;     // scheduled mode: split schedule [num_queries + 1]; nullptr: uniform
    bool vec;                   // 16-byte staging loads are aligned
    float* out;  // queries with one split
    int64_t out_ld_token, out_ld_head;
    float* part_lse;  // [slot][head]
    float* part_out;  // [slot][head][latent_dim]
};

// What one block of either kernel works on: block id -> (head group, query, split of its cache range).
struct MlaBlockWork {
    bool active = false;  // false: a scheduled slot past the schedule's end (the block leaves at once)
    int64_t q = 0, slot = 0, row = 0;
    int32_t split = 0, nsplits = 1;
    int h0 = 0, hg = 0;       // first head of the group, heads in it
    bool bad = false;         // table row or length out of range: the query's outputs become NaN
    int32_t begin = 0, end = 0;  // cache positions of this split
};

#ifdef __CUDACC__
__device__ __forceinline__ MlaBlockWork mla_block_work(const MlaKernelParams& p, int64_t block) {
    MlaBlockWork w;
    const int g = static_cast<int>(block % p.head_groups);
    const int64_t rest = block / p.head_groups;
    if (p.offsets != nullptr) {
        // Scheduled: `rest` is a slot of the schedule; slots past its end have nothing to do.
        if (rest >= p.offsets[p.num_queries]) return w;
        w.q = mla_slot_query(p.offsets, static_cast<int32_t>(p.num_queries), static_cast<int32_t>(rest));
        w.split = static_cast<int32_t>(rest - p.offsets[w.q]);
        w.nsplits = p.offsets[w.q + 1] - p.offsets[w.q];
    } else {
        w.split = static_cast<int32_t>(rest % p.num_splits);
        w.q = rest / p.num_splits;
        w.nsplits = p.num_splits;
    }
    w.active = true;
    w.slot = rest;
    w.h0 = g * kMlaHeadsPerBlock;
    w.hg = min(kMlaHeadsPerBlock, p.num_heads - w.h0);
    w.row = p.query_rows != nullptr ? p.query_rows[w.q] : w.q;
    const int32_t raw_len = p.kv_lens[w.q];
    const int64_t len = static_cast<int64_t>(raw_len) + p.len_add;
    w.bad = w.row < 0 || w.row >= p.num_table_rows || raw_len < 0 ||
            len > static_cast<int64_t>(p.max_blocks) * p.cache.block_size;
    if (!w.bad) mla_split_range(static_cast<int32_t>(len), w.nsplits, w.split, &w.begin, &w.end);
    return w;
}
#endif

// The BF16 tensor-core variant (mla_attention_tc.cu): the same blocks (query, split, group of
// kMlaHeadsPerBlock heads) and outputs as the fp32 kernel, with Q.K^T and P.V on mma.sync m16n8k16
// (BF16 inputs, fp32 accumulation; q and the softmax probabilities rounded to BF16, the online softmax
// itself in fp32). Usable for a BF16 cache whose rows allow 16-byte loads, latent + rope a multiple of
// 16 and latent a multiple of 32, on sm_80 and newer.
bool mla_tc_usable(const MlaCache& cache, bool vec);
size_t mla_tc_smem_bytes(int32_t latent_dim, int32_t rope_dim);
Status launch_mla_tc(const MlaKernelParams& p, int64_t blocks, cudaStream_t stream);

}  // namespace deepshard::kernels::cuda::internal
