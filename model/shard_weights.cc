// Builds a rank's ShardWeights from the checkpoint: which rows/columns of which tensors it holds.
#include "model/shard_weights.h"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>

#include "common/thread_pool.h"
#include "model/make_model.h"

namespace deepshard::model {

using kernels::WeightView;

namespace {

// Calls fn(name, view) for every weight matrix a shard holds (valid views only), in a fixed order.
void for_each_weight(const ShardWeights& w, const std::function<void(const std::string&, const WeightView&)>& fn) {
    auto visit = [&](const std::string& name, const WeightView& v) {
        if (v.valid()) fn(name, v);
    };
    auto visit_mlp = [&](const std::string& prefix, const MlpWeights& m) {
        visit(prefix + "gate_proj.weight", m.w1);
        visit(prefix + "up_proj.weight", m.w3);
        visit(prefix + "down_proj.weight", m.w2);
    };
    visit("model.embed_tokens.weight", w.embed());
    for (const LayerWeights& L : w.layers()) {
        const std::string p = layer_prefix(L.index), a = p + "self_attn.", m = p + "mlp.";
        visit(a + "q_a_proj.weight", L.wq_a);
        visit(a + "q_b_proj.weight", L.wq_b);
        visit(a + "q_proj.weight", L.wq);
        visit(a + "kv_a_proj_with_mqa.weight", L.wkv_a);
        visit(a + "kv_b_proj.weight", L.wkv_b);
        visit(a + "o_proj.weight", L.wo);
        if (!L.moe) {
            visit_mlp(m, L.dense);
            continue;
        }
        visit(m + "gate.weight", L.gate);
        for (size_t e = 0; e < L.experts.size(); ++e) {
            visit_mlp(m + "experts." + std::to_string(e) + ".", L.experts[e]);
        }
        if (L.has_shared) {
            visit_mlp(m + "shared_experts.", L.shared);
        }
    }
    if (!w.head_requantized()) visit("lm_head.weight", w.head());
}

// Touches one byte per page of the view's storage span.
uint64_t touch_view(const WeightView& w) {
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

StatusOr<std::shared_ptr<const ShardWeights>> ShardWeights::load(std::shared_ptr<const Checkpoint> checkpoint,
                                                                 const ShardSpec& spec) {
    std::shared_ptr<ShardWeights> w(new ShardWeights());
    w->checkpoint_ = std::move(checkpoint);
    DS_RETURN_IF_ERROR(w->build(spec));
    w->list_tensors();
    return std::shared_ptr<const ShardWeights>(std::move(w));
}

Status ShardWeights::load_mlp(const std::string& prefix, int64_t inter, int64_t tp_rank, int64_t tp_size,
                              MlpWeights* m) {
    const Checkpoint& ck = *checkpoint_;
    const int64_t H = config().hidden_size;
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

Status ShardWeights::build(const ShardSpec& spec) {
    const Checkpoint& ck = *checkpoint_;
    const ModelConfig& c = config();
    spec_ = spec;
    const int64_t H = c.hidden_size, heads = c.num_attention_heads;
    first_ = spec.first_layer;
    last_ = spec.last_layer < 0 ? c.num_hidden_layers : spec.last_layer;
    h0_ = spec.head_begin;
    nh_ = (spec.head_end < 0 ? heads : spec.head_end) - h0_;
    vb_ = spec.vocab_begin;
    ve_ = spec.vocab_end < 0 ? c.vocab_size : spec.vocab_end;
    if (first_ < 0 || last_ > c.num_hidden_layers || first_ > last_) {
        return invalid_argument("shard layer range [" + std::to_string(first_) + ", " + std::to_string(last_) +
                                ") is outside the model's " + std::to_string(c.num_hidden_layers) + " layers");
    }
    if (h0_ < 0 || nh_ <= 0 || h0_ + nh_ > heads) {
        return invalid_argument("shard head range is outside the model's " + std::to_string(heads) + " heads");
    }
    if (vb_ < 0 || ve_ > c.vocab_size || vb_ >= ve_) {
        return invalid_argument("shard vocabulary range is outside the model's vocabulary");
    }
    if (!spec.experts.empty() && static_cast<int64_t>(spec.experts.size()) != c.n_routed_experts) {
        return invalid_argument("shard expert mask has " + std::to_string(spec.experts.size()) + " entries, model has " +
                                std::to_string(c.n_routed_experts) + " experts");
    }
    if (spec.has_embedding) {
        DS_ASSIGN_OR_RETURN(embed_, ck.weight_rows("model.embed_tokens.weight", c.vocab_size, H, vb_, ve_ - vb_));
    }
    if (spec.has_head) {
        DS_ASSIGN_OR_RETURN(head_, ck.weight_rows("lm_head.weight", c.vocab_size, H, vb_, ve_ - vb_));
        DS_ASSIGN_OR_RETURN(final_norm_, ck.vector_f32("model.norm.weight", H));
        if (spec.head_fp8 && head_.dtype != DType::kF8E4M3) requantize_head();
    }
    for (int64_t l = first_; l < last_; ++l) {
        LayerWeights L;
        DS_RETURN_IF_ERROR(load_layer(l, spec, &L));
        layers_.push_back(std::move(L));
    }
    if (spec.has_mtp && c.num_nextn_predict_layers > 0) {
        DS_RETURN_IF_ERROR(load_mtp(spec));
    }
    inv_freq_ = c.rope_inv_freq();
    softmax_scale_ = static_cast<float>(c.softmax_scale());
    return ok_status();
}

// One decoder block (attention + dense MLP or MoE) of global index `l`, sliced as `spec` says.
Status ShardWeights::load_layer(int64_t l, const ShardSpec& spec, LayerWeights* out) {
    const Checkpoint& ck = *checkpoint_;
    const ModelConfig& c = config();
    const int64_t H = c.hidden_size, nope = c.qk_nope_head_dim, rd = c.qk_rope_head_dim, vd = c.v_head_dim;
    const int64_t qk = nope + rd, heads = c.num_attention_heads;
    const std::string p = layer_prefix(l);
    LayerWeights& L = *out;
    L.index = l;
    DS_ASSIGN_OR_RETURN(L.attn_norm, ck.vector_f32(p + "input_layernorm.weight", H));
    DS_ASSIGN_OR_RETURN(L.ffn_norm, ck.vector_f32(p + "post_attention_layernorm.weight", H));
    const std::string a = p + "self_attn.";
    if (c.q_lora_rank > 0) {
        DS_ASSIGN_OR_RETURN(L.wq_a, ck.weight(a + "q_a_proj.weight", c.q_lora_rank, H));
        DS_ASSIGN_OR_RETURN(L.q_norm, ck.vector_f32(a + "q_a_layernorm.weight", c.q_lora_rank));
        DS_ASSIGN_OR_RETURN(L.wq_b,
                            ck.weight_rows(a + "q_b_proj.weight", heads * qk, c.q_lora_rank, h0_ * qk, nh_ * qk));
    } else {
        DS_ASSIGN_OR_RETURN(L.wq, ck.weight_rows(a + "q_proj.weight", heads * qk, H, h0_ * qk, nh_ * qk));
    }
    DS_ASSIGN_OR_RETURN(L.wkv_a, ck.weight(a + "kv_a_proj_with_mqa.weight", c.kv_lora_rank + rd, H));
    DS_ASSIGN_OR_RETURN(L.kv_norm, ck.vector_f32(a + "kv_a_layernorm.weight", c.kv_lora_rank));
    DS_ASSIGN_OR_RETURN(L.wkv_b, ck.weight_rows(a + "kv_b_proj.weight", heads * (nope + vd), c.kv_lora_rank,
                                                h0_ * (nope + vd), nh_ * (nope + vd)));
    DS_ASSIGN_OR_RETURN(L.wo, ck.weight_cols(a + "o_proj.weight", H, heads * vd, h0_ * vd, nh_ * vd));
    L.moe = c.is_moe_layer(l);
    const std::string m = p + "mlp.";
    if (!L.moe) {
        DS_RETURN_IF_ERROR(load_mlp(m, c.intermediate_size, spec.tp_rank, spec.tp_size, &L.dense));
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
                load_mlp(m + "experts." + std::to_string(e) + ".", c.moe_intermediate_size, 0, 1, &L.experts[e]));
        }
        if (c.n_shared_experts > 0) {
            L.has_shared = true;
            DS_RETURN_IF_ERROR(load_mlp(m + "shared_experts.", c.moe_intermediate_size * c.n_shared_experts,
                                        spec.tp_rank, spec.tp_size, &L.shared));
        }
    }
    return ok_status();
}

// The MTP module (MODEL_SPEC §2 "MTP"): layer num_hidden_layers, on the shard with the head. Its
// embedding and head are its own copies (the release ships them), sliced to the shard's vocabulary
// range like the main ones; its block is sliced like every other layer of the shard.
Status ShardWeights::load_mtp(const ShardSpec& spec) {
    const Checkpoint& ck = *checkpoint_;
    const ModelConfig& c = config();
    const int64_t H = c.hidden_size, l = c.num_hidden_layers;
    if (!spec.has_head) {
        return invalid_argument("the MTP module (layer " + std::to_string(l) +
                                ") belongs on the shard that holds the head (the last pipeline stage)");
    }
    const std::string p = layer_prefix(l);
    MtpWeights m;
    DS_ASSIGN_OR_RETURN(m.embed, ck.weight_rows(p + "embed_tokens.weight", c.vocab_size, H, vb_, ve_ - vb_));
    DS_ASSIGN_OR_RETURN(m.head, ck.weight_rows(p + "shared_head.head.weight", c.vocab_size, H, vb_, ve_ - vb_));
    DS_ASSIGN_OR_RETURN(m.eh_proj, ck.weight(p + "eh_proj.weight", H, 2 * H));
    DS_ASSIGN_OR_RETURN(m.enorm, ck.vector_f32(p + "enorm.weight", H));
    DS_ASSIGN_OR_RETURN(m.hnorm, ck.vector_f32(p + "hnorm.weight", H));
    DS_ASSIGN_OR_RETURN(m.head_norm, ck.vector_f32(p + "shared_head.norm.weight", H));
    DS_RETURN_IF_ERROR(load_layer(l, spec, &m.block));
    mtp_ = std::make_unique<MtpWeights>(std::move(m));
    return ok_status();
}

void ShardWeights::list_tensors() {
    const Checkpoint& ck = *checkpoint_;
    for_each_weight(*this, [&](const std::string& name, const WeightView& v) {
        const TensorInfo* info = ck.find(name);
        DS_CHECK(info != nullptr) << "shard weights: " << name << " vanished from the checkpoint";
        HeldTensor t;
        t.name = name;
        t.view = &v;
        t.file_index = info->file_index;
        t.file_offset = static_cast<uint64_t>(static_cast<const uint8_t*>(v.data) - ck.file(info->file_index).data());
        if (v.dtype == DType::kF8E4M3) {
            t.scale_info = ck.find(name + "_scale_inv");
            t.scale_row0 = v.row_offset / v.block_rows;
            t.scale_rows = (v.row_offset + v.rows + v.block_rows - 1) / v.block_rows - t.scale_row0;
        }
        tensors_.push_back(std::move(t));
    });
}

kernels::RouteParams ShardWeights::route_params() const {
    const ModelConfig& c = config();
    kernels::RouteParams p;
    p.num_experts = static_cast<int32_t>(c.n_routed_experts);
    p.n_group = static_cast<int32_t>(c.n_group);
    p.topk_group = static_cast<int32_t>(c.topk_group);
    p.top_k = static_cast<int32_t>(c.num_experts_per_tok);
    p.softmax = c.scoring_func == "softmax";
    p.norm_topk_prob = c.norm_topk_prob;
    p.routed_scaling_factor = static_cast<float>(c.routed_scaling_factor);
    return p;
}

// Block by block as DeepSeek's FP8 weights are made, by make-model's quantize_fp8_blocks (scale =
// amax / 448, code = e4m3(w / scale) rounded to nearest even), one 128-row band at a time from a
// float32 copy of the band. Blocks are aligned to this shard's first vocabulary row. Afterwards the
// mapped pages of the original are given back (MADV_DONTNEED on a read-only private file mapping:
// they would be read from the file again if touched), so one copy stays resident.
void ShardWeights::requantize_head() {
    const WeightView src = head_;
    constexpr int64_t kB = 128;
    const int64_t R = src.rows, C = src.cols, gr = (R + kB - 1) / kB, gc = (C + kB - 1) / kB;
    head_q_.assign(static_cast<size_t>(R * C), 0);
    head_s_.assign(static_cast<size_t>(gr * gc), 0.0f);
    ThreadPool::global().parallel_for(gr, [&](int64_t b, int64_t e) {
        std::vector<float> band(static_cast<size_t>(kB * C));
        for (int64_t br = b; br < e; ++br) {
            const int64_t r0 = br * kB, n = std::min(kB, R - r0);
            for (int64_t r = 0; r < n; ++r) {
                for (int64_t c = 0; c < C; ++c) band[static_cast<size_t>(r * C + c)] = src.at(r0 + r, c);
            }
            quantize_fp8_blocks(band.data(), n, C, kB, kB, head_q_.data() + r0 * C, head_s_.data() + br * gc);
        }
    });
    const auto begin = reinterpret_cast<uintptr_t>(src.data);
    const auto end = begin + static_cast<uintptr_t>(((R - 1) * src.ld + C) * static_cast<int64_t>(dtype_size(src.dtype)));
    const uintptr_t page = 4096, b = (begin + page - 1) / page * page, e = end / page * page;
    const TensorInfo* info = checkpoint_->find("lm_head.weight");
    const auto& file = checkpoint_->file(info->file_index);
    const auto fb = reinterpret_cast<uintptr_t>(file.data());
    if (e > b && b >= fb && e <= fb + file.size()) ::madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);
    WeightView q;
    q.dtype = DType::kF8E4M3;
    q.data = head_q_.data();
    q.rows = R;
    q.cols = C;
    q.ld = C;
    q.scale = head_s_.data();
    q.scale_ld = gc;
    q.block_rows = kB;
    q.block_cols = kB;
    head_ = q;
}

int64_t ShardWeights::held_bytes() const {
    int64_t bytes = head_requantized() ? head_.bytes() : 0;
    for (const HeldTensor& t : tensors_) bytes += t.view->bytes();
    return bytes;
}

LoadStats ShardWeights::prefault() const {
    const auto t0 = std::chrono::steady_clock::now();
    std::atomic<uint64_t> bytes{0};
    ThreadPool::global().parallel_for(static_cast<int64_t>(tensors_.size()), [&](int64_t b, int64_t e) {
        uint64_t local = 0;
        for (int64_t i = b; i < e; ++i) local += touch_view(*tensors_[i].view);
        bytes += local;
    });
    LoadStats st;
    st.bytes = bytes.load();
    st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return st;
}

int64_t ShardWeights::weight_bytes_per_token() const {
    const ModelConfig& c = config();
    int64_t bytes = 0;
    if (has_head()) bytes += head_.bytes();
    if (has_embedding()) bytes += c.hidden_size * static_cast<int64_t>(dtype_size(embed_.dtype));
    for (const LayerWeights& L : layers_) {
        for (const WeightView* w : {&L.wq_a, &L.wq_b, &L.wq, &L.wkv_a, &L.wkv_b, &L.wo}) {
            if (w->valid()) bytes += w->bytes();
        }
        auto mlp_bytes = [](const MlpWeights& x) { return x.held() ? x.w1.bytes() + x.w2.bytes() + x.w3.bytes() : 0; };
        if (!L.moe) {
            bytes += mlp_bytes(L.dense);
        } else {
            bytes += L.gate.bytes() + mlp_bytes(L.shared);
            int64_t per_expert = 0;
            for (const MlpWeights& e : L.experts) {
                if (e.held()) {
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
