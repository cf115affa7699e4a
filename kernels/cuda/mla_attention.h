// MLA attention in the absorbed form (MODEL_SPEC §2) over the paged latent cache, FlashMLA-shaped:
// the GPU twin of kernels::mla_attention (kernels/mla.h; the CPU engine's attention over the latent
// cache). For query i and local head h:
//   s[j]   = (q_lat[i,h,:] . latent[j] + q_pe[i,h,:] . rope[j]) * softmax_scale,  j in [0, kv_len(i))
//   out[i,h,:] = sum_j softmax(s)[j] * latent[j]      (kv_lora_rank wide, before the W_UV up-projection)
// The cache holds float32 (the exact reference, as model::KvCache) or BF16 (the CUDA engine's default):
// per token `latent_dim` latent values then `rope_dim` rotated rope-key values. One thread block serves
// one query, one split of its cache range and a group of up to kMlaHeadsPerBlock heads: every cached
// vector it reads (16-byte loads where the layout allows, converted to fp32 in shared memory) is used by
// all heads of the group (fp32 online softmax, fp32 accumulators in registers). With more heads than a
// group the groups of a (query, split) are adjacent block ids, so they run together and the extra reads
// hit L2. Long caches are split (split-K) over more blocks and merged by a combine kernel through
// caller-owned scratch: nothing is allocated per call.
//
// Decode splits are balanced by sequence length (FlashMLA's metadata idea, our own scheme): a schedule
// computed on the device from the lengths (mla_plan_splits, one thread, once per step) gives each query
// a number of splits proportional to its length so that every block of the launch gets about the same
// number of cache tiles; the launch grid is a fixed upper bound (blocks past the schedule exit), so the
// whole decode is CUDA-graph capturable.
//
// Contract (as cuda_kernels.h): work is enqueued on `stream`, nothing synchronizes; pointers are device
// pointers unless stated. Argument errors are kInvalidArgument naming the field, launch errors kCuda.
// Block-table contents live on the device and cannot be reported: a query whose table row, length or
// block id is out of range gets NaN outputs (never an out-of-bounds read); check_mla_block_tables()
// validates host copies. A query with kv length 0 gets zeros.
#pragma once

#include <cuda_runtime_api.h>

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "common/status.h"
#include "kernels/cuda/device_math.h"

