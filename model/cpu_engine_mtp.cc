// The MTP module on the CPU engine (MODEL_SPEC §2 "MTP", DeepSeek-V3 tech report §2.2), for
// speculative decoding: row i combines the main model's last block output h_i with the embedding of
// the next token t_{i+1}, h' = eh_proj . [enorm(Embed(t_{i+1})) ; hnorm(h_i)] (the embedding-first
// order of vLLM / SGLang), runs the module's decoder block at position i (its latent cache is one
// more layer slot of the sequence's blocks), and shared_head.norm + shared_head.head predict t_{i+2}.
// Drafting more than one token feeds the block's output back as the next h (one MTP module reused
// autoregressively, as vLLM and SGLang do for depth 1). Float32 like the rest of the engine.
#include <algorithm>
#include <cstring>
#include <string>

#include "kernels/kernels.h"
#include "model/cpu_engine.h"

namespace deepshard::model {

namespace {

// One row of a drafting round: which chunk, its position, its two inputs.
struct MtpRow {
    size_t chunk = 0;
    int32_t pos = 0;
    int32_t next_token = 0;
    const float* hidden = nullptr;
};

// Lowest id among the maxima (the sampler's greedy tie rule).
int32_t argmax(const float* row, int64_t n) {
    int64_t best = 0;
    for (int64_t i = 1; i < n; ++i) {
        if (row[i] > row[best]) best = i;
    }
    return static_cast<int32_t>(best);
}

}  // namespace

StatusOr<std::vector<std::vector<int32_t>>> CpuEngine::mtp_draft(std::span<const MtpChunk> chunks) {
    const ShardWeights& w = *weights_;
    const MtpWeights* m = w.mtp();
    if (m == nullptr) {
        return unimplemented("this shard holds no MTP module (the model has num_nextn_predict_layers = 0, or this "
                             "is not the shard with the head)");
    }
    if (exchange_ != nullptr) {
        return unimplemented("MTP drafting with data-parallel attention (expert exchange) is not implemented");
    }
    const ModelConfig& c = w.config();
    const int64_t H = c.hidden_size, V = c.vocab_size;
    const float eps = static_cast<float>(c.rms_norm_eps);
    KvBlockManager& blocks = kv_.blocks();

    // Validate everything before the first collective, identically on every rank.
    std::vector<MtpRow> rows;
    for (size_t i = 0; i < chunks.size(); ++i) {
        const MtpChunk& ch = chunks[i];
        const int64_t n = static_cast<int64_t>(ch.next_tokens.size());
        if (static_cast<int64_t>(ch.hidden.size()) != n * H) {
            return invalid_argument("mtp: sequence " + std::to_string(ch.seq_id) + " has " +
                                    std::to_string(ch.hidden.size()) + " hidden values for " + std::to_string(n) +
                                    " rows");
        }
        if (ch.drafts < 0 || ch.drafts > 64 || (n == 0 && ch.drafts > 0)) {
            return invalid_argument("mtp: sequence " + std::to_string(ch.seq_id) + " asks for " +
                                    std::to_string(ch.drafts) + " drafts from " + std::to_string(n) + " rows");
        }
        if (n > 0 && (ch.start_pos < 0 || ch.start_pos + n > blocks.capacity(ch.seq_id))) {
            return invalid_argument("mtp: sequence " + std::to_string(ch.seq_id) + " rows [" +
                                    std::to_string(ch.start_pos) + ", " + std::to_string(ch.start_pos + n) +
                                    ") are outside its reserved KV blocks");
        }
        for (int64_t r = 0; r < n; ++r) {
            if (ch.next_tokens[r] < 0 || ch.next_tokens[r] >= V) {
                return invalid_argument("mtp: token id " + std::to_string(ch.next_tokens[r]) +
                                        " is outside the vocabulary");
            }
            rows.push_back({i, static_cast<int32_t>(ch.start_pos + r), ch.next_tokens[r], ch.hidden.data() + r * H});
        }
    }

    std::vector<std::vector<int32_t>> drafts(chunks.size());
    std::vector<float> h, x, cat, fn, logits, carry;
    while (!rows.empty()) {
        const int64_t T = static_cast<int64_t>(rows.size());
        // Block tables of the chunks in this round (table row = chunk index).
        int32_t max_blocks = 0;
        for (const MtpChunk& ch : chunks) {
            if (blocks.has(ch.seq_id)) {
                max_blocks = std::max<int32_t>(max_blocks, static_cast<int32_t>(blocks.block_table(ch.seq_id).size()));
            }
        }
        std::vector<int32_t> tables(chunks.size() * static_cast<size_t>(max_blocks), 0);
        for (size_t i = 0; i < chunks.size(); ++i) {
            if (!blocks.has(chunks[i].seq_id)) continue;
            const std::vector<int32_t>& t = blocks.block_table(chunks[i].seq_id);
            std::copy(t.begin(), t.end(), tables.begin() + static_cast<int64_t>(i) * max_blocks);
        }
        std::vector<int32_t> tok_pos(T), tok_row(T), local(T);
        std::vector<bool> held(T);
        for (int64_t t = 0; t < T; ++t) {
            tok_pos[t] = rows[t].pos;
            tok_row[t] = static_cast<int32_t>(rows[t].chunk);
            held[t] = rows[t].next_token >= w.vocab_begin() && rows[t].next_token < w.vocab_end();
            local[t] = held[t] ? rows[t].next_token - static_cast<int32_t>(w.vocab_begin()) : 0;
        }
        // Embedding of the next tokens (vocabulary-parallel like the main embedding).
        x.resize(static_cast<size_t>(T * H));
        kernels::gather_rows(m->embed, local.data(), T, x.data(), H);
        if (w.vocab_begin() != 0 || w.vocab_end() != V) {
            for (int64_t t = 0; t < T; ++t) {
                if (!held[t]) std::fill(x.begin() + t * H, x.begin() + (t + 1) * H, 0.0f);
            }
            if (reducer_ != nullptr) DS_RETURN_IF_ERROR(reducer_->allreduce_sum(x.data(), T * H));
        }
        // [enorm(e) ; hnorm(h)] -> eh_proj -> the block's input.
        cat.resize(static_cast<size_t>(T * 2 * H));
        h.resize(static_cast<size_t>(T * H));
        for (int64_t t = 0; t < T; ++t) std::copy_n(rows[t].hidden, H, h.data() + t * H);
        kernels::rmsnorm(x.data(), T, H, H, m->enorm.data(), eps, cat.data(), 2 * H);
        kernels::rmsnorm(h.data(), T, H, H, m->hnorm.data(), eps, cat.data() + H, 2 * H);
        kernels::matmul(cat.data(), T, 2 * H, m->eh_proj, h.data(), H, false, numerics_);
        DS_RETURN_IF_ERROR(block(m->block, h.data(), T, tok_pos.data(), tok_row.data(), tables, max_blocks));

        // The last row of each chunk that still drafts predicts its next token.
        std::vector<int64_t> last_rows;
        for (int64_t t = 0; t < T; ++t) {
            const size_t ci = rows[t].chunk;
            const bool last = t + 1 == T || rows[t + 1].chunk != ci;
            if (last && static_cast<int32_t>(drafts[ci].size()) < chunks[ci].drafts) last_rows.push_back(t);
        }
        const int64_t R = static_cast<int64_t>(last_rows.size());
        if (R == 0) break;
        fn.resize(static_cast<size_t>(R * H));
        for (int64_t i = 0; i < R; ++i) {
            kernels::rmsnorm(h.data() + last_rows[i] * H, 1, H, H, m->head_norm.data(), eps, fn.data() + i * H, H);
        }
        logits.assign(static_cast<size_t>(R * V), 0.0f);
        kernels::matmul(fn.data(), R, H, m->head, logits.data() + w.vocab_begin(), V, false, numerics_);
        if ((w.vocab_begin() != 0 || w.vocab_end() != V) && reducer_ != nullptr) {
            DS_RETURN_IF_ERROR(reducer_->allgather_vocab(logits.data(), R, V));
        }
        // Next round: one row per chunk that wants more, at the next position while its blocks hold it.
        carry.assign(h.begin(), h.end());
        std::vector<MtpRow> next;
        for (int64_t i = 0; i < R; ++i) {
            const MtpRow& r = rows[last_rows[i]];
            const int32_t d = argmax(logits.data() + i * V, V);
            drafts[r.chunk].push_back(d);
            const int64_t pos = r.pos + 1;
            const MtpChunk& ch = chunks[r.chunk];
            if (static_cast<int32_t>(drafts[r.chunk].size()) < ch.drafts && pos < blocks.capacity(ch.seq_id) &&
                pos < c.max_position_embeddings) {
                next.push_back({r.chunk, static_cast<int32_t>(pos), d, carry.data() + last_rows[i] * H});
            }
        }
        // The new rows point into `carry`, read only by the next round's copy into h.
        rows = std::move(next);
    }
    return drafts;
}

// KV rows for disaggregation (engine.h). Kept next to the MTP code: both reach into the cache
// by (layer, sequence, position) outside a step.
namespace {
Status check_rows(const KvBlockManager& blocks, uint64_t seq_id, int64_t pos_begin, int64_t pos_end) {
    if (pos_begin < 0 || pos_end < pos_begin) {
        return invalid_argument("KV rows [" + std::to_string(pos_begin) + ", " + std::to_string(pos_end) +
                                ") of sequence " + std::to_string(seq_id) + ": not a range");
    }
    if (blocks.capacity(seq_id) < pos_end) {
        return invalid_argument("KV rows [" + std::to_string(pos_begin) + ", " + std::to_string(pos_end) +
                                ") of sequence " + std::to_string(seq_id) + ": only " +
                                std::to_string(blocks.capacity(seq_id)) + " positions are reserved");
    }
    return ok_status();
}
}  // namespace

Status CpuEngine::read_kv_rows(uint64_t seq_id, int64_t pos_begin, int64_t pos_end, std::vector<uint8_t>* out) const {
    DS_RETURN_IF_ERROR(check_rows(kv_.blocks(), seq_id, pos_begin, pos_end));
    const int64_t layers = weights_->num_layers();
    const size_t row = static_cast<size_t>(kv_row_bytes());
    out->resize(static_cast<size_t>(layers * (pos_end - pos_begin)) * row);
    uint8_t* dst = out->data();
    for (int64_t l = 0; l < layers; ++l) {
        for (int64_t p = pos_begin; p < pos_end; ++p, dst += row) std::memcpy(dst, kv_.slot(l, seq_id, p), row);
    }
    return ok_status();
}

Status CpuEngine::write_kv_rows(uint64_t seq_id, int64_t pos_begin, int64_t pos_end, std::span<const uint8_t> rows) {
    DS_RETURN_IF_ERROR(check_rows(kv_.blocks(), seq_id, pos_begin, pos_end));
    const int64_t layers = weights_->num_layers();
    const size_t row = static_cast<size_t>(kv_row_bytes());
    if (rows.size() != static_cast<size_t>(layers * (pos_end - pos_begin)) * row) {
        return invalid_argument("KV rows of sequence " + std::to_string(seq_id) + ": " + std::to_string(rows.size()) +
                                " bytes for " + std::to_string(layers) + " layers x " +
                                std::to_string(pos_end - pos_begin) + " positions of " + std::to_string(row));
    }
    if (!kv_.blocks().writable(seq_id, pos_begin)) {
        return invalid_argument("KV rows of sequence " + std::to_string(seq_id) + " from position " +
                                std::to_string(pos_begin) + " are shared (prefix cache) and cannot be written");
    }
    const uint8_t* src = rows.data();
    for (int64_t l = 0; l < layers; ++l) {
        for (int64_t p = pos_begin; p < pos_end; ++p, src += row) std::memcpy(kv_.slot(l, seq_id, p), src, row);
    }
    return ok_status();
}

}  // namespace deepshard::model
