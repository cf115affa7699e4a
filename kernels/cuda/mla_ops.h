// The MLA ops around the attention kernel (the GPU twins of kernels/mla.h): the latent-cache write
// (RMSNorm of the latent + RoPE of k_pe + store in the paged cache, fused) and the W_UK / W_UV
// absorptions. Same contract as cuda_kernels.h: enqueued on `stream`, device pointers, argument errors
// kInvalidArgument naming the field. Weights are read in their stored dtype (FP8 with block scales
// included) through a device WeightView.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/status.h"
#include "kernels/cuda/mla_attention.h"
#include "kernels/weight_view.h"

namespace deepshard::kernels::cuda {

// Twin of kernels::mla_cache_write: kv [T, ld] rows (latent_dim latent values then rope_dim k_pe
// values) get RMSNorm of the latent with norm_w / eps and interleaved RoPE of k_pe at positions[t]
// (inv_freq: rope_dim / 2 floats), in place in fp32, and each row is stored in `cache` (its data must
// be writable; f32 as is, bf16 rounded to nearest even) at the slot of position positions[t] in table
// row table_rows[t]. Device code cannot fail: a token whose table row, position or block id is out of
// range is not stored (check_mla_block_tables checks host copies). One block per token.
Status mla_cache_write(float* kv, int64_t T, int64_t ld, const float* norm_w, float eps, const int32_t* positions,
                       const float* inv_freq, const MlaCache& cache, const int32_t* block_tables,
                       int64_t num_table_rows, int32_t max_blocks_per_seq, const int32_t* table_rows,
                       cudaStream_t stream);

// Twin of kernels::mla_absorb_q: q_lat[t, h, :] = q_nope[t, h, :] . W_UK[h] for t < T, h < heads, with
// q_nope[t, h] at q + t * ld_token + h * ld_head (nope values) and W_UK[h] = rows [h * head_rows,
// h * head_rows + nope) of wkv_b ([heads * head_rows, latent], device). q_lat dense [T, heads, latent].
Status mla_absorb_q(const float* q, int64_t T, int64_t ld_token, int64_t ld_head, int64_t heads, int64_t nope,
                    const WeightView& wkv_b, int64_t head_rows, float* q_lat, cudaStream_t stream);

// Twin of kernels::mla_absorb_out: o[t, h * v + j] = o_lat[t, h, :] . W_UV[h][j, :] with W_UV[h] = rows
// [h * head_rows + nope, + v) of wkv_b; o_lat dense [T, heads, latent]; o dense [T, heads * v].
Status mla_absorb_out(const float* o_lat, int64_t T, int64_t heads, const WeightView& wkv_b, int64_t head_rows,
                      int64_t nope, int64_t v, float* o, cudaStream_t stream);

}  // namespace deepshard::kernels::cuda
