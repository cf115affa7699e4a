// DeepSeek-V3 forward pass on CPU kernels. Follows the official inference/model.py in float32
// (MODEL_SPEC §2): RMSNorm in fp32, MLA in the absorbed form over a latent cache, YaRN RoPE in the
// interleaved layout, sigmoid MoE gate with group-limited top-k, SwiGLU experts + shared experts.
// Every piece of math is a named op of kernels/ (kernels.h, mla.h, moe.h), each with a CUDA twin.
#include "model/cpu_engine.h"

#include <algorithm>
#include <string>

#include "kernels/kernels.h"
#include "kernels/mla.h"
#include "kernels/moe.h"
#include "model/kv_format.h"

namespace deepshard::model {

namespace {

// Grows a scratch buffer without shrinking (steps reuse it).
template <typename T>
T* scratch(std::vector<T>& v, int64_t n) {
    if (static_cast<int64_t>(v.size()) < n) {
        v.resize(static_cast<size_t>(n));
    }
    return v.data();
}

}  // namespace

// Activation buffers reused across steps.
struct CpuEngine::Scratch {
    std::vector<float> h, a, q, qa, kva, qlat, olat, o, out, f, g, u, xe, ye, router, route_w, pair_w;
    std::vector<int32_t> route_e, offsets, pair_tok;
};

CpuEngine::CpuEngine(std::shared_ptr<const ShardWeights> weights, KvCache kv, kernels::Numerics numerics)
    : Engine(std::move(weights)), kv_(std::move(kv)), numerics_(numerics), s_(std::make_unique<Scratch>()) {}

CpuEngine::~CpuEngine() = default;

StatusOr<std::unique_ptr<CpuEngine>> CpuEngine::create(std::shared_ptr<const ShardWeights> weights,
                                                       const EngineOptions& options) {
    const ModelConfig& c = weights->config();
    KvCacheConfig kc;
    // The MTP module's block keeps its latent cache in one more layer slot of the same blocks.
    kc.num_layers = weights->num_layers() + (weights->mtp() != nullptr ? 1 : 0);
    kc.latent_dim = c.kv_lora_rank;
    kc.rope_dim = c.qk_rope_head_dim;
    kc.block_size = options.kv_block_size;
    // The storage the planner sized the budget with (model/kv_format.h).
    kc.bytes_per_value =
        model::kv_value_bytes(model::kv_storage_for(/*cuda=*/false, options.numerics == kernels::Numerics::kExact));
    kc.num_blocks = kc.num_layers > 0 ? kc.blocks_for_budget(options.kv_budget_bytes) : 1;
    if (options.kv_max_blocks > 0) kc.num_blocks = std::min(kc.num_blocks, options.kv_max_blocks);
    if (kc.num_layers <= 0) {
        kc.num_layers = 1;  // a head-only shard still gets a (tiny) valid cache object
    }
    DS_ASSIGN_OR_RETURN(KvCache kv, KvCache::create(kc));
    return std::unique_ptr<CpuEngine>(new CpuEngine(std::move(weights), std::move(kv), options.numerics));
}

KvUsage CpuEngine::kv_usage() const {
    KvUsage u;
    u.total_blocks = kv_.blocks().total_blocks();
    u.free_blocks = kv_.blocks().free_blocks();
    u.block_size = kv_.blocks().block_size();
    u.block_bytes = kv_.config().block_bytes();
    u.sequences = kv_.blocks().num_sequences();
    u.cached_blocks = kv_.blocks().cached_blocks();
    return u;
}

void CpuEngine::mla(const LayerWeights& L, const float* x, int64_t T, const int32_t* tok_pos, const int32_t* tok_row,
                    const std::vector<int32_t>& tables, int32_t max_blocks, float* y) {
    const ShardWeights& w = *weights_;
    const ModelConfig& c = w.config();
    const int64_t H = c.hidden_size, nope = c.qk_nope_head_dim, rd = c.qk_rope_head_dim, vd = c.v_head_dim;
    const int64_t qk = nope + rd, R = c.kv_lora_rank, nh = w.num_heads();
    const float eps = static_cast<float>(c.rms_norm_eps);
    Scratch& s = *s_;

    // The two projections of x in one region: queries [T, nh, qk] (through the q LoRA when the
    // model has one) and the latent + rope key, normalized/rotated and written to the cache before
    // any read (a prefill token attends to the earlier tokens of its own chunk).
    float* qbuf = scratch(s.q, T * nh * qk);
    float* kvb = scratch(s.kva, T * (R + rd));
    if (c.q_lora_rank > 0) {
        float* qab = scratch(s.qa, T * c.q_lora_rank);
        const kernels::MatmulJob jobs[] = {{x, T, H, &L.wq_a, qab, c.q_lora_rank, false},
                                           {x, T, H, &L.wkv_a, kvb, R + rd, false}};
        kernels::matmul_batch(jobs, numerics_);
        kernels::rmsnorm(qab, T, c.q_lora_rank, c.q_lora_rank, L.q_norm.data(), eps, qab, c.q_lora_rank);
        kernels::matmul(qab, T, c.q_lora_rank, L.wq_b, qbuf, nh * qk, false, numerics_);
    } else {
        const kernels::MatmulJob jobs[] = {{x, T, H, &L.wq, qbuf, nh * qk, false},
                                           {x, T, H, &L.wkv_a, kvb, R + rd, false}};
        kernels::matmul_batch(jobs, numerics_);
    }
    const kernels::LatentCache cache = kv_.layer(L.index - w.first_layer());
    kernels::BlockTables bt;
    bt.data = tables.data();
    bt.rows = max_blocks > 0 ? static_cast<int64_t>(tables.size()) / max_blocks : 0;
    bt.max_blocks_per_seq = max_blocks;
    kernels::mla_cache_write(kvb, T, R + rd, L.kv_norm.data(), eps, tok_pos, w.rope_inv_freq().data(), cache, bt,
                             tok_row);
    kernels::rope_interleaved(qbuf, T, nh * qk, nh, qk, nope, rd, tok_pos, w.rope_inv_freq().data());

    // Absorb W_UK into the query, attend over the latent cache, project with W_UV, then Wo.
    float* ql = scratch(s.qlat, T * nh * R);
    kernels::mla_absorb_q(qbuf, T, nh * qk, qk, nh, nope, L.wkv_b, nope + vd, ql);
    float* ol = scratch(s.olat, T * nh * R);
    kernels::MlaAttentionArgs args;
    args.cache = cache;
    args.num_heads = static_cast<int32_t>(nh);
    args.softmax_scale = w.softmax_scale();
    args.num_queries = T;
    args.q_lat = ql;
    args.q_lat_ld_token = nh * R;
    args.q_lat_ld_head = R;
    args.q_pe = qbuf + nope;
    args.q_pe_ld_token = nh * qk;
    args.q_pe_ld_head = qk;
    args.tables = bt;
    args.out = ol;
    args.out_ld_token = nh * R;
    args.out_ld_head = R;
    kernels::mla_attention(args, tok_row, tok_pos);
    float* ob = scratch(s.o, T * nh * vd);
    kernels::mla_absorb_out(ol, T, nh, L.wkv_b, nope + vd, nope, vd, ob, numerics_);
    kernels::matmul(ob, T, nh * vd, L.wo, y, H, false, numerics_);
}

void CpuEngine::mlp(const MlpWeights& m, const float* x, int64_t T, float* y) {
    const int64_t H = config().hidden_size, I = m.inter;
    float* gb = scratch(s_->g, T * I);
    kernels::swiglu(x, T, H, m.w1, m.w3, gb, I, numerics_);
    kernels::matmul(gb, T, I, m.w2, y, H, false, numerics_);
}

Status CpuEngine::moe(const LayerWeights& L, const float* x, int64_t T, float* y) {
    const ModelConfig& c = config();
    const int64_t H = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
    Scratch& s = *s_;
    int32_t* experts = scratch(s.route_e, std::max<int64_t>(T, 1) * K);
    float* weights = scratch(s.route_w, std::max<int64_t>(T, 1) * K);
    if (T > 0) {
        float* logits = scratch(s.router, T * E);
        // The router stays exact in both numerics modes: it is tiny (E x H) and its ranking decides
        // which experts run, so BF16 noise here would flip near-tied experts for no speed gain.
        kernels::matmul(x, T, H, L.gate, logits, E);
        if (hooks_ != nullptr && hooks_->on_router_logits) {
            for (int64_t t = 0; t < T; ++t) {
                hooks_->on_router_logits(L.index, t, std::span<const float>(x + t * H, H),
                                         std::span<const float>(logits + t * E, E));
            }
        }
        kernels::moe_route(logits, T, E, L.bias.empty() ? nullptr : L.bias.data(), weights_->route_params(), experts,
                           weights);
    }
    if (hooks_ != nullptr && hooks_->on_routing) {
        for (int64_t t = 0; t < T; ++t) {
            hooks_->on_routing(L.index, t, std::span<const int32_t>(experts + t * K, K),
                               std::span<const float>(weights + t * K, K));
        }
    }

    if (exchange_ != nullptr) {
        // Expert parallel: the exchange routes tokens to the experts' owners and back.
        std::fill(y, y + T * H, 0.0f);
        auto local = [&](int32_t e, const float* xs, int64_t n, float* ys) { mlp(L.experts[e], xs, n, ys); };
        DS_RETURN_IF_ERROR(exchange_->run(x, T, H, std::span<const int32_t>(experts, T * K),
                                          std::span<const float>(weights, T * K), K, local, y));
        if (L.has_shared && T > 0) {
            float* sh = scratch(s.ye, T * H);
            mlp(L.shared, x, T, sh);
            kernels::residual_add(y, sh, T * H);
        }
        return ok_status();
    }
    // Routed experts held here and the shared expert, by expert (kernels::moe_ffn).
    int32_t* offsets = scratch(s.offsets, E + 1);
    int32_t* tokens = scratch(s.pair_tok, std::max<int64_t>(T * K, 1));
    float* pair_w = scratch(s.pair_w, std::max<int64_t>(T * K, 1));
    kernels::moe_group_by_expert(experts, weights, T, K, static_cast<int32_t>(E), offsets, tokens, pair_w);
    std::vector<kernels::ExpertMlp> ffn(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; ++e) {
        const MlpWeights& m = L.experts[e];
        if (m.held()) ffn[e] = {&m.w1, &m.w3, &m.w2};
    }
    const kernels::ExpertMlp shared{&L.shared.w1, &L.shared.w3, &L.shared.w2};
    kernels::moe_ffn(x, T, H, offsets, tokens, pair_w, ffn, L.has_shared ? &shared : nullptr, y, numerics_);
    return ok_status();
}

Status CpuEngine::block(const LayerWeights& L, float* h, int64_t T, const int32_t* tok_pos, const int32_t* tok_row,
                        const std::vector<int32_t>& tables, int32_t max_blocks) {
    const int64_t H = config().hidden_size;
    const float eps = static_cast<float>(config().rms_norm_eps);
    float* a = scratch(s_->a, T * H);
    float* out = scratch(s_->out, T * H);
    kernels::rmsnorm(h, T, H, H, L.attn_norm.data(), eps, a, H);
    mla(L, a, T, tok_pos, tok_row, tables, max_blocks, out);
    if (reducer_ != nullptr) {
        DS_RETURN_IF_ERROR(reducer_->allreduce_sum(out, T * H));
    }
    kernels::residual_add(h, out, T * H);
    kernels::rmsnorm(h, T, H, H, L.ffn_norm.data(), eps, a, H);
    if (L.moe) {
        DS_RETURN_IF_ERROR(moe(L, a, T, out));
    } else {
        mlp(L.dense, a, T, out);
    }
    if (reducer_ != nullptr) {
        DS_RETURN_IF_ERROR(reducer_->allreduce_sum(out, T * H));
    }
    kernels::residual_add(h, out, T * H);
    return ok_status();
}

StatusOr<StepOutput> CpuEngine::step(std::span<const SeqChunk> chunks, std::span<const float> hidden_in) {
    const ShardWeights& w = *weights_;
    const ModelConfig& c = w.config();
    const int64_t H = c.hidden_size;
    const float eps = static_cast<float>(c.rms_norm_eps);
    KvBlockManager& blocks = kv_.blocks();
    Scratch& s = *s_;

    // Token bookkeeping and KV admission (all-or-nothing).
    int64_t T = 0, need = 0;
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
        if (ch.start_pos > 0 && blocks.capacity(ch.seq_id) < ch.start_pos) {
            return invalid_argument("step: sequence " + std::to_string(ch.seq_id) + " starts at position " +
                                    std::to_string(ch.start_pos) + " but has no cached prefix");
        }
        if (!blocks.writable(ch.seq_id, ch.start_pos)) {
            // Prefix-cache blocks are shared read-only; writing one would corrupt other sequences.
            return invalid_argument("step: sequence " + std::to_string(ch.seq_id) + " would write position " +
                                    std::to_string(ch.start_pos) + " into a shared (cached) KV block");
        }
        if (ch.reserve_ahead < 0 || ch.reserve_ahead > c.max_position_embeddings) {
            return invalid_argument("step: sequence " + std::to_string(ch.seq_id) + " reserves " +
                                    std::to_string(ch.reserve_ahead) + " positions ahead");
        }
        need += blocks.blocks_needed(ch.seq_id, ch.start_pos + n + ch.reserve_ahead);
        T += n;
    }
    if (need > blocks.free_blocks()) {
        return resource_exhausted("step needs " + std::to_string(need) + " KV blocks, " +
                                  std::to_string(blocks.free_blocks()) + " free");
    }
    // Per token: position, table row (= chunk index) and id; per chunk: its block table row.
    std::vector<int32_t> tok_pos(T), tok_row(T), tok_id(T);
    int32_t max_blocks = 0;
    {
        int64_t t = 0;
        for (size_t i = 0; i < chunks.size(); ++i) {
            const SeqChunk& ch = chunks[i];
            const int64_t n = ch.tokens.empty() ? ch.num_tokens : static_cast<int64_t>(ch.tokens.size());
            // Drop blocks past what this chunk needs (rejected drafts of an earlier step), then grow.
            blocks.truncate(ch.seq_id, ch.start_pos + n + ch.reserve_ahead);
            DS_RETURN_IF_ERROR(blocks.reserve(ch.seq_id, ch.start_pos + n + ch.reserve_ahead));
            max_blocks = std::max<int32_t>(max_blocks, static_cast<int32_t>(blocks.block_table(ch.seq_id).size()));
            for (int64_t k = 0; k < n; ++k, ++t) {
                tok_pos[t] = static_cast<int32_t>(ch.start_pos + k);
                tok_row[t] = static_cast<int32_t>(i);
                tok_id[t] = ch.tokens.empty() ? 0 : ch.tokens[k];
            }
        }
    }
    std::vector<int32_t> tables(chunks.size() * static_cast<size_t>(max_blocks), 0);
    for (size_t i = 0; i < chunks.size(); ++i) {
        const std::vector<int32_t>& row = blocks.block_table(chunks[i].seq_id);
        std::copy(row.begin(), row.end(), tables.begin() + static_cast<int64_t>(i) * max_blocks);
    }

