// Speculative decoding on the last stage: the verification rule (speculative.h) and the pipeline's
// part, Pipeline::speculate(): verify each chunk's drafts, agree on the emitted tokens inside a
// tensor-parallel stage, run the MTP module over the committed positions and draft the next step's
// tokens.
#include "shard_node/speculative.h"

#include <algorithm>
#include <string>

#include "shard_node/pipeline.h"

namespace deepshard::shard_node {

namespace ctl = deepshard::control;

AcceptDecision speculative_accept(std::span<const float> p, std::span<const float> q, int32_t draft,
                                  std::mt19937_64& rng) {
    std::uniform_real_distribution<double> uniform(0.0, 1.0);
    const double pd = p[static_cast<size_t>(draft)], qd = q[static_cast<size_t>(draft)];
    if (qd > 0 && uniform(rng) < std::min(1.0, pd / qd)) {
        return {draft, true};
    }
    // Residual distribution max(0, p - q), normalized (it has mass whenever a rejection can happen).
    double mass = 0;
    for (size_t i = 0; i < p.size(); ++i) mass += std::max(0.0, static_cast<double>(p[i]) - q[i]);
    double u = uniform(rng) * mass;
    int32_t last = draft;
    for (size_t i = 0; i < p.size(); ++i) {
        const double r = std::max(0.0, static_cast<double>(p[i]) - q[i]);
        if (r <= 0) continue;
        last = static_cast<int32_t>(i);
        if (u < r) return {last, false};
        u -= r;
    }
    return {last, false};
}

Status Pipeline::speculate(const PipelineStep& step, const std::vector<size_t>& mine, const model::StepOutput& out,
                           std::vector<SpecOutcome>* outcomes) {
    const model::ModelConfig& cfg = checkpoint_->config();
    const int64_t H = cfg.hidden_size, V = cfg.vocab_size;
    const bool tp = layout_.attention == AttentionMode::kTensorParallel && layout_.ranks_per_stage > 1;
    const bool samples_here = !tp || local_ == 0;
    outcomes->assign(mine.size(), SpecOutcome{});

    // 1. Verify (the rank that samples). Walk the engine's outputs in chunk order: logits rows
    //    (kAll: every token; kLast: one), samples (kSample), hidden rows (every token).
    size_t row = 0, sample = 0;
    for (size_t j = 0; j < mine.size(); ++j) {
        const ctl::SeqWork& w = step.batch.seqs[mine[j]];
        const int64_t n = static_cast<int64_t>(w.tokens.size());
        SpecOutcome& o = (*outcomes)[j];
        o.active = w.propose > 0 || w.num_draft > 0;
        const bool all_rows = w.num_draft > 0;
        if (w.sample && samples_here) {
            if (all_rows) {
                if ((row + static_cast<size_t>(n)) * static_cast<size_t>(V) > out.logits.size()) {
                    return internal_error("speculative decoding: the engine returned too few logits rows");
                }
                const std::span<const float> rows(out.logits.data() + (row + static_cast<size_t>(n - w.num_draft - 1)) * V,
                                                  static_cast<size_t>((w.num_draft + 1) * V));
                const std::span<const int32_t> drafts(w.tokens.data() + n - w.num_draft, w.num_draft);
                o.emitted = verify_drafts(*samplers_.at(w.seq_id), rows, V, drafts);
            } else if (w.propose > 0) {
                // The engine sampled it (kSample); finish_last_stage() records it with the sampler.
                if (sample >= out.samples.size()) {
                    return internal_error("speculative decoding: the engine returned too few samples");
                }
                o.emitted.push_back(out.samples[sample]);
            }
        }
        if (w.sample) {
            if (all_rows) {
                row += static_cast<size_t>(n);
            } else if (!samples_here) {
                row += 1;  // kLast on a rank that does not sample
            } else {
                ++sample;
            }
        }
    }

    // 2. Inside a tensor-parallel stage every rank runs the MTP module with the same inputs: the
    //    sampling rank broadcasts the emitted tokens (count, then ids, per active sampled chunk).
    std::vector<std::vector<int32_t>> emitted(mine.size());
    for (size_t j = 0; j < mine.size(); ++j) {
        for (const model::SampleResult& r : (*outcomes)[j].emitted) emitted[j].push_back(r.token);
    }
    if (tp) {
        std::vector<int32_t> flat;
        for (size_t j = 0; j < mine.size(); ++j) {
            const ctl::SeqWork& w = step.batch.seqs[mine[j]];
            if (!(w.propose > 0 && w.sample)) continue;
            flat.push_back(static_cast<int32_t>(emitted[j].size()));
            flat.insert(flat.end(), emitted[j].begin(), emitted[j].end());
        }
        uint64_t len = flat.size();
        DS_RETURN_IF_ERROR(stage_comm_->broadcast(&len, 8, comm::DataType::kByte, 0));
        if (len > static_cast<uint64_t>(mine.size()) * (ctl::kMaxDraftTokens + 2)) {
            return protocol_error("speculative decoding: " + std::to_string(len) + " emitted-token values broadcast");
        }
        flat.resize(len);
        DS_RETURN_IF_ERROR(stage_comm_->broadcast(flat.data(), len * 4, comm::DataType::kByte, 0));
        size_t at = 0;
        for (size_t j = 0; j < mine.size(); ++j) {
            const ctl::SeqWork& w = step.batch.seqs[mine[j]];
            if (!(w.propose > 0 && w.sample)) continue;
            const int32_t c = at < flat.size() ? flat[at++] : -1;
            if (c < 1 || c > w.num_draft + 1 || at + static_cast<size_t>(c) > flat.size()) {
                return protocol_error("speculative decoding: bad emitted-token count in the stage broadcast");
            }
            emitted[j].assign(flat.begin() + static_cast<int64_t>(at), flat.begin() + static_cast<int64_t>(at + c));
            at += static_cast<size_t>(c);
        }
    }

    // 3. The MTP module over the committed positions of each active chunk: row i pairs the hidden
    //    state at start_pos + i with the token after it (the chunk's next token, or the last emitted
    //    one), then drafts `propose` tokens when the chunk sampled.
    std::vector<model::MtpChunk> chunks;
    std::vector<std::vector<int32_t>> next(mine.size());
    std::vector<size_t> chunk_of;
    size_t tok = 0;
    for (size_t j = 0; j < mine.size(); ++j) {
        const ctl::SeqWork& w = step.batch.seqs[mine[j]];
        const int64_t n = static_cast<int64_t>(w.tokens.size());
        const size_t first = tok;
        tok += static_cast<size_t>(n);
        if (w.propose == 0) continue;
        int64_t rows = n - 1;  // a prefill chunk that does not sample: its last token's successor is unknown
        if (w.sample) {
            rows = n - w.num_draft - 1 + static_cast<int64_t>(emitted[j].size());
        }
        if (rows <= 0) continue;
        next[j].assign(w.tokens.begin() + 1, w.tokens.begin() + rows);
        if (w.sample) next[j].push_back(emitted[j].back());
        if ((first + static_cast<size_t>(rows)) * static_cast<size_t>(H) > out.hidden.size()) {
            return internal_error("speculative decoding: the engine returned too few hidden states");
        }
        model::MtpChunk c;
        c.seq_id = w.seq_id;
        c.start_pos = w.start_pos;
        c.hidden = std::span<const float>(out.hidden.data() + first * H, static_cast<size_t>(rows * H));
        c.next_tokens = next[j];
        c.drafts = w.sample ? w.propose : 0;
        chunks.push_back(c);
        chunk_of.push_back(j);
    }
    if (chunks.empty()) return ok_status();
    DS_ASSIGN_OR_RETURN(auto drafts, model_->mtp_draft(chunks));
    for (size_t i = 0; i < chunks.size(); ++i) (*outcomes)[chunk_of[i]].drafts = std::move(drafts[i]);
    return ok_status();
}

}  // namespace deepshard::shard_node
