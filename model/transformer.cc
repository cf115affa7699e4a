// DeepSeek-V3 forward pass on CPU kernels. Follows the official inference/model.py in float32
// (MODEL_SPEC §2): RMSNorm in fp32, MLA in the absorbed form over a latent cache, YaRN RoPE in the
// interleaved layout, sigmoid MoE gate with group-limited top-k, SwiGLU experts + shared experts.
#include "model/transformer.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <numeric>
#include <string>

#include "common/thread_pool.h"
#include "kernels/kernels.h"

namespace deepshard::model {

using kernels::WeightView;

namespace {

struct Mlp {
    WeightView w1, w3, w2;  // gate_proj, up_proj, down_proj (possibly TP slices)
    int64_t inter = 0;      // intermediate width held
};

struct Layer {
    std::vector<float> attn_norm, ffn_norm, q_norm, kv_norm;
    WeightView wq_a, wq_b, wq;  // wq when q_lora_rank == 0
    WeightView wkv_a, wkv_b, wo;
    bool moe = false;
    Mlp dense;
    WeightView gate;            // router [E, H]
    std::vector<float> bias;    // e_score_correction_bias (selection only); empty = none
    std::vector<Mlp> experts;   // index = expert id; invalid views for experts not held
    Mlp shared;
    bool has_shared = false;
};

// Grows a scratch buffer without shrinking (steps reuse it).
float* scratch(std::vector<float>& v, int64_t n) {
    if (static_cast<int64_t>(v.size()) < n) {
        v.resize(static_cast<size_t>(n));
    }
    return v.data();
}

}  // namespace

struct Transformer::Impl {
    const ModelConfig* cfg = nullptr;
    int64_t first = 0, last = 0;    // layer range
    int64_t h0 = 0, nh = 0;         // local heads
    int64_t vb = 0, ve = 0;         // vocab range
    WeightView embed, head;
    std::vector<float> final_norm;
    std::vector<Layer> layers;
    std::vector<float> inv_freq;
    float softmax_scale = 1.0f;
    // Scratch, reused across steps.
    std::vector<float> h, a, q, qa, kva, qlat, olat, o, out, f, ffn, g, u, xe, ye, router;