namespace deepshard::kernels::cuda {

constexpr int32_t kMlaHeadsPerBlock = 16;  // heads sharing one read of the cache
constexpr int32_t kMlaTileTokens = 32;     // cached tokens staged in shared memory at a time
constexpr int32_t kMlaMaxLatentDim = 512;  // kv_lora_rank (register accumulators are sized for it)
constexpr int32_t kMlaMaxRopeDim = 128;    // qk_rope_head_dim
constexpr int32_t kMlaMaxSplits = 64;
constexpr int32_t kMlaMinTilesPerSplit = 2;  // a split below this costs more in the merge than it saves

// Element type of the cache pool.
enum class KvDType : int32_t { kF32 = 0, kBF16 = 1 };
inline int64_t kv_dtype_size(KvDType t) { return t == KvDType::kF32 ? 4 : 2; }
inline const char* kv_dtype_name(KvDType t) { return t == KvDType::kF32 ? "f32" : "bf16"; }

// One layer of a paged latent cache (device memory). Slot `o` of block `b` starts at element
// b * block_stride + o * token_stride of `data`: latent_dim latent values, then rope_dim rope values.
struct MlaCache {
    const void* data = nullptr;
    KvDType dtype = KvDType::kF32;
    int64_t block_stride = 0;  // elements between the slot 0 of consecutive block ids
    int64_t token_stride = 0;  // elements between consecutive slots of a block (>= latent_dim + rope_dim)
    int32_t block_size = 0;    // tokens per block
    int32_t num_blocks = 0;    // valid block ids: [0, num_blocks)
    int32_t latent_dim = 0;    // kv_lora_rank
    int32_t rope_dim = 0;      // qk_rope_head_dim
};

// The MlaCache of `layer` in a pool laid out as model::KvCache: [block][layer][slot][latent | rope].
inline MlaCache mla_cache_layer(const void* pool,
                                KvDType dtype,
                                int64_t num_layers,
                                int64_t layer,
                                int32_t block_size,
                                int32_t num_blocks,
                                int32_t latent_dim,
                                int32_t rope_dim) {
    MlaCache c;
    c.dtype = dtype;
    c.token_stride = int64_t{latent_dim} + rope_dim;
    c.data = static_cast<const char*>(pool) + layer * block_size * c.token_stride * kv_dtype_size(dtype);
    c.block_stride = num_layers * block_size * c.token_stride;
    c.block_size = block_size;
    c.num_blocks = num_blocks;
    c.latent_dim = latent_dim;
    c.rope_dim = rope_dim;
    return c;
}

// Queries, block tables and output shared by decode and prefill. Query i, head h (local heads):
//   q_lat at q_lat + i * q_lat_ld_token + h * q_lat_ld_head   (latent_dim floats)
//   q_pe  at q_pe  + i * q_pe_ld_token  + h * q_pe_ld_head    (rope_dim floats, already rotated)
//   out   at out   + i * out_ld_token   + h * out_ld_head     (latent_dim floats, written)
// For the CPU twin's buffers: q_lat [T, nh, R] dense; q_pe = qbuf + nope with ld_head qk and ld_token
// nh * qk; out [T, nh, R] dense. block_tables is [num_table_rows, max_blocks_per_seq] int32, row-major.
struct MlaAttentionArgs {
    MlaCache cache;
    int32_t num_heads = 0;
    float softmax_scale = 0.0f;  // ModelConfig::softmax_scale() (YaRN m^2 included)
    int64_t num_queries = 0;
    const float* q_lat = nullptr;
    int64_t q_lat_ld_token = 0, q_lat_ld_head = 0;
    const float* q_pe = nullptr;
    int64_t q_pe_ld_token = 0, q_pe_ld_head = 0;
    const int32_t* block_tables = nullptr;
    int64_t num_table_rows = 0;
    int32_t max_blocks_per_seq = 0;
    float* out = nullptr;
    int64_t out_ld_token = 0, out_ld_head = 0;
};

// Host-side shape / pointer / stride checks of `args` (the launchers run them first; no CUDA call).
// kInvalidArgument "cuda::<op>: <field> ..." on the first problem.
Status validate_mla_args(const char* op, const MlaAttentionArgs& args);

// Bytes of scratch mla_decode needs: 0 for num_splits <= 1, else batch * num_splits * num_heads *
// (latent_dim + 1) floats (partial outputs and their log-sum-exp).
// On: BF16 caches run on tensor cores (mma.sync, sm_80+: q and the probabilities rounded to BF16)
// where the dims allow; off: they take the fp32 kernel like float32 caches. Off by default until the
// tensor-core kernel has passed mla_attention_cuda_test on a GPU (it has not run on one yet); tests and
// benchmarks turn it on to compare the two.
void mla_set_tensor_cores(bool on);
bool mla_tensor_cores();

size_t mla_decode_scratch_bytes(int64_t batch, int32_t num_heads, int32_t latent_dim, int32_t num_splits);

// A uniform split count for decode: enough blocks to fill `num_sms` twice over, at least two tiles of
// cache per split, at most kMlaMaxSplits. Pure host function (num_sms from cudaDevAttrMultiProcessorCount).
int32_t mla_decode_num_splits(int64_t batch, int32_t num_heads, int64_t max_seq_len, int32_t num_sms);

// Host copies of block tables checked against the cache: row r covers kv_lens[r] positions, which
// need ceil(kv_lens[r] / block_size) <= max_blocks_per_seq entries, each in [0, num_blocks). Entries
// past those are never read and not checked. kInvalidArgument naming "block_tables[r][k]" or "kv_lens[r]".
Status check_mla_block_tables(const int32_t* tables,
                              int64_t rows,
                              int32_t max_blocks_per_seq,
                              const int32_t* kv_lens,
                              int32_t block_size,
                              int32_t num_blocks);

// Decode with a uniform split count: query b (b < num_queries = batch) uses table row b and attends to
// positions [0, seq_lens[b]) (seq_lens: device int32 [batch]; the current token is already in the cache,
// as the CPU twin writes it before reading). num_splits in [1, kMlaMaxSplits]; with more than one,
// `scratch` (device, at least mla_decode_scratch_bytes) holds the partial results, and a combine kernel
// merges them.
Status mla_decode(const MlaAttentionArgs& args,
                  const int32_t* seq_lens,
                  int32_t num_splits,
                  void* scratch,
                  size_t scratch_bytes,
                  cudaStream_t stream);

// ---- decode with the length-balanced schedule ----

// Blocks (per head group) one balanced decode launch may use: max_ctas (the work target, e.g. twice the
// SM count divided by the head groups) plus one per query (rounding).
inline int64_t mla_schedule_max_slots(int64_t batch, int32_t max_ctas) { return batch + (max_ctas > 0 ? max_ctas : 1); }
// Scratch of a balanced decode: partial outputs + lse for mla_schedule_max_slots slots. The schedule
// itself needs batch + 1 int32 (mla_plan_decode writes it).
size_t mla_scheduled_scratch_bytes(int64_t batch, int32_t num_heads, int32_t latent_dim, int32_t max_ctas);

// The split schedule of a decode batch (run by one thread on the device, and by the host tests):
// query q has tiles_q = ceil(len_q / kMlaTileTokens) tiles of cache (a bad length counts as 0); the
// target is max_ctas blocks of about `chunk` = max(kMlaMinTilesPerSplit, ceil(W / max_ctas)) tiles each
// over W = sum_q (tiles_q + 1) (one tile of fixed cost per query); query q gets
// splits_q = clamp(ceil(tiles_q / chunk), 1, kMlaMaxSplits), and offsets[q] = sum_{p<q} splits_p
// (offsets has batch + 1 entries). Hence offsets[batch] <= mla_schedule_max_slots(batch, max_ctas).
DS_HD void mla_plan_splits(const int32_t* lens, int32_t batch, int32_t max_ctas, int32_t* offsets) {
    int64_t work = 0;
    for (int32_t q = 0; q < batch; ++q) {
        const int32_t len = lens[q] > 0 ? lens[q] : 0;
        work += (len + kMlaTileTokens - 1) / kMlaTileTokens + 1;
    }
    const int64_t ctas = max_ctas > 0 ? max_ctas : 1;
    int64_t chunk = (work + ctas - 1) / ctas;
    if (chunk < kMlaMinTilesPerSplit) chunk = kMlaMinTilesPerSplit;
    int32_t at = 0;
    for (int32_t q = 0; q < batch; ++q) {
        offsets[q] = at;
        const int32_t len = lens[q] > 0 ? lens[q] : 0;
        const int64_t tiles = (len + kMlaTileTokens - 1) / kMlaTileTokens;
        int64_t s = (tiles + chunk - 1) / chunk;
        if (s < 1) s = 1;
        if (s > kMlaMaxSplits) s = kMlaMaxSplits;
        at += static_cast<int32_t>(s);
    }
    offsets[batch] = at;
}

// Writes the schedule of `seq_lens` (device, [batch]) into `offsets` (device, batch + 1 int32): one
// single-thread kernel, capturable in a graph (the lengths are read on the device).
Status mla_plan_decode(const int32_t* seq_lens, int64_t batch, int32_t max_ctas, int32_t* offsets,
                       cudaStream_t stream);

// Balanced decode: as mla_decode, with query q split per `offsets` (from mla_plan_decode with the same
// max_ctas). scratch: mla_scheduled_scratch_bytes. Queries with one split write `out` directly; the
// combine kernel merges the others.
Status mla_decode_scheduled(const MlaAttentionArgs& args,
                            const int32_t* seq_lens,
                            const int32_t* offsets,
                            int32_t max_ctas,
                            void* scratch,
                            size_t scratch_bytes,
                            cudaStream_t stream);

// Prefill / chunked prefill with the causal mask: query t uses table row query_rows[t] and attends to
// positions [0, query_pos[t]] (its own absolute position included; the new tokens' latents must already
// be in the cache). query_rows, query_pos: device int32 [num_queries]. One block per (query, head group),
// no split: the absorbed form, used for mixed steps and short chunks (mla_prefill.h holds the
// non-absorbed prefill for long chunks).
Status mla_prefill(const MlaAttentionArgs& args,
                   const int32_t* query_rows,
                   const int32_t* query_pos,
                   cudaStream_t stream);

// ---- the split-K arithmetic, shared by the kernels and the host tests ----

// Positions [*begin, *end) that split `split` of `num_splits` covers of a cache of `len` tokens:
// contiguous runs of whole tiles, in order, together exactly [0, len). Empty when begin == end.
DS_HD void mla_split_range(int32_t len, int32_t num_splits, int32_t split, int32_t* begin, int32_t* end) {
    const int32_t tiles = (len + kMlaTileTokens - 1) / kMlaTileTokens;
    const int32_t per_split = (tiles + num_splits - 1) / num_splits;
    int32_t b = split * per_split * kMlaTileTokens, e = b + per_split * kMlaTileTokens;
    if (b > len)
        b = len;
    if (e > len)
        e = len;
    *begin = b;
    *end = e;
}

// Query of a schedule slot: the q with offsets[q] <= slot < offsets[q + 1] (binary search; offsets is
// non-decreasing with offsets[0] = 0, slot < offsets[batch]).
DS_HD int32_t mla_slot_query(const int32_t* offsets, int32_t batch, int32_t slot) {
    int32_t lo = 0, hi = batch - 1;
    while (lo < hi) {
        const int32_t mid = (lo + hi + 1) / 2;
        if (offsets[mid] <= slot) lo = mid; else hi = mid - 1;
    }
    return lo;
}

// log(sum_j exp(s_j)) of a split from its running max m and sum l = sum_j exp(s_j - m); -inf when the
// split saw no token (l == 0). NaN stays NaN.
DS_HD float mla_partial_lse(float m, float l) {
#if defined(__CUDA_ARCH__)
    return l == 0.0f ? -INFINITY : m + logf(l);
#else
    return l == 0.0f ? -INFINITY : m + std::log(l);
#endif
}

// Merge weights of n partial (split-normalized) outputs from their lse values (stride apart):
// w[s] = exp(lse[s]) / sum_t exp(lse[t]). All zero when every split is empty; all NaN when any is NaN.
DS_HD void mla_combine_weights(const float* lse, int64_t stride, int32_t n, float* w) {
    float mx = -INFINITY;
    bool nan = false;
    for (int32_t s = 0; s < n; ++s) {
        const float v = lse[s * stride];
        nan = nan || v != v;
        mx = v > mx ? v : mx;
    }
    if (nan || mx == -INFINITY) {
        for (int32_t s = 0; s < n; ++s) w[s] = nan ? NAN : 0.0f;
        return;
    }
    float sum = 0.0f;
    for (int32_t s = 0; s < n; ++s) sum += (w[s] = exp_ref(lse[s * stride] - mx));
    const float inv = 1.0f / sum;
    for (int32_t s = 0; s < n; ++s) w[s] *= inv;
}

}  // namespace deepshard::kernels::cuda
