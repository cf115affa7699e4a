// MLA (multi-head latent attention) ops in the absorbed form (MODEL_SPEC §2), the CPU reference of
// each step the forward pass takes between the projections:
//   kv row  -> mla_cache_write   (RMSNorm of the latent, YaRN RoPE of k_pe, store in the paged cache)
//   q_pe    -> rope_interleaved  (the same rotation, on every local head)
//   q_nope  -> mla_absorb_q      (q_lat = q_nope . W_UK per head)
//   q_lat   -> mla_attention     (softmax over the cached latents, causal by position)
//   o_lat   -> mla_absorb_out    (o = o_lat . W_UV^T per head)
// The CUDA twins live in kernels/cuda (cuda_kernels.h rope_interleaved, mla_attention.h mla_decode /
// mla_prefill); arguments have the same meaning, so one test can compare each pair.
//
// All activations and the cache are float32 here, all accumulation float32. The paged cache is a
// pool base plus block tables (int32 [rows, max_blocks_per_seq]); kernels never see the bookkeeping
// (model/kv_blocks.h) that hands out the blocks. Calls split work over ThreadPool::global() and block.
#pragma once

#include <cstdint>

#include "kernels/kernels.h"
#include "kernels/weight_view.h"

namespace deepshard::kernels {

// One layer of a paged latent cache (the CPU twin of cuda::MlaCache). Slot `o` of block `b` starts
// at data + b * block_stride + o * token_stride: latent_dim latent floats, then rope_dim rope floats.
struct LatentCache {
    float* data = nullptr;
    int64_t block_stride = 0;  // floats between slot 0 of consecutive block ids
    int64_t token_stride = 0;  // floats between consecutive slots of a block (>= latent_dim + rope_dim)
    int32_t block_size = 0;    // tokens per block
    int32_t num_blocks = 0;    // valid block ids: [0, num_blocks)
    int32_t latent_dim = 0;    // kv_lora_rank
    int32_t rope_dim = 0;      // qk_rope_head_dim

    float* slot(int32_t block, int64_t offset) const { return data + block * block_stride + offset * token_stride; }
};

// Block tables of the sequences an op touches: row r lists the block ids of positions
// [k * block_size, (k + 1) * block_size) at column k. Row-major [rows, max_blocks_per_seq].
struct BlockTables {
    const int32_t* data = nullptr;
    int64_t rows = 0;
    int32_t max_blocks_per_seq = 0;
};

// Interleaved (GPT-J / DeepSeek checkpoint layout) YaRN RoPE, in place: for token t in [0, T) and head
// h in [0, heads) the rope_dim values at x + t*ld_token + h*ld_head + offset are rotated pairwise,
// (v[2i], v[2i+1]) by angle float(positions[t]) * inv_freq[i], in fp32 (cos/sin of that float angle).
// q_pe: heads = local heads, ld_head = qk_head_dim, offset = nope; k_pe: heads = 1, offset = kv_lora_rank.
void rope_interleaved(float* x, int64_t T, int64_t ld_token, int64_t heads, int64_t ld_head, int64_t offset,
                      int64_t rope_dim, const int32_t* positions, const float* inv_freq);

// The latent-cache write of T new tokens, in place on `kv` [T, ld] (row t: latent_dim latent values
// then rope_dim k_pe values, the output of kv_a_proj_with_mqa): the latent gets RMSNorm with
// `norm_w` (kv_a_layernorm, float32) and `eps`, k_pe gets rope_interleaved at positions[t], and the
// row is copied to the cache slot of position positions[t] in table row table_rows[t]. Every
// position's block must be in its table (checked: DS_CHECK names the token).
void mla_cache_write(float* kv, int64_t T, int64_t ld, const float* norm_w, float eps, const int32_t* positions,
                     const float* inv_freq, const LatentCache& cache, const BlockTables& tables,
                     const int32_t* table_rows);

// W_UK absorption: q_lat[t, h, :] = q_nope[t, h, :] . W_UK[h] for t < T, h < heads, where
// q_nope[t, h] starts at q + t*ld_token + h*ld_head (nope values) and W_UK[h] is rows
// [h*head_rows, h*head_rows + nope) of `wkv_b` (the local heads' rows of kv_b_proj, [heads*(nope+v),
// latent]), head_rows = nope + v_head_dim. q_lat is dense [T, heads, wkv_b.cols].
void mla_absorb_q(const float* q, int64_t T, int64_t ld_token, int64_t ld_head, int64_t heads, int64_t nope,
                  const WeightView& wkv_b, int64_t head_rows, float* q_lat);

// Queries, cache and output of mla_attention (the CPU twin of cuda::MlaAttentionArgs). Query i, head h:
//   q_lat at q_lat + i * q_lat_ld_token + h * q_lat_ld_head   (latent_dim floats)
//   q_pe  at q_pe  + i * q_pe_ld_token  + h * q_pe_ld_head    (rope_dim floats, already rotated)
//   out   at out   + i * out_ld_token   + h * out_ld_head     (latent_dim floats, written)
struct MlaAttentionArgs {
    LatentCache cache;
    int32_t num_heads = 0;
    float softmax_scale = 0.0f;  // ModelConfig::softmax_scale() (YaRN m^2 included)
    int64_t num_queries = 0;
    const float* q_lat = nullptr;
    int64_t q_lat_ld_token = 0, q_lat_ld_head = 0;
    const float* q_pe = nullptr;
    int64_t q_pe_ld_token = 0, q_pe_ld_head = 0;
    BlockTables tables;
    float* out = nullptr;
    int64_t out_ld_token = 0, out_ld_head = 0;
};

// Causal attention over the paged cache, decode and (chunked) prefill alike: query i uses table row
// query_rows[i] and attends to positions [0, query_pos[i]] (its own position included: its latent
// must already be in the cache, as mla_cache_write puts it). Scores
//   s[j] = (q_lat . latent[j] + q_pe . rope[j]) * softmax_scale, softmax in fp32,
//   out  = sum_j p[j] * latent[j]  (latent_dim wide, before W_UV).
// The CUDA twins: mla_decode (query_rows[b] = b, query_pos[b] = seq_len - 1) and mla_prefill.
void mla_attention(const MlaAttentionArgs& args, const int32_t* query_rows, const int32_t* query_pos);

// W_UV up-projection: o[t, h*v : (h+1)*v] = o_lat[t, h, :] . W_UV[h]^T, with W_UV[h] = rows
// [h*head_rows + nope, h*head_rows + nope + v) of `wkv_b` and o_lat dense [T, heads, wkv_b.cols].
// o is dense [T, heads * v].
// All heads run as one batch of matmuls (one parallel region), in `numerics`.
void mla_absorb_out(const float* o_lat, int64_t T, int64_t heads, const WeightView& wkv_b, int64_t head_rows,
                    int64_t nope, int64_t v, float* o, Numerics numerics = Numerics::kExact);

}  // namespace deepshard::kernels
