// MoE ops on the GPU (see moe_ops.h): routing one warp per token, the by-expert grouping with its
// work list, and the ordered combine. The grouped GEMMs are in matmul.cu / matmul_tc.cu.
#include <cuda_runtime.h>

#include <climits>
#include <string>

#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/launch_util.h"
#include "kernels/cuda/moe_ops.h"

namespace deepshard::kernels::cuda {

namespace {

using internal::bad_arg;

constexpr int kRouteWarps = 4;
constexpr int kMaxGroupsWarp = 32;

// (value, index) of the better of two candidates under ranks_before (index -1 = empty).
__device__ __forceinline__ void warp_best(float* v, int32_t* i) {
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, *v, o);
        const int32_t oi = __shfl_xor_sync(0xffffffffu, *i, o);
        if (ranks_before(ov, oi, *v, *i)) {
            *v = ov;
            *i = oi;
        }
    }
}

__global__ void __launch_bounds__(kRouteWarps * 32)
    route_warp_kernel(const float* logits, int64_t T, int64_t ld, const float* bias, RouteParams p, int32_t* experts,
                      float* weights) {
    __shared__ float s_all[kRouteWarps][kMaxWarpRouteExperts];   // unbiased scores
    __shared__ float sb_all[kRouteWarps][kMaxWarpRouteExperts];  // biased, masked, taken = NaN
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t t = static_cast<int64_t>(blockIdx.x) * kRouteWarps + warp;
    if (t >= T) return;  // warp-uniform; no block barrier below
    float* s = s_all[warp];
    float* sb = sb_all[warp];
    const float* row = logits + t * ld;
    const int32_t E = p.num_experts, G = p.n_group, per_group = E / G;

    float mx = 0.0f, sum = 1.0f;
    if (p.softmax) {
        mx = -INFINITY;
        for (int32_t e = lane; e < E; e += 32) mx = fmaxf(mx, row[e]);
        for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        sum = 0.0f;
        for (int32_t e = lane; e < E; e += 32) sum += exp_ref(row[e] - mx);
        for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    }
    for (int32_t e = lane; e < E; e += 32) {
        const float sc = p.softmax ? exp_ref(row[e] - mx) / sum : sigmoid_ref(row[e]);
        s[e] = sc;
        sb[e] = sc + (bias != nullptr ? bias[e] : 0.0f);
    }
    __syncwarp();

    // Group limit: lane g holds the score of group g (top-2 sum with a bias, max without).
    if (G > 1) {
        float my_gs = -INFINITY;
        for (int32_t g = 0; g < G; ++g) {
            float m1 = -INFINITY, m2 = -INFINITY;
            for (int32_t j = lane; j < per_group; j += 32) {
                const float v = sb[g * per_group + j];
                if (v > m1) {
                    m2 = m1;
                    m1 = v;
                } else if (v > m2) {
                    m2 = v;
                }
            }
            // Merge the lanes' top-2 multisets.
            for (int o = 16; o > 0; o >>= 1) {
                const float o1 = __shfl_xor_sync(0xffffffffu, m1, o);
                const float o2 = __shfl_xor_sync(0xffffffffu, m2, o);
                const float hi = m1 > o1 ? m1 : o1, lo = m1 > o1 ? o1 : m1;
                const float second = lo > (m2 > o2 ? m2 : o2) ? lo : (m2 > o2 ? m2 : o2);
                m1 = hi;
                m2 = second;
            }
            const float gs = (bias != nullptr && per_group >= 2) ? m1 + m2 : m1;
            if (lane == g) my_gs = gs;
        }
        uint32_t keep = 0;
        for (int32_t k = 0; k < p.topk_group; ++k) {
            float v = (lane < G && !((keep >> lane) & 1u)) ? my_gs : 0.0f;
            int32_t i = (lane < G && !((keep >> lane) & 1u)) ? lane : -1;
            warp_best(&v, &i);
            if (i >= 0) keep |= 1u << i;
        }
        for (int32_t e = lane; e < E; e += 32) {
            if (!((keep >> (e / per_group)) & 1u)) sb[e] = -INFINITY;
        }
        __syncwarp();
    }

    // Top-k over the biased scores; a chosen expert becomes NaN (never ranks before anything).
    float wsum = 0.0f;
    int32_t chosen[kMaxRouteTopK];
    float chosen_w[kMaxRouteTopK];
    for (int32_t k = 0; k < p.top_k; ++k) {
        float v = 0.0f;
        int32_t i = -1;
        for (int32_t e = lane; e < E; e += 32) {
            const float c = sb[e];
            if (ranks_before(c, e, v, i)) {
                v = c;
                i = e;
            }
        }
        warp_best(&v, &i);
        chosen[k] = i;
        chosen_w[k] = i >= 0 ? s[i] : 0.0f;
        wsum += chosen_w[k];
        __syncwarp();
        if (lane == 0 && i >= 0) sb[i] = NAN;
        __syncwarp();
    }
    if (lane == 0) {
        const bool normalize = !p.softmax && p.norm_topk_prob;
        for (int32_t k = 0; k < p.top_k; ++k) {
            float wk = chosen_w[k];
            if (normalize) wk /= wsum;
            experts[t * p.top_k + k] = chosen[k];
            weights[t * p.top_k + k] = wk * p.routed_scaling_factor;
        }
    }
}

