// CUDA kernels of deepshard: the GPU twins of kernels/kernels.h and of the per-op math in
// kernels/mla.h and kernels/moe.h. Same contract as the CPU side: float32 activations, float32 accumulation,
// weights read in their stored dtype (FP8 e4m3 + 128x128 block scales, BF16, F16, F32) through a
// WeightView whose `data` and `scale` point to *device* memory (slices keep working: the scale grid is
// that of the full tensor, indexed through row_offset/col_offset).
//
// Every function enqueues work on `stream` and returns at once (no synchronization); all pointers are
// device pointers unless stated. The Status covers argument checks (kInvalidArgument, naming the op
// and the field) and launch errors (kCuda); faults while the kernel runs surface on the next
// synchronizing call. The caller keeps buffers alive until the stream has passed the work.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/status.h"
#include "kernels/cuda/cuda_handles.h"
#include "kernels/cuda/device_math.h"
#include "kernels/weight_view.h"

namespace deepshard::kernels::cuda {

// ---- elementwise / normalization (elementwise.cu) ----

// out[i, :] = float32(W[rows[i], :]) (gather_rows twin: embedding lookup). Unlike the CPU twin, a row
// id outside [0, W.rows) yields a zero row instead of aborting: that is the vocab-parallel embedding
// rule (ids owned by another rank contribute zeros before the all-reduce), and device code cannot
// return an error. `rows` is a device array of n ids.
Status embedding(const WeightView& w, const int32_t* rows, int64_t n, float* out, int64_t ldo, cudaStream_t stream);

// y[i,:] = x[i,:] / sqrt(mean(x[i,:]^2) + eps) * w (rmsnorm twin). In place allowed.
Status rmsnorm(const float* x, int64_t m, int64_t n, int64_t ldx, const float* w, float eps, float* y, int64_t ldy,
               cudaStream_t stream);

// h[i, :] += delta[i, :] (skipped when delta is null), then y[i, :] = rmsnorm(h[i, :]) * w: the residual
// connection fused with the RMSNorm that follows it (twins: residual_add then rmsnorm). Row strides n.
// y must not alias h.
Status add_rmsnorm(float* h, const float* delta, int64_t m, int64_t n, const float* w, float eps, float* y,
                   cudaStream_t stream);

// h[i] += x[i] (residual_add twin).
Status residual_add(float* h, const float* x, int64_t n, cudaStream_t stream);

// out[i, :] = x[rows[i], :] for i < n, cols values (gather_tokens twin; rows: device int32).
Status gather_tokens(const float* x, int64_t ldx, const int32_t* rows, int64_t n, int64_t cols, float* out,
                     int64_t ldo, cudaStream_t stream);

// y[rows[i], :] += w[i] * src[i, :] for i < n in increasing i per element (scatter_add_weighted twin,
// same accumulation order; rows may repeat).
Status scatter_add_weighted(const float* src, int64_t lds, int64_t n, int64_t cols, const int32_t* rows,
                            const float* w, float* y, int64_t ldy, cudaStream_t stream);

// FP8 activations with 1x128 block scales (DeepSeek's act_quant): for row i < m and column block
// b < k / 128, s = amax / 448 (1 for an all-zero block) and q[i, c] = e4m3(x[i, c] / s) (encode_e4m3).
// Rows [m, m_pad) are written as zeros with scale 1 (cuBLASLt wants the token count padded).
// q: [m_pad, k] dense. Scales: m_major ? scale[b * m_pad + i] : scale[i * (k / 128) + b]. k % 128 == 0.
Status quantize_fp8_act(const float* x, int64_t m, int64_t m_pad, int64_t k, int64_t ldx, uint8_t* q, float* scale,
                        bool m_major, cudaStream_t stream);

// y[i, j] (+)= float(x[i, j]) for a BF16 matrix x [m, n] (row strides ldx, ldy).
Status widen_bf16(const uint16_t* x, int64_t m, int64_t n, int64_t ldx, float* y, int64_t ldy, bool accumulate,
                   cudaStream_t stream);

// out[i] = silu(gate[i]) * up[i] (silu_mul twin). out may alias gate or up.
Status silu_mul(const float* gate, const float* up, int64_t n, float* out, cudaStream_t stream);

// Interleaved (GPT-J / DeepSeek checkpoint layout) YaRN RoPE, in place: for token t in [0, T) and head
// h in [0, heads), the rope_dim values at x + t*ld_token + h*ld_head + offset are rotated pairwise,
// (v[2i], v[2i+1]) by angle positions[t] * inv_freq[i] (inv_freq: rope_dim/2 floats, device; from
// ModelConfig::rope_inv_freq()). q_pe: heads = local heads, ld_head = qk_head_dim, offset = nope;
// k_pe: heads = 1, offset = kv_lora_rank. Angles and rotation in fp32 (sincosf, full precision).
Status rope_interleaved(float* x, int64_t T, int64_t ld_token, int64_t heads, int64_t ld_head, int64_t offset,
                        int64_t rope_dim, const int32_t* positions, const float* inv_freq, cudaStream_t stream);

// out[i] = argmax_j logits[i, j] over `vocab` columns: greedy sampling (Sampler with temperature 0):
// lowest id on ties, NaN counts as -inf (an all-NaN row gives 0).
Status argmax(const float* logits, int64_t rows, int64_t vocab, int64_t ld, int32_t* out, cudaStream_t stream);

// Dequantizes W [rows, cols] into a dense row-major BF16 matrix (ld = cols): fp32 value, rounded once
// to BF16 (RNE), as DeepSeek's weight_dequant / fp8_cast_bf16.
Status dequant_to_bf16(const WeightView& w, uint16_t* out, cudaStream_t stream);

// out[i, j] = bf16(x[i, j]) (RNE) into a dense [m, k] matrix.
Status f32_to_bf16(const float* x, int64_t m, int64_t k, int64_t ldx, uint16_t* out, cudaStream_t stream);

// ---- MoE gate (moe_gate.cu) ----

// Routing of T tokens (MODEL_SPEC §2 MoE; the decisions of kernels::moe_route): logits [T, E] row
// stride ld (router outputs x * gate^T), bias [E] (fp32 e_score_correction_bias, selection only) or
// nullptr. Writes experts [T, top_k] (int32, selection order) and weights [T, top_k] (after
// normalization and routed_scaling_factor). One thread per token (the routing is ~E*top_k compares).
Status moe_gate(const float* logits, int64_t T, int64_t ld, const float* bias, const RouteParams& params,
                int32_t* experts, float* weights, cudaStream_t stream);
// Host-side check of RouteParams (the launcher calls it; exposed for tests and loaders).
Status validate_route_params(const RouteParams& params);

// ---- GEMM with weights in their stored dtype (matmul.cu): the A100 path ----

// y[m, n] = x[m, k] * W^T (+ y when accumulate), W = [n, k] in any supported dtype, dequantized in
// the inner loop (FP8: e4m3 * block scale), fp32 accumulation; no second copy of the weights. The
// matmul twin. m <= 8 uses a GEMV kernel (one warp per output row, the weight streamed once);
// larger m a 64x64-tiled kernel with the dequantized weight tile in shared memory.
Status matmul(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy, bool accumulate,
              cudaStream_t stream);

// y[m, n] = x[m, k] * W^T (+ y when accumulate) on BF16 tensor cores (matmul_tc.cu: the A100 path for
// batches past the GEMV): x rounded to BF16, W dequantized in the kernel (FP8: e4m3 * block scale, then
// rounded to BF16, as DeepSeek's weight_dequant), fp32 accumulation. 64x64 tiles. Needs sm_80+
// (kUnavailable naming the device otherwise).
Status matmul_tc(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy, bool accumulate,
                 cudaStream_t stream);

// ---- cuBLASLt BF16 path (cublaslt_gemm.cc): the H100 path of the official reference ----

// y[m, n] (fp32, row stride ldy) = x_bf16[m, k] * W_bf16[n, k]^T (+ y when accumulate); BF16 inputs
// (row-major, row strides ldx / ldw in elements), fp32 tensor-core accumulation (CUBLAS_COMPUTE_32F).
Status gemm_bf16(const CublasLtHandle& handle, const uint16_t* x, int64_t m, int64_t ldx, const uint16_t* w,
                 int64_t n, int64_t k, int64_t ldw, float* y, int64_t ldy, bool accumulate, cudaStream_t stream);

// The official DeepSeek "bf16" GEMM: W (any dtype; FP8 dequantized with its block scales and rounded
// once to BF16) and x (rounded to BF16) into gemm_bf16. `scratch` grows to hold both BF16 copies;
// it is reused across calls (one copy of one weight at a time, not of the model).
// TODO(gpu): FP8 x FP8 cuBLASLt on sm90 with 1x128 activation / 128x128 weight block scales
// (CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F / BLK128x128_32F) once it can be validated on an H100.
Status matmul_bf16(const CublasLtHandle& handle, const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y,
                   int64_t ldy, bool accumulate, DeviceBuffer& scratch, cudaStream_t stream);

// ---- helpers ----

// Owns device copies of a host WeightView (the rows x cols elements, made dense, and the scale rows
// the view touches) and a WeightView of them. For tests and loaders; synchronous.
struct DeviceWeight {
    DeviceBuffer data;
    DeviceBuffer scale;
    WeightView view;  // device pointers
};
StatusOr<DeviceWeight> upload_weight(const WeightView& host);

}  // namespace deepshard::kernels::cuda
