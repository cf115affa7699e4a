// CUDA engine planning (see plan.h).
#include "model/gpu/plan.h"

#include <algorithm>

namespace deepshard::model::gpu {

namespace {

constexpr uint64_t kAlign = 256;

class Layouter {
public:
    explicit Layouter(WorkspaceLayout* w) : w_(w) {}
    Slice add(const char* name, uint64_t bytes) {
        Slice s;
        s.offset = (w_->total + kAlign - 1) / kAlign * kAlign;
        s.bytes = bytes;
        w_->total = s.offset + bytes;
        w_->named.emplace_back(name, s);
        return s;
    }

private:
    WorkspaceLayout* w_;
};

uint64_t f32(int64_t n) { return static_cast<uint64_t>(std::max<int64_t>(n, 0)) * 4; }

}  // namespace

EngineDims dims_of(const ShardWeights& w) {
    const ModelConfig& c = w.config();
    EngineDims d;
    d.hidden = c.hidden_size;
    d.q_lora = c.q_lora_rank;
    d.heads = w.num_heads();
    d.nope = c.qk_nope_head_dim;
    d.rope = c.qk_rope_head_dim;
    d.v_head = c.v_head_dim;
    d.kv_lora = c.kv_lora_rank;
    d.experts = c.n_routed_experts;
    d.top_k = c.num_experts_per_tok;
    d.vocab = c.vocab_size;
    d.vocab_local = w.vocab_end() - w.vocab_begin();
    d.has_embedding = w.has_embedding();
    d.has_head = w.has_head();
    d.num_layers = w.num_layers();
    for (const LayerWeights& L : w.layers()) {
        if (L.moe) {
            d.has_moe = true;
            for (const MlpWeights& e : L.experts) {
                if (e.held()) d.moe_inter = std::max(d.moe_inter, e.inter);
            }
            if (L.has_shared) d.shared_inter = std::max(d.shared_inter, L.shared.inter);
        } else if (L.dense.held()) {
            d.dense_inter = std::max(d.dense_inter, L.dense.inter);
        }
    }
    return d;
}

int64_t gemm_rows_padded(int64_t m) {
    if (m <= 16) return 16;
    if (m <= 256) {
        int64_t p = 16;
        while (p < m) p *= 2;
        return p;
    }
    return (m + 255) / 256 * 256;
}

StatusOr<WorkspaceLayout> plan_workspace(const EngineDims& d, const StepLimits& lim) {
    if (lim.max_tokens <= 0 || lim.max_seqs <= 0 || lim.max_logits_rows <= 0 || lim.max_blocks_per_seq <= 0 ||
        lim.mla_max_ctas <= 0 || lim.max_penalty_entries < 0) {
        return invalid_argument("cuda workspace: step limits must be positive (max_tokens " +
                                std::to_string(lim.max_tokens) + ", max_seqs " + std::to_string(lim.max_seqs) +
                                ", max_logits_rows " + std::to_string(lim.max_logits_rows) + ", max_blocks_per_seq " +
                                std::to_string(lim.max_blocks_per_seq) + ")");
    }
    if (lim.max_seqs > lim.max_tokens) return invalid_argument("cuda workspace: max_seqs exceeds max_tokens");
    if (d.hidden <= 0 || d.heads <= 0 || d.kv_lora <= 0) return invalid_argument("cuda workspace: empty model dims");
    // int32 element counts must stay addressable by the kernels' 32-bit row indices.
    const int64_t pairs = lim.max_tokens * std::max<int64_t>(d.top_k, 1);
    if (pairs > (int64_t{1} << 24)) {
        return invalid_argument("cuda workspace: max_tokens x top_k = " + std::to_string(pairs) + " exceeds 2^24");
    }
    WorkspaceLayout w;
    Layouter L(&w);
    const int64_t T = lim.max_tokens, Tp = gemm_rows_padded(T), S = lim.max_seqs, H = d.hidden;
    const int64_t nh = d.heads, R = d.kv_lora;
    w.tok_local = L.add("tok_local", f32(T));
    w.tok_pos = L.add("tok_pos", f32(T));
    w.tok_row = L.add("tok_row", f32(T));
    w.tables = L.add("tables", f32(S * lim.max_blocks_per_seq));
    w.seq_lens = L.add("seq_lens", f32(S));
    w.logit_rows = L.add("logit_rows", f32(T));
    w.mla_offsets = L.add("mla_offsets", f32(S + 1));
    w.h = L.add("h", f32(T * H));
    w.a = L.add("a", f32(T * H));
    w.out = L.add("out", f32(Tp * H));
    if (d.q_lora > 0) w.qa = L.add("qa", f32(Tp * d.q_lora));
    w.q = L.add("q", f32(Tp * nh * d.qk()));
    w.kv = L.add("kv", f32(Tp * (R + d.rope)));
    w.q_lat = L.add("q_lat", f32(T * nh * R));
    w.o_lat = L.add("o_lat", f32(T * nh * R));
    w.o = L.add("o", f32(T * nh * d.v_head));
    // Balanced decode: (batch + max_ctas) slots x heads x (R + 1) floats.
    w.mla_scratch = L.add("mla_scratch", f32((S + lim.mla_max_ctas) * nh * (R + 1)));
    const int64_t I = d.mlp_inter();
    if (I > 0) {
        w.g = L.add("g", f32(Tp * I));
        w.u = L.add("u", f32(Tp * I));
    }
    if (d.has_moe) {
        const int64_t E = d.experts, K = d.top_k, P = pairs, Pp = gemm_rows_padded(P);
        const int64_t items = std::max((P + 7) / 8 + std::min(E, P), (P + 63) / 64 + std::min(E, P));
        w.router = L.add("router", f32(T * E));
        w.route_e = L.add("route_e", f32(T * K));
        w.route_w = L.add("route_w", f32(T * K));
        w.moe_offsets = L.add("moe_offsets", f32(E + 1));
        w.pair_token = L.add("pair_token", f32(P));
        w.pair_weight = L.add("pair_weight", f32(P));
        w.pair_pos = L.add("pair_pos", f32(P));
        w.items = L.add("items", static_cast<uint64_t>(items) * 16);
        w.num_items = L.add("num_items", 4);
        w.x_perm = L.add("x_perm", f32(Pp * H));
        w.g_perm = L.add("g_perm", f32(Pp * d.moe_inter));
        w.u_perm = L.add("u_perm", f32(Pp * d.moe_inter));
        w.y_perm = L.add("y_perm", f32(Pp * H));
    }
    if (d.has_head) {
        const int64_t Rl = lim.max_logits_rows;
        w.fn = L.add("fn", f32(gemm_rows_padded(Rl) * H));
        w.logits = L.add("logits", f32(gemm_rows_padded(Rl) * d.vocab_local));
        if (d.vocab_local != d.vocab) w.logits_full = L.add("logits_full", f32(Rl * d.vocab));
        w.sample_params = L.add("sample_params", static_cast<uint64_t>(Rl) * sizeof(kernels::cuda::SampleParams));
        w.penalty_ids = L.add("penalty_ids", f32(lim.max_penalty_entries));
        w.penalty_vals = L.add("penalty_vals", f32(lim.max_penalty_entries));
        w.sample_out = L.add("sample_out", static_cast<uint64_t>(Rl) * sizeof(kernels::cuda::SampleOut));
    }
    return w;
}

std::vector<int64_t> decode_buckets(int64_t max_batch) {
    std::vector<int64_t> b;
    for (int64_t v = 1; v < max_batch; v *= 2) b.push_back(v);
    if (max_batch > 0) b.push_back(max_batch);
    return b;
}

int64_t choose_bucket(const std::vector<int64_t>& buckets, int64_t batch) {
    if (batch <= 0) return -1;
    for (int64_t v : buckets) {
        if (v >= batch) return v;
    }
    return -1;
}

std::vector<std::vector<SeqChunk>> split_step(std::span<const SeqChunk> chunks, int64_t max_tokens,
                                              int64_t max_seqs) {
    std::vector<std::vector<SeqChunk>> out(1);
    int64_t used = 0;
    for (const SeqChunk& ch : chunks) {
        const int64_t n = ch.tokens.empty() ? ch.num_tokens : static_cast<int64_t>(ch.tokens.size());
        int64_t done = 0;
        while (done < n) {
            if (used == max_tokens || static_cast<int64_t>(out.back().size()) == max_seqs) {
                out.emplace_back();
                used = 0;
            }
            const int64_t take = std::min(n - done, max_tokens - used);
            SeqChunk piece = ch;
            piece.num_tokens = take;
            piece.start_pos = ch.start_pos + done;
            if (!ch.tokens.empty()) piece.tokens = ch.tokens.subspan(static_cast<size_t>(done), static_cast<size_t>(take));
            const bool last = done + take == n;
            if (!last && (ch.logits == LogitsMode::kLast || ch.logits == LogitsMode::kSample)) {
                piece.logits = LogitsMode::kNone;
            }
            out.back().push_back(piece);
            used += take;
            done += take;
        }
    }
    if (out.back().empty()) out.pop_back();
    return out;
}

bool is_decode_step(std::span<const SeqChunk> chunks) {
    for (const SeqChunk& ch : chunks) {
        const int64_t n = ch.tokens.empty() ? ch.num_tokens : static_cast<int64_t>(ch.tokens.size());
        if (n != 1) return false;
    }
    return !chunks.empty();
}

}  // namespace deepshard::model::gpu
