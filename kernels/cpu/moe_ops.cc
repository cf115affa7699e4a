// CPU MoE ops (kernels/moe.h): the routing decisions of the official model (group-limited top-k over
// biased sigmoid scores) and the by-expert grouping the MoE layer executes experts in.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "common/status.h"
#include "common/thread_pool.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/moe.h"

namespace deepshard::kernels {

void moe_route(const float* logits, int64_t T, int64_t ld, const float* bias, const RouteParams& p, int32_t* experts,
               float* weights) {
    const int64_t E = p.num_experts, K = p.top_k, G = p.n_group;
    DS_CHECK(E > 0 && K > 0 && K <= E && G > 0 && E % G == 0 && p.topk_group >= 1 && p.topk_group <= G)
        << "moe_route: bad routing parameters (experts " << E << ", top_k " << K << ", groups " << G << ", kept "
        << p.topk_group << ")";
    const int64_t per_group = E / G;
    ThreadPool::global().parallel_for(T, [&](int64_t tb, int64_t te) {
        std::vector<float> s(E), sb(E), gs(G);
        std::vector<int32_t> idx(E), gidx(G);
        std::vector<char> keep(G);
        for (int64_t t = tb; t < te; ++t) {
            const float* row = logits + t * ld;
            if (p.softmax) {
                float mx = *std::max_element(row, row + E), sum = 0.0f;
                for (int64_t e = 0; e < E; ++e) sum += (s[e] = std::exp(row[e] - mx));
                for (int64_t e = 0; e < E; ++e) s[e] /= sum;
            } else {
                for (int64_t e = 0; e < E; ++e) s[e] = 1.0f / (1.0f + std::exp(-row[e]));
            }
            for (int64_t e = 0; e < E; ++e) sb[e] = s[e] + (bias == nullptr ? 0.0f : bias[e]);
            if (G > 1) {
                for (int64_t gi = 0; gi < G; ++gi) {
                    const float* v = sb.data() + gi * per_group;
                    if (bias == nullptr) {
                        gs[gi] = *std::max_element(v, v + per_group);
                    } else {
                        // Sum of the top two (or the only one) in the group.
                        float m1 = -INFINITY, m2 = -INFINITY;
                        for (int64_t j = 0; j < per_group; ++j) {
                            if (v[j] > m1) {
                                m2 = m1;
                                m1 = v[j];
                            } else if (v[j] > m2) {
                                m2 = v[j];
                            }
                        }
                        gs[gi] = per_group >= 2 ? m1 + m2 : m1;
                    }
                }
                std::iota(gidx.begin(), gidx.end(), 0);
                std::partial_sort(gidx.begin(), gidx.begin() + p.topk_group, gidx.end(), [&](int32_t a, int32_t b) {
                    return gs[a] > gs[b] || (gs[a] == gs[b] && a < b);
                });
                std::fill(keep.begin(), keep.end(), 0);
                for (int64_t i = 0; i < p.topk_group; ++i) keep[gidx[i]] = 1;
                for (int64_t e = 0; e < E; ++e) {
                    if (!keep[e / per_group]) sb[e] = -INFINITY;
                }
            }
            std::iota(idx.begin(), idx.end(), 0);
            std::partial_sort(idx.begin(), idx.begin() + K, idx.end(),
                              [&](int32_t a, int32_t b) { return sb[a] > sb[b] || (sb[a] == sb[b] && a < b); });
            int32_t* ex = experts + t * K;
            float* w = weights + t * K;
            float wsum = 0.0f;
            for (int64_t k = 0; k < K; ++k) {
                ex[k] = idx[k];
                w[k] = s[idx[k]];
                wsum += w[k];
            }
            const bool normalize = !p.softmax && p.norm_topk_prob;
            for (int64_t k = 0; k < K; ++k) {
                if (normalize) w[k] /= wsum;
                w[k] *= p.routed_scaling_factor;
            }
        }
    });
}

void moe_group_by_expert(const int32_t* experts, const float* weights, int64_t T, int64_t K, int32_t num_experts,
                         int32_t* offsets, int32_t* tokens, float* pair_weights) {
    std::fill(offsets, offsets + num_experts + 1, 0);
    for (int64_t i = 0; i < T * K; ++i) {
        DS_CHECK(experts[i] >= 0 && experts[i] < num_experts)
            << "moe_group_by_expert: token " << i / K << " routed to expert " << experts[i] << " of " << num_experts;
        ++offsets[experts[i] + 1];
    }
    for (int32_t e = 0; e < num_experts; ++e) offsets[e + 1] += offsets[e];
    std::vector<int32_t> fill(offsets, offsets + num_experts);
    for (int64_t t = 0; t < T; ++t) {
        for (int64_t k = 0; k < K; ++k) {
            const int32_t e = experts[t * K + k];
            const int32_t at = fill[e]++;
            tokens[at] = static_cast<int32_t>(t);
            pair_weights[at] = weights[t * K + k];
        }
    }
}

void gather_tokens(const float* x, int64_t ldx, const int32_t* rows, int64_t n, int64_t cols, float* out,
                   int64_t ldo) {
    for (int64_t i = 0; i < n; ++i) {
        std::copy(x + rows[i] * ldx, x + rows[i] * ldx + cols, out + i * ldo);
    }
}

void scatter_add_weighted(const float* src, int64_t lds, int64_t n, int64_t cols, const int32_t* rows, const float* w,
                          float* y, int64_t ldy) {
    for (int64_t i = 0; i < n; ++i) {
        float* dst = y + rows[i] * ldy;
        const float wi = w[i];
        const float* s = src + i * lds;
        for (int64_t j = 0; j < cols; ++j) dst[j] += wi * s[j];
    }
}

namespace {

// One active expert of a moe_ffn call: its rows of the gathered input and of the activations.
struct Active {
    const ExpertMlp* mlp;
    int64_t n;               // tokens
    const int32_t* tokens;   // nullptr: tokens 0..n-1 (the shared expert)
    const float* weights;    // nullptr: weight 1
    const float* x;          // [n, H] input rows
    float* act;              // [n, inter] activations
    int64_t inter;
};

void check_expert(const ExpertMlp& e, int64_t H, const char* what) {
    DS_CHECK(e.w3 != nullptr && e.w2 != nullptr) << "moe_ffn: " << what << " lacks up/down weights";
    DS_CHECK(e.w1->cols == H && e.w3->cols == H && e.w1->rows == e.w3->rows && e.w2->rows == H &&
             e.w2->cols == e.w1->rows)
        << "moe_ffn: " << what << " has shapes gate " << e.w1->rows << "x" << e.w1->cols << ", down " << e.w2->rows
        << "x" << e.w2->cols << " for hidden " << H;
}

}  // namespace

void moe_ffn(const float* x, int64_t T, int64_t H, const int32_t* offsets, const int32_t* tokens,
             const float* pair_weights, std::span<const ExpertMlp> experts, const ExpertMlp* shared, float* y,
             Numerics numerics) {
    if (T <= 0) return;
    const cpu::KernelTable& t = cpu::active_table();
    // Active experts in ascending id, then the shared expert.
    std::vector<Active> active;
    int64_t gathered = 0, act_floats = 0;
    for (size_t e = 0; e < experts.size(); ++e) {
        const int64_t n = offsets[e + 1] - offsets[e];
        if (n == 0 || experts[e].w1 == nullptr) continue;
        check_expert(experts[e], H, "routed expert");
        active.push_back({&experts[e], n, tokens + offsets[e], pair_weights + offsets[e], nullptr, nullptr,
                          experts[e].w1->rows});
        gathered += n;
        act_floats += n * experts[e].w1->rows;
    }
    if (shared != nullptr) {
        check_expert(*shared, H, "shared expert");
        active.push_back({shared, T, nullptr, nullptr, x, nullptr, shared->w1->rows});
        act_floats += T * shared->w1->rows;
    }
    if (active.empty()) {
        std::fill(y, y + T * H, 0.0f);
        return;
    }
    // Inputs: a single token needs no gather (every expert reads row 0); otherwise each routed
    // expert's token rows are copied into one dense block.
    float* xg = static_cast<float*>(cpu::thread_scratch(6, static_cast<size_t>(T == 1 ? 1 : gathered * H) * 4));
    float* act = static_cast<float*>(cpu::thread_scratch(7, static_cast<size_t>(act_floats) * 4));
    {
        int64_t g = 0, a = 0;
        for (Active& ae : active) {
            ae.act = act + a;
            a += ae.n * ae.inter;
            if (ae.x != nullptr) continue;
            if (T == 1) {
                ae.x = x;
            } else {
                ae.x = xg + g * H;
                gather_tokens(x, H, ae.tokens, ae.n, H, xg + g * H, H);
                g += ae.n;
            }
        }
    }
    // Region 1: gate/up + SiLU of every active expert.
    std::vector<SwigluJob> jobs;
    jobs.reserve(active.size());
    for (const Active& ae : active) jobs.push_back({ae.x, ae.n, H, ae.mlp->w1, ae.mlp->w3, ae.act, ae.inter});
    swiglu_batch(jobs, numerics);

    // Region 2: down projections by column block of y, all experts in order within a block.
    std::vector<cpu::Bf16Inputs::Input> inputs(active.size());
    for (size_t i = 0; i < active.size(); ++i) {
        inputs[i] = {cpu::use_bf16(t, numerics, active[i].mlp->w2->dtype), active[i].act, active[i].n, active[i].inter,
                     active[i].inter};
    }
    cpu::Bf16Inputs actb;
    actb.prepare(t, inputs);
    const int64_t nt = ThreadPool::global().size();
    int64_t cw = 128;
    while (cw > 16 && H / cw < 4 * nt) cw /= 2;
    const int64_t chunks = (H + cw - 1) / cw;
    int64_t max_n = 0;
    for (const Active& ae : active) max_n = std::max(max_n, ae.n);
    auto run = [&](int64_t c) {
        const int64_t c0 = c * cw, nc = std::min(cw, H - c0);
        for (int64_t i = 0; i < T; ++i) std::fill(y + i * H + c0, y + i * H + c0 + nc, 0.0f);
        float* tmp = static_cast<float*>(cpu::thread_scratch(3, static_cast<size_t>(max_n * nc) * 4));
        for (size_t j = 0; j < active.size(); ++j) {
            const Active& ae = active[j];
            const WeightView v = ae.mlp->w2->slice_rows(c0, nc);
            t.matmul_rows({ae.act, ae.n, ae.inter, &v, tmp, nc, false, actb.get(j), cpu::bf16_stride(ae.inter)}, 0, nc);
            for (int64_t i = 0; i < ae.n; ++i) {
                const int64_t tok = ae.tokens != nullptr ? ae.tokens[i] : i;
                t.axpy(ae.weights != nullptr ? ae.weights[i] : 1.0f, tmp + i * nc, y + tok * H + c0, nc);
            }
        }
    };
    if (chunks == 1) {
        run(0);
    } else {
        ThreadPool::global().parallel_tasks(chunks, run);
    }
}

void residual_add(float* h, const float* x, int64_t n) {
    for (int64_t i = 0; i < n; ++i) h[i] += x[i];
}

}  // namespace deepshard::kernels