constexpr int kGroupThreads = 1024;

__global__ void __launch_bounds__(kGroupThreads)
    group_kernel(const int32_t* experts, const float* weights, int64_t P, int64_t K, int32_t E, const uint8_t* held,
                 int32_t item_rows,
                 int32_t* offsets, int32_t* pair_token, float* pair_weight, int32_t* pair_pos, MoeItem* items,
                 int32_t* num_items) {
    __shared__ int32_t s_off[kMaxWarpRouteExperts + 1];
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    for (int32_t e = tid; e <= E; e += kGroupThreads) s_off[e] = 0;
    __syncthreads();
    for (int64_t i = tid; i < P; i += kGroupThreads) {
        const int32_t e = experts[i];
        if (e >= 0 && e < E && (held == nullptr || held[e] != 0)) {
            atomicAdd(&s_off[e + 1], 1);
        } else {
            pair_pos[i] = -1;
        }
    }
    __syncthreads();
    if (tid == 0) {
        for (int32_t e = 0; e < E; ++e) s_off[e + 1] += s_off[e];
    }
    __syncthreads();
    for (int32_t e = tid; e <= E; e += kGroupThreads) offsets[e] = s_off[e];
    // Stable placement: a warp per expert walks the pairs in order, 32 at a time.
    for (int32_t e = warp; e < E; e += kGroupThreads / 32) {
        if (held != nullptr && held[e] == 0) continue;  // warp-uniform
        int32_t at = s_off[e];
        for (int64_t base = 0; base < P; base += 32) {
            const int64_t i = base + lane;
            const bool match = i < P && experts[i] == e;
            const uint32_t ballot = __ballot_sync(0xffffffffu, match);
            if (match) {
                const int32_t pos = at + __popc(ballot & ((1u << lane) - 1u));
                pair_token[pos] = static_cast<int32_t>(i / K);
                pair_weight[pos] = weights[i];
                pair_pos[i] = pos;
            }
            at += __popc(ballot);
        }
    }
    if (tid == 0) {
        int32_t n = 0;
        for (int32_t e = 0; e < E; ++e) {
            const int32_t b = s_off[e], cnt = s_off[e + 1] - b;
            for (int32_t r = 0; r < cnt; r += item_rows) {
                items[n].expert = e;
                items[n].row_begin = b + r;
                items[n].count = cnt - r < item_rows ? cnt - r : item_rows;
                items[n].pad = 0;
                ++n;
            }
        }
        *num_items = n;
    }
}

constexpr int kCombineThreads = 256;

__global__ void __launch_bounds__(kCombineThreads)
    combine_kernel(const float* y, int64_t ldy, const int32_t* experts, const float* weights, const int32_t* pair_pos,
                   int64_t K, int64_t hidden, float* out, int64_t ldo) {
    __shared__ int32_t order[kMaxRouteTopK];
    const int64_t t = blockIdx.x;
    if (threadIdx.x == 0) {
        // The token's pairs in ascending expert id (insertion sort of <= 32 entries; ties keep k order).
        for (int32_t k = 0; k < K; ++k) {
            int32_t j = k;
            const int32_t e = experts[t * K + k];
            while (j > 0 && experts[t * K + order[j - 1]] > e) {
                order[j] = order[j - 1];
                --j;
            }
            order[j] = k;
        }
    }
    __syncthreads();
    for (int64_t c = threadIdx.x; c < hidden; c += kCombineThreads) {
        float v = 0.0f;
        for (int32_t j = 0; j < K; ++j) {
            const int32_t k = order[j];
            const int32_t pos = pair_pos[t * K + k];
            if (pos >= 0) v += weights[t * K + k] * y[static_cast<int64_t>(pos) * ldy + c];
        }
        out[t * ldo + c] = v;
    }
}

}  // namespace

