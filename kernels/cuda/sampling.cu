// GPU sampler (see sampling.h): one 1024-thread block per row; every pass is a loop of the block over the
// vocabulary (the row lives in global memory, L2-resident while the block works on it).
#include <cuda_runtime.h>

#include <cfloat>
#include <climits>

#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/launch_util.h"
#include "kernels/cuda/sampling.h"

namespace deepshard::kernels::cuda {

namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;

struct Shared {
    float f[kWarps];
    double d[kWarps];
    int32_t i[kWarps];
    int32_t hist[256];
    double mass[256];
    uint64_t keys[kMaxSampleLogprobs];
    int32_t count;
    int32_t chosen;
    int32_t k_left;
    int32_t found;
    double cum;
};

__device__ float block_max(float v, Shared& sh) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();
    if (threadIdx.x % 32 == 0) sh.f[threadIdx.x / 32] = v;
    __syncthreads();
    v = sh.f[0];
    for (int w = 1; w < kWarps; ++w) v = fmaxf(v, sh.f[w]);
    return v;
}

__device__ int32_t block_min(int32_t v, Shared& sh) {
    for (int o = 16; o > 0; o >>= 1) v = min(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();
    if (threadIdx.x % 32 == 0) sh.i[threadIdx.x / 32] = v;
    __syncthreads();
    v = sh.i[0];
    for (int w = 1; w < kWarps; ++w) v = min(v, sh.i[w]);
    return v;
}

// Deterministic sum (fixed shuffle tree, then the warps' partials in order).
__device__ double block_sum(double v, Shared& sh) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if (threadIdx.x % 32 == 0) sh.d[threadIdx.x / 32] = v;
    __syncthreads();
    v = 0.0;
    for (int w = 0; w < kWarps; ++w) v += sh.d[w];
    return v;
}

__device__ bool race_better(double ka, int32_t ia, double kb, int32_t ib) {
    if (ia < 0) return false;
    if (ib < 0) return true;
    return ka > kb || (ka == kb && ia < ib);
}

// The row's view: transformed logits, their max and the race inputs.
struct Row {
    const float* s;
    int32_t V;
    float m;
};

__device__ __forceinline__ float weight(const Row& r, int32_t i) { return expf(r.s[i] - r.m); }

// The k-th largest rank key (1-based) among ids with pred(i) (at least k of them).
template <typename Pred>
__device__ uint64_t select_kth(const Row& r, int32_t k, Pred pred, Shared& sh) {
    uint64_t prefix = 0;
    if (threadIdx.x == 0) sh.k_left = k;
    for (int level = 0; level < 8; ++level) {
        const uint64_t mask = sample_prefix_mask(level);
        for (int b = threadIdx.x; b < 256; b += kThreads) sh.hist[b] = 0;
        __syncthreads();
        for (int32_t i = threadIdx.x; i < r.V; i += kThreads) {
            if (!pred(i)) continue;
            const uint64_t key = sample_rank_key(r.s[i], i);
            if ((key & mask) == prefix) atomicAdd(&sh.hist[sample_digit(key, level)], 1);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int32_t left = sh.k_left, chosen = 0;
            for (int b = 255; b >= 0; --b) {
                if (left <= sh.hist[b]) {
                    chosen = b;
                    break;
                }
                left -= sh.hist[b];
            }
            sh.chosen = chosen;
            sh.k_left = left;
        }
        __syncthreads();
        prefix |= static_cast<uint64_t>(sh.chosen) << (56 - 8 * level);
    }
    return prefix;
}

