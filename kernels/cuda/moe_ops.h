// MoE on the GPU (MODEL_SPEC §2 "MoE"; the CPU twins are in kernels/moe.h): routing one warp per token,
// the (token, expert) pairs grouped by expert (a stable counting sort: the CPU twin's order), the tokens
// permuted into expert order, one grouped GEMM per projection over all active experts (a work list of
// (expert, row range) items built on the device), and the weighted combine back into token order (each
// token sums its experts in ascending expert id, the CPU accumulation order).
//
// Every op reads its sizes from device memory where they depend on the routing (the number of work
// items, the per-expert offsets), and the launch grids are fixed upper bounds computed from T: the MoE
// layer is CUDA-graph capturable. Same contract as cuda_kernels.h otherwise.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/status.h"
#include "kernels/cuda/cuda_handles.h"
#include "kernels/cuda/device_math.h"
#include "kernels/moe.h"

namespace deepshard::kernels::cuda {

// Routing of T tokens, one warp per token (the decisions of kernels::moe_route / route_token: same
// score expressions, same tie rule). logits [T, E] row stride ld, bias [E] or nullptr; writes experts and
// weights [T, top_k]. Limits: E <= kMaxWarpRouteExperts, n_group <= 32 (validate_route_params and these).
inline constexpr int32_t kMaxWarpRouteExperts = 1024;
Status moe_route_warp(const float* logits, int64_t T, int64_t ld, const float* bias, const RouteParams& params,
                      int32_t* experts, float* weights, cudaStream_t stream);

// A grouped-GEMM work item: rows [row_begin, row_begin + count) of the permuted activations, all routed
// to `expert`; count <= the item size the list was built with.
struct MoeItem {
    int32_t expert;
    int32_t row_begin;
    int32_t count;
    int32_t pad;
};

// Upper bound of the items a list of `pairs` (T * top_k) rows over `num_experts` experts can need with
// items of `item_rows` rows: ceil(pairs / item_rows) + min(num_experts, pairs).
inline int64_t moe_max_items(int64_t pairs, int64_t num_experts, int64_t item_rows) {
    return (pairs + item_rows - 1) / item_rows + (num_experts < pairs ? num_experts : pairs);
}

// Groups the T * K pairs of `experts` [T, K] by expert (twin of kernels::moe_group_by_expert): offsets
// [E + 1], for each permuted row p: pair_token[p] (its token) and pair_weight[p] (its routing weight),
// tokens of an expert in increasing token order; pair_pos[t * K + k] = the permuted row of pair (t, k).
// Also builds the work list: items (capacity moe_max_items(T * K, E, item_rows)) and *num_items.
// Pairs routed to experts outside [0, E) or not held here (expert_held[e] == 0; nullptr = all held) are
// dropped (pair_pos -1: the CPU twin skips experts it does not hold). One block (device-side counting
// sort; T * K <= 1 << 24).
Status moe_group(const int32_t* experts, const float* weights, int64_t T, int64_t K, int32_t num_experts,
                 const uint8_t* expert_held, int32_t item_rows, int32_t* offsets, int32_t* pair_token,
                 float* pair_weight, int32_t* pair_pos, MoeItem* items, int32_t* num_items, cudaStream_t stream);

// out[t, :] = sum over k in ascending expert id of weight[t, k] * y[pair_pos[t * K + k], :] (rows of
// y: ldy apart), accumulated from zero in that order (the CPU order is "zero, add the experts in id
// order, then add the shared expert": the shared expert follows as an accumulating GEMM into out).
// Pairs with pair_pos -1 are skipped. One block per token.
Status moe_combine(const float* y, int64_t ldy, const int32_t* experts, const float* weights, const int32_t* pair_pos,
                   int64_t T, int64_t K, int64_t hidden, float* out, int64_t ldo, cudaStream_t stream);

// How a grouped GEMM runs: kGemv (items of <= 8 rows, one warp per weight row, 16-byte loads when
// `vec`), kTiled (items of <= 64 rows, fp32 CUDA-core tiles: the exact path), kTensorCore (items of <= 64
// rows, BF16 tensor-core MMA with the weights dequantized in the kernel; sm_80+).
enum class GroupedKernel { kGemv, kTiled, kTensorCore };
int32_t grouped_item_rows(GroupedKernel kind);

// Grouped GEMM over a work list: for each item i < *num_items, y[row_begin + r, :] = x[row_begin + r, :]
// * W_e^T for r < count, with W_e = experts[expert] (device array of E DevWeight, each [n, k] in `dtype`;
// `vec`: every W_e passes weight_vec_ok). max_items bounds the grid.
Status grouped_matmul(const float* x, int64_t ldx, const DevWeight* experts, DevDType dtype, bool vec, int64_t n,
                      int64_t k, const MoeItem* items, const int32_t* num_items, int64_t max_items, float* y,
                      int64_t ldy, GroupedKernel kind, cudaStream_t stream);

}  // namespace deepshard::kernels::cuda