Status moe_route_warp(const float* logits, int64_t T, int64_t ld, const float* bias, const RouteParams& params,
                      int32_t* experts, float* weights, cudaStream_t stream) {
    DS_RETURN_IF_ERROR(validate_route_params(params));
    if (params.num_experts > kMaxWarpRouteExperts || params.n_group > kMaxGroupsWarp) {
        return bad_arg("moe_route_warp", "at most " + std::to_string(kMaxWarpRouteExperts) + " experts in at most " +
                                             std::to_string(kMaxGroupsWarp) + " groups (got " +
                                             std::to_string(params.num_experts) + " in " +
                                             std::to_string(params.n_group) + ")");
    }
    if (T < 0 || ld < params.num_experts || (T > 0 && (logits == nullptr || experts == nullptr || weights == nullptr))) {
        return bad_arg("moe_route_warp", "need T >= 0, ld >= num_experts and non-null logits/experts/weights");
    }
    if (T == 0) return ok_status();
    if ((T + kRouteWarps - 1) / kRouteWarps > INT_MAX) return bad_arg("moe_route_warp", "T exceeds the grid");
    route_warp_kernel<<<static_cast<unsigned>((T + kRouteWarps - 1) / kRouteWarps), kRouteWarps * 32, 0, stream>>>(
        logits, T, ld, bias, params, experts, weights);
    DS_CUDA_RETURN_IF_LAUNCH_ERROR("route_warp_kernel");
    return ok_status();
}

Status moe_group(const int32_t* experts, const float* weights, int64_t T, int64_t K, int32_t num_experts,
                 const uint8_t* expert_held, int32_t item_rows, int32_t* offsets, int32_t* pair_token,
                 float* pair_weight, int32_t* pair_pos, MoeItem* items, int32_t* num_items, cudaStream_t stream) {
    if (T < 0 || K <= 0 || K > kMaxRouteTopK || num_experts <= 0 || num_experts > kMaxWarpRouteExperts ||
        item_rows <= 0 || T * K > (int64_t{1} << 24)) {
        return bad_arg("moe_group", "need T >= 0, 0 < K <= " + std::to_string(kMaxRouteTopK) + ", 0 < experts <= " +
                                        std::to_string(kMaxWarpRouteExperts) + ", item_rows > 0, T * K <= 2^24");
    }
    if (offsets == nullptr || items == nullptr || num_items == nullptr ||
        (T > 0 && (experts == nullptr || weights == nullptr || pair_token == nullptr || pair_weight == nullptr ||
                   pair_pos == nullptr))) {
        return bad_arg("moe_group", "null pointer");
    }
    group_kernel<<<1, kGroupThreads, 0, stream>>>(experts, weights, T * K, K, num_experts, expert_held, item_rows,
                                                  offsets,
                                                  pair_token, pair_weight, pair_pos, items, num_items);
    DS_CUDA_RETURN_IF_LAUNCH_ERROR("group_kernel");
    return ok_status();
}

Status moe_combine(const float* y, int64_t ldy, const int32_t* experts, const float* weights, const int32_t* pair_pos,
                   int64_t T, int64_t K, int64_t hidden, float* out, int64_t ldo, cudaStream_t stream) {
    if (T < 0 || K <= 0 || K > kMaxRouteTopK || hidden <= 0 || ldy < hidden || ldo < hidden) {
        return bad_arg("moe_combine", "need T >= 0, 0 < K <= 32, hidden > 0 and ldy/ldo >= hidden");
    }
    if (T == 0) return ok_status();
    if (y == nullptr || experts == nullptr || weights == nullptr || pair_pos == nullptr || out == nullptr) {
        return bad_arg("moe_combine", "null pointer");
    }
    if (T > INT_MAX) return bad_arg("moe_combine", "T exceeds the grid");
    combine_kernel<<<static_cast<unsigned>(T), kCombineThreads, 0, stream>>>(y, ldy, experts, weights, pair_pos, K,
                                                                             hidden, out, ldo);
    DS_CUDA_RETURN_IF_LAUNCH_ERROR("combine_kernel");
    return ok_status();
}

}  // namespace deepshard::kernels::cuda