// The key at which the mass of the pred ids, in descending key order, first reaches `target`: the
// smallest key of the minimal nucleus. If rounding keeps the running sum below the target, the descent
// goes to the smallest non-empty bin (everything is kept), as the CPU keeps its whole range.
template <typename Pred>
__device__ uint64_t select_mass(const Row& r, double target, Pred pred, Shared& sh) {
    uint64_t prefix = 0;
    if (threadIdx.x == 0) sh.cum = 0.0;
    for (int level = 0; level < 8; ++level) {
        const uint64_t mask = sample_prefix_mask(level);
        for (int b = threadIdx.x; b < 256; b += kThreads) {
            sh.mass[b] = 0.0;
            sh.hist[b] = 0;
        }
        __syncthreads();
        for (int32_t i = threadIdx.x; i < r.V; i += kThreads) {
            if (!pred(i)) continue;
            const uint64_t key = sample_rank_key(r.s[i], i);
            if ((key & mask) == prefix) {
                const uint32_t d = sample_digit(key, level);
                atomicAdd(&sh.mass[d], static_cast<double>(weight(r, i)));
                atomicAdd(&sh.hist[d], 1);
            }
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            double cum = sh.cum;
            int chosen = -1, lowest = 0;
            for (int b = 255; b >= 0; --b) {
                if (sh.hist[b] == 0) continue;
                lowest = b;
                if (cum + sh.mass[b] >= target) {
                    chosen = b;
                    break;
                }
                cum += sh.mass[b];
            }
            if (chosen < 0) {
                chosen = lowest;
                cum -= sh.mass[lowest];  // back to the mass above the lowest bin
            }
            sh.chosen = chosen;
            sh.cum = cum;
        }
        __syncthreads();
        prefix |= static_cast<uint64_t>(sh.chosen) << (56 - 8 * level);
    }
    return prefix;
}