    // Residual stream.
    float* h = scratch(s.h, T * H);
    if (w.has_embedding()) {
        const int64_t vb = w.vocab_begin(), ve = w.vocab_end();
        std::vector<int32_t> local(T);
        std::vector<bool> held(T);
        for (int64_t t = 0; t < T; ++t) {
            if (tok_id[t] < 0 || tok_id[t] >= c.vocab_size) {
                return invalid_argument("token id " + std::to_string(tok_id[t]) + " is outside the vocabulary [0, " +
                                        std::to_string(c.vocab_size) + ")");
            }
            held[t] = tok_id[t] >= vb && tok_id[t] < ve;
            local[t] = held[t] ? tok_id[t] - static_cast<int32_t>(vb) : 0;
        }
        kernels::gather_rows(w.embed(), local.data(), T, h, H);
        if (vb != 0 || ve != c.vocab_size) {
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

    for (const LayerWeights& L : w.layers()) {
        if (T == 0) {
            // A data-parallel rank with no tokens this step still joins the expert exchange.
            if (L.moe && exchange_ != nullptr) {
                DS_RETURN_IF_ERROR(moe(L, scratch(s.a, H), 0, scratch(s.out, H)));
            }
            continue;
        }
        DS_RETURN_IF_ERROR(block(L, h, T, tok_pos.data(), tok_row.data(), tables, max_blocks));
        if (hooks_ != nullptr && hooks_->on_hidden) {
            hooks_->on_hidden(L.index, h, T, H);
        }
    }

    StepOutput result;
    if (!w.has_head() ||
        std::any_of(chunks.begin(), chunks.end(), [](const SeqChunk& ch) { return ch.keep_hidden; })) {
        result.hidden.assign(h, h + T * H);
    }
    if (!w.has_head()) {
        return result;
    }
    // Rows that need logits; a kSample chunk's row is sampled here and not returned.
    std::vector<int64_t> rows;
    std::vector<Sampler*> row_sampler;
    {
        int64_t t = 0;
        for (const SeqChunk& ch : chunks) {
            const int64_t n = ch.tokens.empty() ? ch.num_tokens : static_cast<int64_t>(ch.tokens.size());
            if (ch.logits == LogitsMode::kAll) {
                for (int64_t i = 0; i < n; ++i) {
                    rows.push_back(t + i);
                    row_sampler.push_back(nullptr);
                }
            } else if (ch.logits == LogitsMode::kLast || ch.logits == LogitsMode::kSample) {
                if (ch.logits == LogitsMode::kSample && ch.sampler == nullptr) {
                    return invalid_argument("step: sequence " + std::to_string(ch.seq_id) +
                                            " asks for sampling without a sampler");
                }
                rows.push_back(t + n - 1);
                row_sampler.push_back(ch.logits == LogitsMode::kSample ? ch.sampler : nullptr);
            }
            t += n;
        }
    }
    const bool want_all_norm = hooks_ != nullptr && hooks_->on_final_norm;
    const int64_t R = static_cast<int64_t>(rows.size());
    float* fn = scratch(s.f, (want_all_norm ? T : R) * H);
    if (want_all_norm) {
        kernels::rmsnorm(h, T, H, H, w.final_norm().data(), eps, fn, H);
        hooks_->on_final_norm(fn, T, H);
        for (int64_t i = 0; i < R; ++i) std::copy(fn + rows[i] * H, fn + (rows[i] + 1) * H, fn + i * H);
    } else {
        for (int64_t i = 0; i < R; ++i) {
            kernels::rmsnorm(h + rows[i] * H, 1, H, H, w.final_norm().data(), eps, fn + i * H, H);
        }
    }
    result.rows = R;
    result.vocab = c.vocab_size;
    result.logits.assign(static_cast<size_t>(R * c.vocab_size), 0.0f);
    if (R > 0) {
        kernels::matmul(fn, R, H, w.head(), result.logits.data() + w.vocab_begin(), c.vocab_size, false, numerics_);
        if ((w.vocab_begin() != 0 || w.vocab_end() != c.vocab_size) && reducer_ != nullptr) {
            DS_RETURN_IF_ERROR(reducer_->allgather_vocab(result.logits.data(), R, c.vocab_size));
        }
    }
    // Sample the kSample rows and keep only the others.
    int64_t kept = 0;
    for (int64_t i = 0; i < R; ++i) {
        float* row = result.logits.data() + i * c.vocab_size;
        if (row_sampler[i] != nullptr) {
            result.samples.push_back(row_sampler[i]->sample(std::span<const float>(row, c.vocab_size)));
            continue;
        }
        if (kept != i) std::copy(row, row + c.vocab_size, result.logits.data() + kept * c.vocab_size);
        ++kept;
    }
    result.rows = kept;
    result.logits.resize(static_cast<size_t>(kept * c.vocab_size));
    return result;
}

}  // namespace deepshard::model