    Status load(const Checkpoint& ck, const ShardSpec& spec);
    Status load_mlp(const Checkpoint& ck, const std::string& prefix, int64_t inter, int64_t tp_rank, int64_t tp_size,
                    Mlp* mlp);
    void rope(float* v, int64_t pos) const;
    void mla(const Layer& L, int64_t layer_index, KvCache& kv, const float* x, int64_t T,
             const std::vector<uint64_t>& tok_seq, const std::vector<int64_t>& tok_pos, float* y);
    void mlp(const Mlp& m, const float* x, int64_t T, float* y, bool accumulate);
    Status moe(const Layer& L, int64_t layer_index, const float* x, int64_t T, float* y, ForwardHooks* hooks,
               MoeExchange* exchange);
};

Status Transformer::Impl::load_mlp(const Checkpoint& ck, const std::string& prefix, int64_t inter, int64_t tp_rank,
                                   int64_t tp_size, Mlp* m) {
    const int64_t H = cfg->hidden_size;
    if (inter % tp_size != 0) {
        return invalid_argument(prefix + ": width " + std::to_string(inter) + " is not divisible by tp " +
                                std::to_string(tp_size));
    }
    const int64_t part = inter / tp_size, c0 = tp_rank * part;
    DS_ASSIGN_OR_RETURN(m->w1, ck.weight_rows(prefix + "gate_proj.weight", inter, H, c0, part));
    DS_ASSIGN_OR_RETURN(m->w3, ck.weight_rows(prefix + "up_proj.weight", inter, H, c0, part));
    DS_ASSIGN_OR_RETURN(m->w2, ck.weight_cols(prefix + "down_proj.weight", H, inter, c0, part));
    m->inter = part;
    return ok_status();
}

Status Transformer::Impl::load(const Checkpoint& ck, const ShardSpec& spec) {
    const ModelConfig& c = *cfg;
    const int64_t H = c.hidden_size, nope = c.qk_nope_head_dim, rd = c.qk_rope_head_dim, vd = c.v_head_dim;
    const int64_t qk = nope + rd, heads = c.num_attention_heads;
    first = spec.first_layer;
    last = spec.last_layer < 0 ? c.num_hidden_layers : spec.last_layer;
    h0 = spec.head_begin;
    nh = (spec.head_end < 0 ? heads : spec.head_end) - h0;
    vb = spec.vocab_begin;
    ve = spec.vocab_end < 0 ? c.vocab_size : spec.vocab_end;
    if (first < 0 || last > c.num_hidden_layers || first > last) {
        return invalid_argument("shard layer range [" + std::to_string(first) + ", " + std::to_string(last) +
                                ") is outside the model's " + std::to_string(c.num_hidden_layers) + " layers");
    }
    if (h0 < 0 || nh <= 0 || h0 + nh > heads) {
        return invalid_argument("shard head range is outside the model's " + std::to_string(heads) + " heads");
    }
    if (vb < 0 || ve > c.vocab_size || vb >= ve) {
        return invalid_argument("shard vocabulary range is outside the model's vocabulary");
    }
    if (!spec.experts.empty() && static_cast<int64_t>(spec.experts.size()) != c.n_routed_experts) {
        return invalid_argument("shard expert mask has " + std::to_string(spec.experts.size()) + " entries, model has " +
                                std::to_string(c.n_routed_experts) + " experts");
    }
    if (spec.has_embedding) {
        DS_ASSIGN_OR_RETURN(embed, ck.weight_rows("model.embed_tokens.weight", c.vocab_size, H, vb, ve - vb));
    }
    if (spec.has_head) {
        DS_ASSIGN_OR_RETURN(head, ck.weight_rows("lm_head.weight", c.vocab_size, H, vb, ve - vb));
        DS_ASSIGN_OR_RETURN(final_norm, ck.vector_f32("model.norm.weight", H));
    }
    for (int64_t l = first; l < last; ++l) {
        const std::string p = layer_prefix(l);
        Layer L;
        DS_ASSIGN_OR_RETURN(L.attn_norm, ck.vector_f32(p + "input_layernorm.weight", H));
        DS_ASSIGN_OR_RETURN(L.ffn_norm, ck.vector_f32(p + "post_attention_layernorm.weight", H));
        const std::string a = p + "self_attn.";
        if (c.q_lora_rank > 0) {
            DS_ASSIGN_OR_RETURN(L.wq_a, ck.weight(a + "q_a_proj.weight", c.q_lora_rank, H));
            DS_ASSIGN_OR_RETURN(L.q_norm, ck.vector_f32(a + "q_a_layernorm.weight", c.q_lora_rank));
            DS_ASSIGN_OR_RETURN(L.wq_b, ck.weight_rows(a + "q_b_proj.weight", heads * qk, c.q_lora_rank, h0 * qk, nh * qk));
        } else {
            DS_ASSIGN_OR_RETURN(L.wq, ck.weight_rows(a + "q_proj.weight", heads * qk, H, h0 * qk, nh * qk));
        }
        DS_ASSIGN_OR_RETURN(L.wkv_a, ck.weight(a + "kv_a_proj_with_mqa.weight", c.kv_lora_rank + rd, H));
        DS_ASSIGN_OR_RETURN(L.kv_norm, ck.vector_f32(a + "kv_a_layernorm.weight", c.kv_lora_rank));
        DS_ASSIGN_OR_RETURN(L.wkv_b, ck.weight_rows(a + "kv_b_proj.weight", heads * (nope + vd), c.kv_lora_rank,
                                                    h0 * (nope + vd), nh * (nope + vd)));
        DS_ASSIGN_OR_RETURN(L.wo, ck.weight_cols(a + "o_proj.weight", H, heads * vd, h0 * vd, nh * vd));
        L.moe = c.is_moe_layer(l);
        const std::string m = p + "mlp.";
        if (!L.moe) {
            DS_RETURN_IF_ERROR(load_mlp(ck, m, c.intermediate_size, spec.tp_rank, spec.tp_size, &L.dense));
        } else {
            const int64_t E = c.n_routed_experts;
            DS_ASSIGN_OR_RETURN(L.gate, ck.weight(m + "gate.weight", E, H));
            if (ck.find(m + "gate.e_score_correction_bias") != nullptr) {
                DS_ASSIGN_OR_RETURN(L.bias, ck.vector_f32(m + "gate.e_score_correction_bias", E));
            }
            L.experts.resize(static_cast<size_t>(E));
            for (int64_t e = 0; e < E; ++e) {
                if (!spec.experts.empty() && !spec.experts[e]) {
                    continue;
                }
                DS_RETURN_IF_ERROR(
                    load_mlp(ck, m + "experts." + std::to_string(e) + ".", c.moe_intermediate_size, 0, 1, &L.experts[e]));
            }
            if (c.n_shared_experts > 0) {
                L.has_shared = true;
                DS_RETURN_IF_ERROR(load_mlp(ck, m + "shared_experts.", c.moe_intermediate_size * c.n_shared_experts,
                                            spec.tp_rank, spec.tp_size, &L.shared));
            }
        }
        layers.push_back(std::move(L));
    }
    inv_freq = c.rope_inv_freq();
    softmax_scale = static_cast<float>(c.softmax_scale());
    return ok_status();
}

// Interleaved (GPT-J) rotation of consecutive pairs, as the checkpoint layout requires.
void Transformer::Impl::rope(float* v, int64_t pos) const {
    const int64_t pairs = static_cast<int64_t>(inv_freq.size());
    for (int64_t i = 0; i < pairs; ++i) {
        const float angle = static_cast<float>(pos) * inv_freq[i];
        const float cs = std::cos(angle), sn = std::sin(angle);
        const float x0 = v[2 * i], x1 = v[2 * i + 1];
        v[2 * i] = x0 * cs - x1 * sn;
        v[2 * i + 1] = x0 * sn + x1 * cs;
    }
}

void Transformer::Impl::mla(const Layer& L, int64_t li, KvCache& kv, const float* x, int64_t T,
                            const std::vector<uint64_t>& tok_seq, const std::vector<int64_t>& tok_pos, float* y) {
    const ModelConfig& c = *cfg;
    const int64_t H = c.hidden_size, nope = c.qk_nope_head_dim, rd = c.qk_rope_head_dim, vd = c.v_head_dim;
    const int64_t qk = nope + rd, R = c.kv_lora_rank;
    const float eps = static_cast<float>(c.rms_norm_eps);

    // Queries [T, nh, qk].
    float* qbuf = scratch(q, T * nh * qk);
    if (c.q_lora_rank > 0) {
        float* qab = scratch(qa, T * c.q_lora_rank);
        kernels::matmul(x, T, H, L.wq_a, qab, c.q_lora_rank);
        kernels::rmsnorm(qab, T, c.q_lora_rank, c.q_lora_rank, L.q_norm.data(), eps, qab, c.q_lora_rank);
        kernels::matmul(qab, T, c.q_lora_rank, L.wq_b, qbuf, nh * qk);
    } else {
        kernels::matmul(x, T, H, L.wq, qbuf, nh * qk);
    }
    // Latent + rope key, normalized/rotated and written to the cache before any read: a prefill
    // token attends to the earlier tokens of its own chunk.
    float* kvb = scratch(kva, T * (R + rd));
    kernels::matmul(x, T, H, L.wkv_a, kvb, R + rd);
    const int64_t li_local = li - first;
    ThreadPool::global().parallel_for(T, [&](int64_t b, int64_t e) {
        for (int64_t t = b; t < e; ++t) {
            float* row = kvb + t * (R + rd);
            kernels::rmsnorm(row, 1, R, R, L.kv_norm.data(), eps, row, R);
            rope(row + R, tok_pos[t]);
            float* slot = kv.slot(li_local, tok_seq[t], tok_pos[t]);
            std::copy(row, row + R + rd, slot);
            for (int64_t hh = 0; hh < nh; ++hh) {
                rope(qbuf + (t * nh + hh) * qk + nope, tok_pos[t]);
            }
        }
    });

    // Absorb W_UK into the query: q_lat[t,h,:] = q_nope[t,h,:] . W_UK[h] (W_UK[h] = [nope, R]).
    float* ql = scratch(qlat, T * nh * R);
    ThreadPool::global().parallel_for(nh, [&](int64_t b, int64_t e) {
        std::vector<float> wuk(static_cast<size_t>(nope * R));
        std::vector<int32_t> rows(static_cast<size_t>(nope));
        for (int64_t hh = b; hh < e; ++hh) {
            std::iota(rows.begin(), rows.end(), static_cast<int32_t>(hh * (nope + vd)));
            kernels::gather_rows(L.wkv_b, rows.data(), nope, wuk.data(), R);
            for (int64_t t = 0; t < T; ++t) {
                const float* qn = qbuf + (t * nh + hh) * qk;
                float* dst = ql + (t * nh + hh) * R;
                std::fill(dst, dst + R, 0.0f);
                for (int64_t d = 0; d < nope; ++d) {
                    const float s = qn[d];
                    const float* w = wuk.data() + d * R;
                    for (int64_t r = 0; r < R; ++r) dst[r] += s * w[r];
                }
            }
        }
    }, 1);

    // Attention over the latent cache; p in fp32.
    float* ol = scratch(olat, T * nh * R);
    ThreadPool::global().parallel_for(T * nh, [&](int64_t b, int64_t e) {
        std::vector<float> p;
        for (int64_t th = b; th < e; ++th) {
            const int64_t t = th / nh, hh = th % nh;
            const float* qlat_row = ql + th * R;
            const float* qpe = qbuf + (t * nh + hh) * qk + nope;
            const int64_t n = tok_pos[t] + 1;
            const std::vector<int32_t>& table = kv.block_table(tok_seq[t]);
            const int64_t bs = kv.config().block_size;
            auto cached = [&](int64_t j) { return kv.block_slot(li_local, table[j / bs], j % bs); };
            p.resize(static_cast<size_t>(n));
            float mx = -INFINITY;
            for (int64_t j = 0; j < n; ++j) {
                const float* s = cached(j);
                float acc = 0.0f;
                for (int64_t r = 0; r < R; ++r) acc += qlat_row[r] * s[r];
                float accpe = 0.0f;
                for (int64_t r = 0; r < rd; ++r) accpe += qpe[r] * s[R + r];
                p[j] = (acc + accpe) * softmax_scale;
                mx = std::max(mx, p[j]);
            }
            float sum = 0.0f;
            for (int64_t j = 0; j < n; ++j) {
                p[j] = std::exp(p[j] - mx);
                sum += p[j];
            }
            const float inv = 1.0f / sum;
            float* dst = ol + th * R;
            std::fill(dst, dst + R, 0.0f);
            for (int64_t j = 0; j < n; ++j) {
                const float* s = cached(j);
                const float w = p[j] * inv;
                for (int64_t r = 0; r < R; ++r) dst[r] += w * s[r];
            }
        }
    });

    // o[t, h*vd:(h+1)*vd] = o_lat[t,h,:] . W_UV[h]^T, then out = o . Wo^T.
    float* ob = scratch(o, T * nh * vd);
    for (int64_t hh = 0; hh < nh; ++hh) {
        const WeightView wuv = L.wkv_b.slice_rows(hh * (nope + vd) + nope, vd);
        kernels::matmul(ol + hh * R, T, nh * R, wuv, ob + hh * vd, nh * vd);
    }
    kernels::matmul(ob, T, nh * vd, L.wo, y, H);
}

void Transformer::Impl::mlp(const Mlp& m, const float* x, int64_t T, float* y, bool accumulate) {
    const int64_t H = cfg->hidden_size, I = m.inter;
    float* gb = scratch(g, T * I);
    float* ub = scratch(u, T * I);
    kernels::matmul(x, T, H, m.w1, gb, I);
    kernels::matmul(x, T, H, m.w3, ub, I);
    kernels::silu_mul(gb, ub, T * I, gb);
    kernels::matmul(gb, T, I, m.w2, y, H, accumulate);
}

Status Transformer::Impl::moe(const Layer& L, int64_t li, const float* x, int64_t T, float* y, ForwardHooks* hooks,
                              MoeExchange* exchange) {
    const ModelConfig& c = *cfg;
    const int64_t H = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
    const int64_t G = c.n_group, per_group = E / G;
    float* sc = scratch(router, std::max<int64_t>(T, 1) * E);
    if (T > 0) {
        kernels::matmul(x, T, H, L.gate, sc, E);
    }

    // Routing per token: scores, bias for selection only, group limit, top-k, normalized weights.
    std::vector<std::vector<std::pair<int64_t, float>>> by_expert(static_cast<size_t>(E));
    std::vector<float> s(E), sb(E), gs(G);
    std::vector<int32_t> idx(E), gidx(G), chosen(K);
    std::vector<float> weights(K);
    std::vector<int32_t> all_experts(static_cast<size_t>(T * K));
    std::vector<float> all_weights(static_cast<size_t>(T * K));
    for (int64_t t = 0; t < T; ++t) {
        const float* row = sc + t * E;
        if (c.scoring_func == "softmax") {
            float mx = *std::max_element(row, row + E), sum = 0.0f;
            for (int64_t e = 0; e < E; ++e) sum += (s[e] = std::exp(row[e] - mx));
            for (int64_t e = 0; e < E; ++e) s[e] /= sum;
        } else {
            for (int64_t e = 0; e < E; ++e) s[e] = 1.0f / (1.0f + std::exp(-row[e]));
        }
        for (int64_t e = 0; e < E; ++e) sb[e] = s[e] + (L.bias.empty() ? 0.0f : L.bias[e]);
        if (G > 1) {
            for (int64_t gi = 0; gi < G; ++gi) {
                const float* v = sb.data() + gi * per_group;
                if (L.bias.empty()) {
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
            std::partial_sort(gidx.begin(), gidx.begin() + c.topk_group, gidx.end(), [&](int32_t p, int32_t q) {
                return gs[p] > gs[q] || (gs[p] == gs[q] && p < q);
            });
            std::vector<bool> keep(G, false);
            for (int64_t i = 0; i < c.topk_group; ++i) keep[gidx[i]] = true;
            for (int64_t e = 0; e < E; ++e) {
                if (!keep[e / per_group]) sb[e] = -INFINITY;
            }
        }
        std::iota(idx.begin(), idx.end(), 0);
        std::partial_sort(idx.begin(), idx.begin() + K, idx.end(),
                          [&](int32_t p, int32_t q) { return sb[p] > sb[q] || (sb[p] == sb[q] && p < q); });
        float wsum = 0.0f;
        for (int64_t k = 0; k < K; ++k) {
            chosen[k] = idx[k];
            weights[k] = s[idx[k]];
            wsum += weights[k];
        }
        const bool normalize = c.scoring_func == "sigmoid" ? c.norm_topk_prob : false;
        for (int64_t k = 0; k < K; ++k) {
            if (normalize) weights[k] /= wsum;
            weights[k] *= static_cast<float>(c.routed_scaling_factor);
            by_expert[chosen[k]].push_back({t, weights[k]});
            all_experts[t * K + k] = chosen[k];
            all_weights[t * K + k] = weights[k];
        }
        if (hooks != nullptr && hooks->on_routing) {
            hooks->on_routing(li, t, chosen, weights);
        }
    }

    std::fill(y, y + T * H, 0.0f);
    if (exchange != nullptr) {
        // Expert parallel: the exchange routes tokens to the experts' owners and back.
        auto local = [&](int32_t e, const float* xs, int64_t n, float* ys) { mlp(L.experts[e], xs, n, ys, false); };
        DS_RETURN_IF_ERROR(exchange->run(x, T, H, all_experts, all_weights, K, local, y));
        if (L.has_shared && T > 0) {
            mlp(L.shared, x, T, y, true);
        }
        return ok_status();
    }
    // Routed experts held here, in ascending id order (the official accumulation order).
    for (int64_t e = 0; e < E; ++e) {
        const auto& toks = by_expert[e];
        if (toks.empty() || !L.experts[e].w1.valid()) {
            continue;
        }
        const int64_t n = static_cast<int64_t>(toks.size());
        float* xb = scratch(xe, n * H);
        for (int64_t i = 0; i < n; ++i) {
            std::copy(x + toks[i].first * H, x + (toks[i].first + 1) * H, xb + i * H);
        }
        float* yb = scratch(ye, n * H);
        mlp(L.experts[e], xb, n, yb, false);
        for (int64_t i = 0; i < n; ++i) {
            float* dst = y + toks[i].first * H;
            const float w = toks[i].second;
            const float* src = yb + i * H;
            for (int64_t j = 0; j < H; ++j) dst[j] += w * src[j];
        }
    }
    if (L.has_shared) {
        mlp(L.shared, x, T, y, true);
    }
    return ok_status();
}

Transformer::Transformer(std::shared_ptr<const Checkpoint> checkpoint, const ShardSpec& spec, KvCache kv)
    : checkpoint_(std::move(checkpoint)), spec_(spec), kv_(std::move(kv)), impl_(std::make_unique<Impl>()) {}

Transformer::~Transformer() = default;

StatusOr<std::unique_ptr<Transformer>> Transformer::create(std::shared_ptr<const Checkpoint> checkpoint,
                                                           const ShardSpec& spec, const TransformerOptions& options) {
    const ModelConfig& c = checkpoint->config();
    KvCacheConfig kc;
    kc.num_layers = (spec.last_layer < 0 ? c.num_hidden_layers : spec.last_layer) - spec.first_layer;
    kc.latent_dim = c.kv_lora_rank;
    kc.rope_dim = c.qk_rope_head_dim;
    kc.block_size = options.kv_block_size;
    kc.num_blocks = kc.num_layers > 0 ? kc.blocks_for_budget(options.kv_budget_bytes) : 1;
    if (kc.num_layers <= 0) {
        kc.num_layers = 1;  // a head-only shard still gets a (tiny) valid cache object
    }
    DS_ASSIGN_OR_RETURN(KvCache kv, KvCache::create(kc));
    std::unique_ptr<Transformer> t(new Transformer(std::move(checkpoint), spec, std::move(kv)));
    t->impl_->cfg = &t->checkpoint_->config();
    DS_RETURN_IF_ERROR(t->impl_->load(*t->checkpoint_, spec));
    return t;
}

StatusOr<StepOutput> Transformer::step(std::span<const SeqChunk> chunks, std::span<const float> hidden_in) {
    Impl& m = *impl_;
    const ModelConfig& c = *m.cfg;
    const int64_t H = c.hidden_size;
    const float eps = static_cast<float>(c.rms_norm_eps);

    // Token bookkeeping and KV admission (all-or-nothing).
    int64_t T = 0, blocks = 0;
    for (size_t i = 0; i < chunks.size(); ++i) {
        const SeqChunk& ch = chunks[i];
        const int64_t n = ch.tokens.empty() ? ch.num_tokens : static_cast<int64_t>(ch.tokens.size());
        if (n <= 0) {
            return invalid_argument("step: sequence " + std::to_string(ch.seq_id) + " has no tokens");
        }
        if (ch.start_pos < 0 || ch.start_pos + n > c.max_position_embeddings) {
            return invalid_argument("step: sequence " + std::to_string(ch.seq_id) + " positions [" +
                                    std::to_string(ch.start_pos) + ", " + std::to_string(ch.start_pos + n) +
                                    ") exceed max_position_embeddings " + std::to_string(c.max_position_embeddings));
        }
        for (size_t j = 0; j < i; ++j) {
            if (chunks[j].seq_id == ch.seq_id) {
                return invalid_argument("step: sequence " + std::to_string(ch.seq_id) + " appears twice");
            }
        }
        if (ch.start_pos > 0 && kv_.capacity(ch.seq_id) < ch.start_pos) {
            return invalid_argument("step: sequence " + std::to_string(ch.seq_id) + " starts at position " +
                                    std::to_string(ch.start_pos) + " but has no cached prefix");
        }
        blocks += kv_.blocks_needed(ch.seq_id, ch.start_pos + n);
        T += n;
    }
    if (blocks > kv_.free_blocks()) {
        return resource_exhausted("step needs " + std::to_string(blocks) + " KV blocks, " +
                                  std::to_string(kv_.free_blocks()) + " free");
    }
    std::vector<uint64_t> tok_seq(T);
    std::vector<int64_t> tok_pos(T);
    std::vector<int32_t> tok_id(T);
    {
        int64_t t = 0;
        for (const SeqChunk& ch : chunks) {
            const int64_t n = ch.tokens.empty() ? ch.num_tokens : static_cast<int64_t>(ch.tokens.size());
            DS_RETURN_IF_ERROR(kv_.reserve(ch.seq_id, ch.start_pos + n));
            for (int64_t i = 0; i < n; ++i, ++t) {
                tok_seq[t] = ch.seq_id;
                tok_pos[t] = ch.start_pos + i;
                tok_id[t] = ch.tokens.empty() ? 0 : ch.tokens[i];
            }
        }
    }

    // Residual stream.
    float* h = scratch(m.h, T * H);
    if (spec_.has_embedding) {
        std::vector<int32_t> local(T);
        std::vector<bool> held(T);
        for (int64_t t = 0; t < T; ++t) {
            if (tok_id[t] < 0 || tok_id[t] >= c.vocab_size) {
                return invalid_argument("token id " + std::to_string(tok_id[t]) + " is outside the vocabulary [0, " +
                                        std::to_string(c.vocab_size) + ")");
            }
            held[t] = tok_id[t] >= m.vb && tok_id[t] < m.ve;
            local[t] = held[t] ? tok_id[t] - static_cast<int32_t>(m.vb) : 0;
        }
        kernels::gather_rows(m.embed, local.data(), T, h, H);
        if (m.vb != 0 || m.ve != c.vocab_size) {
            for (int64_t t = 0; t < T; ++t) {
                if (!held[t]) std::fill(h + t * H, h + (t + 1) * H, 0.0f);
            }
            if (reducer_ != nullptr) {
                DS_RETURN_IF_ERROR(reducer_->allreduce_sum(h, T * H));
            }
        }
    } else {
        if (static_cast<int64_t>(hidden_in.size()) != T * H) {
            return invalid_argument("step: expected " + std::to_string(T * H) + " input hidden values, got " +
                                    std::to_string(hidden_in.size()));
        }
        std::copy(hidden_in.begin(), hidden_in.end(), h);
    }
    if (hooks_ != nullptr && hooks_->on_hidden) {
        hooks_->on_hidden(-1, h, T, H);
    }

    float* a = scratch(m.a, T * H);
    float* out = scratch(m.out, T * H);
    for (int64_t l = m.first; l < m.last; ++l) {
        const Layer& L = m.layers[l - m.first];
        if (T == 0) {
            // A data-parallel rank with no tokens this step still joins the expert exchange.
            if (L.moe && exchange_ != nullptr) {
                DS_RETURN_IF_ERROR(m.moe(L, l, a, 0, out, hooks_, exchange_));
            }
            continue;
        }
        kernels::rmsnorm(h, T, H, H, L.attn_norm.data(), eps, a, H);
        m.mla(L, l, kv_, a, T, tok_seq, tok_pos, out);
        if (reducer_ != nullptr) {
            DS_RETURN_IF_ERROR(reducer_->allreduce_sum(out, T * H));
        }
        for (int64_t i = 0; i < T * H; ++i) h[i] += out[i];
        kernels::rmsnorm(h, T, H, H, L.ffn_norm.data(), eps, a, H);
        if (L.moe) {
            DS_RETURN_IF_ERROR(m.moe(L, l, a, T, out, hooks_, exchange_));
        } else {
            m.mlp(L.dense, a, T, out, false);
        }
        if (reducer_ != nullptr) {
            DS_RETURN_IF_ERROR(reducer_->allreduce_sum(out, T * H));
        }
        for (int64_t i = 0; i < T * H; ++i) h[i] += out[i];
        if (hooks_ != nullptr && hooks_->on_hidden) {
            hooks_->on_hidden(l, h, T, H);
        }
    }

    StepOutput result;
    if (!spec_.has_head) {
        result.hidden.assign(h, h + T * H);
        return result;
    }
    // Rows that need logits.
    std::vector<int64_t> rows;
    {
        int64_t t = 0;
        for (const SeqChunk& ch : chunks) {
            const int64_t n = ch.tokens.empty() ? ch.num_tokens : static_cast<int64_t>(ch.tokens.size());
            if (ch.logits == LogitsMode::kAll) {
                for (int64_t i = 0; i < n; ++i) rows.push_back(t + i);
            } else if (ch.logits == LogitsMode::kLast) {
                rows.push_back(t + n - 1);
            }
            t += n;
        }
    }
    const bool want_all_norm = hooks_ != nullptr && hooks_->on_final_norm;
    const int64_t R = static_cast<int64_t>(rows.size());
    float* fn = scratch(m.f, (want_all_norm ? T : R) * H);
    if (want_all_norm) {
        kernels::rmsnorm(h, T, H, H, m.final_norm.data(), eps, fn, H);
        hooks_->on_final_norm(fn, T, H);
        for (int64_t i = 0; i < R; ++i) std::copy(fn + rows[i] * H, fn + (rows[i] + 1) * H, fn + i * H);
    } else {
        for (int64_t i = 0; i < R; ++i) {
            kernels::rmsnorm(h + rows[i] * H, 1, H, H, m.final_norm.data(), eps, fn + i * H, H);
        }
    }
    result.rows = R;
    result.vocab = c.vocab_size;
    result.logits.assign(static_cast<size_t>(R * c.vocab_size), 0.0f);
    if (R > 0) {
        kernels::matmul(fn, R, H, m.head, result.logits.data() + m.vb, c.vocab_size);
        if ((m.vb != 0 || m.ve != c.vocab_size) && reducer_ != nullptr) {
            DS_RETURN_IF_ERROR(reducer_->allgather_vocab(result.logits.data(), R, c.vocab_size));
        }
    }
    return result;
}

namespace {
// Touches one byte per page of the view's storage span.
uint64_t touch_view(const WeightView& w) {
    if (!w.valid()) return 0;
    const size_t es = dtype_size(w.dtype);
    const auto* begin = static_cast<const volatile uint8_t*>(w.data);
    const size_t span = static_cast<size_t>(((w.rows - 1) * w.ld + w.cols) * static_cast<int64_t>(es));
    uint8_t sink = 0;
    for (size_t off = 0; off < span; off += 4096) sink ^= begin[off];
    sink ^= begin[span - 1];
    if (w.scale != nullptr) {
        const auto* sc = reinterpret_cast<const volatile uint8_t*>(w.scale);
        sink ^= sc[0];
    }
    (void)sink;
    return static_cast<uint64_t>(w.rows * w.cols) * es;
}
}  // namespace

LoadStats Transformer::prefault() const {
    const Impl& m = *impl_;
    std::vector<const WeightView*> views;
    auto add_mlp = [&](const Mlp& x) {
        views.push_back(&x.w1);
        views.push_back(&x.w2);
        views.push_back(&x.w3);
    };
    views.push_back(&m.embed);
    views.push_back(&m.head);
    for (const Layer& L : m.layers) {
        for (const WeightView* w : {&L.wq_a, &L.wq_b, &L.wq, &L.wkv_a, &L.wkv_b, &L.wo, &L.gate}) views.push_back(w);
        add_mlp(L.dense);
        add_mlp(L.shared);
        for (const Mlp& e : L.experts) add_mlp(e);
    }
    const auto t0 = std::chrono::steady_clock::now();
    std::atomic<uint64_t> bytes{0};
    ThreadPool::global().parallel_for(static_cast<int64_t>(views.size()), [&](int64_t b, int64_t e) {
        uint64_t local = 0;
        for (int64_t i = b; i < e; ++i) local += touch_view(*views[i]);
        bytes += local;
    });
    LoadStats st;
    st.bytes = bytes.load();
    st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return st;
}

int64_t Transformer::weight_bytes_per_token() const {
    const Impl& m = *impl_;
    const ModelConfig& c = *m.cfg;
    int64_t bytes = 0;
    if (spec_.has_head) bytes += m.head.bytes();
    if (spec_.has_embedding) bytes += c.hidden_size * static_cast<int64_t>(dtype_size(m.embed.dtype));
    for (const Layer& L : m.layers) {
        for (const WeightView* w : {&L.wq_a, &L.wq_b, &L.wq, &L.wkv_a, &L.wkv_b, &L.wo}) {
            if (w->valid()) bytes += w->bytes();
        }
        auto mlp_bytes = [](const Mlp& x) { return x.w1.valid() ? x.w1.bytes() + x.w2.bytes() + x.w3.bytes() : 0; };
        if (!L.moe) {
            bytes += mlp_bytes(L.dense);
        } else {
            bytes += L.gate.bytes() + mlp_bytes(L.shared);
            int64_t per_expert = 0;
            for (const Mlp& e : L.experts) {
                if (e.w1.valid()) {
                    per_expert = mlp_bytes(e);
                    break;
                }
            }
            bytes += per_expert * c.num_experts_per_tok;
        }
    }
    return bytes;
}

}  // namespace deepshard::model