__global__ void __launch_bounds__(kThreads) sample_kernel(float* logits, int64_t ld, int32_t V,
                                                          const SampleParams* params, const int32_t* pen_ids,
                                                          const float* pen_counts, SampleOut* out) {
    __shared__ Shared sh;
    const SampleParams p = params[blockIdx.x];
    float* s = logits + static_cast<int64_t>(p.row) * ld;
    const int tid = threadIdx.x;

    // 1-2. Penalties on the history's ids (distinct: no two threads touch one logit).
    for (int32_t j = p.penalty_begin + tid; j < p.penalty_end; j += kThreads) {
        const int32_t id = pen_ids[j];
        if (id >= 0 && id < V) s[id] = sample_penalize(s[id], pen_counts[j], p);
    }
    __syncthreads();
    // 3. Temperature, NaN -> -inf, the max and the lowest id holding it.
    const bool greedy = p.temperature == 0.0f;
    const float inv_t = sample_inv_temperature(p.temperature);
    float lmax = -INFINITY;
    for (int32_t i = tid; i < V; i += kThreads) {
        const float v = sample_scale(s[i], inv_t);
        s[i] = v;
        lmax = v > lmax ? v : lmax;
    }
    const float m = block_max(lmax, sh);
    int32_t amin = INT_MAX;
    for (int32_t i = tid; i < V; i += kThreads) {
        if (s[i] == m && i < amin) amin = i;
    }
    const int32_t argmax = block_min(amin, sh);
    SampleOut& o = out[blockIdx.x];
    if (m == -INFINITY) {
        if (tid == 0) {
            o.token = 0;
            o.logprob = -INFINITY;
            o.num_top = 0;
        }
        return;
    }
    const Row r{s, V, m};
    double zl = 0.0;
    for (int32_t i = tid; i < V; i += kThreads) zl += static_cast<double>(weight(r, i));
    const double z = block_sum(zl, sh);
    const double log_z = static_cast<double>(m) + log(z);

    int32_t token = argmax;
    if (!greedy) {
        // 4. Truncation as thresholds on the rank order.
        const bool has_topk = p.top_k > 0 && p.top_k < V;
        const bool truncated = has_topk || p.top_p < 1.0f || p.min_p > 0.0f;
        const float min_logit = p.min_p > 0.0f ? m + logf(p.min_p) : -INFINITY;
        auto keep_min_p = [&](int32_t i) { return s[i] > -INFINITY && s[i] >= min_logit; };
        double mass = z;
        uint64_t kth = 0;
        if (has_topk) {
            kth = select_kth(r, p.top_k, [](int32_t) { return true; }, sh);
            double ml = 0.0;
            for (int32_t i = tid; i < V; i += kThreads) {
                if (sample_rank_key(s[i], i) >= kth) ml += static_cast<double>(weight(r, i));
            }
            mass = block_sum(ml, sh);
        }
        const double eps = (!has_topk && p.top_p < 1.0f)
                               ? 0.5 * (1.0 - static_cast<double>(p.top_p)) * mass / static_cast<double>(V)
                               : -1.0;
        auto cand = [&](int32_t i) {
            if (has_topk) return sample_rank_key(s[i], i) >= kth && keep_min_p(i);
            return static_cast<double>(weight(r, i)) > eps && keep_min_p(i);
        };
        uint64_t nucleus = 0;
        if (p.top_p < 1.0f) {
            const double target = static_cast<double>(p.top_p) * mass;
            double cl = 0.0;
            for (int32_t i = tid; i < V; i += kThreads) {
                if (cand(i)) cl += static_cast<double>(weight(r, i));
            }
            if (block_sum(cl, sh) >= target) nucleus = select_mass(r, target, cand, sh);
        }
        // 5. The exponential race over the survivors.
        double best = 0.0;
        int32_t best_id = -1;
        for (int32_t i = tid; i < V; i += kThreads) {
            const bool alive = truncated ? (cand(i) && sample_rank_key(s[i], i) >= nucleus) : s[i] > -INFINITY;
            if (!alive) continue;
            const double key = sample_race_key(p.step_key, i, s[i]);
            if (race_better(key, i, best, best_id)) {
                best = key;
                best_id = i;
            }
        }
        for (int off = 16; off > 0; off >>= 1) {
            const double ok = __shfl_xor_sync(0xffffffffu, best, off);
            const int32_t oi = __shfl_xor_sync(0xffffffffu, best_id, off);
            if (race_better(ok, oi, best, best_id)) {
                best = ok;
                best_id = oi;
            }
        }
        __syncthreads();
        if (tid % 32 == 0) {
            sh.d[tid / 32] = best;
            sh.i[tid / 32] = best_id;
        }
        __syncthreads();
        best = sh.d[0];
        best_id = sh.i[0];
        for (int w = 1; w < kWarps; ++w) {
            if (race_better(sh.d[w], sh.i[w], best, best_id)) {
                best = sh.d[w];
                best_id = sh.i[w];
            }
        }
        if (best_id >= 0) token = best_id;
    }
    // Logprobs: the transformed distribution before truncation.
    const int32_t n = p.logprobs < V ? p.logprobs : V;
    if (n > 0) {
        const uint64_t kn = select_kth(r, n, [](int32_t) { return true; }, sh);
        if (tid == 0) sh.count = 0;
        __syncthreads();
        for (int32_t i = tid; i < V; i += kThreads) {
            const uint64_t key = sample_rank_key(s[i], i);
            if (key >= kn) {
                const int32_t at = atomicAdd(&sh.count, 1);
                if (at < kMaxSampleLogprobs) sh.keys[at] = key;
            }
        }
        __syncthreads();
    }
    if (tid == 0) {
        o.token = token;
        o.logprob = static_cast<float>(static_cast<double>(s[token]) - log_z);
        const int32_t cnt = n > 0 ? min(sh.count, kMaxSampleLogprobs) : 0;
        for (int32_t a = 1; a < cnt; ++a) {  // descending keys
            const uint64_t k = sh.keys[a];
            int32_t b = a;
            while (b > 0 && sh.keys[b - 1] < k) {
                sh.keys[b] = sh.keys[b - 1];
                --b;
            }
            sh.keys[b] = k;
        }
        o.num_top = cnt;
        for (int32_t a = 0; a < cnt; ++a) {
            const int32_t id = sample_key_id(sh.keys[a]);
            o.top_ids[a] = id;
            o.top_logprobs[a] = static_cast<float>(static_cast<double>(s[id]) - log_z);
        }
    }
}

}  // namespace

Status sample_rows(float* logits, int64_t ld, int64_t vocab, const SampleParams* params, int64_t rows,
                   const int32_t* pen_ids, const float* pen_counts, SampleOut* out, cudaStream_t stream) {
    if (rows < 0 || vocab <= 0 || vocab >= INT_MAX || ld < vocab || rows > 65535) {
        return internal::bad_arg("sample_rows", "need 0 <= rows <= 65535, 0 < vocab < 2^31 and ld >= vocab");
    }
    if (rows == 0) return ok_status();
    if (logits == nullptr || params == nullptr || out == nullptr) return internal::bad_arg("sample_rows", "null pointer");
    sample_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(logits, ld, static_cast<int32_t>(vocab), params,
                                                                        pen_ids, pen_counts, out);
    DS_CUDA_RETURN_IF_LAUNCH_ERROR("sample_kernel");
    return ok_status();
}

}  // namespace deepshard::kernels::cuda
