// The CUDA engine's outputs: hidden rows for a pipeline stage without the head; otherwise the head in
// passes of at most max_logits_rows rows, kSample rows sampled on the device (model::Sampler's decisions,
// kernels/cuda/sampling.h) and the other rows' logits copied back. With the vocabulary split over a stage
// and only a host reducer, the rows are gathered on the host and sampled there.
#include <algorithm>
#include <cstring>

#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/sampling.h"
#include "model/gpu/cuda_engine_impl.h"

namespace deepshard::model::gpu {

namespace kc = kernels::cuda;

namespace {

SampleResult to_result(const kc::SampleOut& o) {
    SampleResult r;
    r.token = o.token;
    r.logprob = o.logprob;
    for (int32_t i = 0; i < o.num_top; ++i) r.top_logprobs.emplace_back(o.top_ids[i], o.top_logprobs[i]);
    return r;
}

}  // namespace

Status CudaEngine::collect_outputs(std::span<const SeqChunk> pieces, int64_t T, bool head_done, StepOutput* out) {
    (void)pieces;
    cudaStream_t s = stream();
    const int64_t H = dims_.hidden;
    if (!weights_->has_head()) {
        float* host = pin_out_.as<float>();
        DS_CUDA_RETURN_IF_ERROR(
            cudaMemcpyAsync(host, f(ws_.h), static_cast<size_t>(T * H) * 4, cudaMemcpyDeviceToHost, s));
        DS_RETURN_IF_ERROR(sync());
        out->hidden.insert(out->hidden.end(), host, host + T * H);
        return ok_status();
    }
    const int64_t V = dims_.vocab, Vl = dims_.vocab_local, vb = weights_->vocab_begin();
    const bool split = Vl != V;
    const bool host_vocab = split && device_collectives_ == nullptr;
    float* logits = split && !host_vocab ? f(ws_.logits_full) : f(ws_.logits);
    const int64_t ld = split && !host_vocab ? V : Vl;
    const int64_t cols = ld;  // columns per row copied back
    const int64_t total = static_cast<int64_t>(logit_rows_.size());
    const int64_t Rl = lim_.max_logits_rows;
    float* host_rows = pin_out_.as<float>();
    auto* host_out = reinterpret_cast<kc::SampleOut*>(pin_out_.as<uint8_t>() + pin_out_.bytes() -
                                                      static_cast<size_t>(Rl) * sizeof(kc::SampleOut));
    auto* params = pin_sample_.as<kc::SampleParams>();
    auto* pen_ids = reinterpret_cast<int32_t*>(params + Rl);
    auto* pen_counts = reinterpret_cast<float*>(pen_ids + lim_.max_penalty_entries);
    for (int64_t first = 0; first < total; first += Rl) {
        const int64_t n = std::min(Rl, total - first);
        if (!head_done) {
            DS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(i32(ws_.logit_rows), logit_rows_.data() + first,
                                                    static_cast<size_t>(n) * 4, cudaMemcpyHostToDevice, s));
            DS_RETURN_IF_ERROR(head(0, n, false));
        }
        auto row_of = [&](int64_t i) -> int64_t { return head_done ? logit_rows_[first + i] : i; };
        // Device sampling for kSample rows whose penalty lists fit; the rest goes to the host.
        int32_t nsample = 0, npen = 0;
        std::vector<int64_t> device_rows, host_rows_idx;  // indices i in [0, n)
        for (int64_t i = 0; i < n; ++i) {
            Sampler* smp = row_sampler_[first + i];
            if (smp == nullptr) {
                host_rows_idx.push_back(i);
                continue;
            }
            const SamplingParams& sp = smp->params();
            const bool rep = sp.repetition_penalty != 1.0f;
            const bool fp = sp.frequency_penalty != 0.0f || sp.presence_penalty != 0.0f;
            const int64_t entries = rep ? static_cast<int64_t>(smp->seen().size())
                                        : (fp ? static_cast<int64_t>(smp->generated().size()) : 0);
            if (host_vocab || npen + entries > lim_.max_penalty_entries) {
                host_rows_idx.push_back(i);
                continue;
            }
            kc::SampleParams& q = params[nsample];
            q = kc::SampleParams{};
            q.temperature = sp.temperature;
            q.top_k = sp.top_k;
            q.top_p = sp.top_p;
            q.min_p = sp.min_p;
            q.repetition_penalty = sp.repetition_penalty;
            q.frequency_penalty = sp.frequency_penalty;
            q.presence_penalty = sp.presence_penalty;
            q.logprobs = std::min(sp.logprobs, kc::kMaxSampleLogprobs);
            q.step_key = smp->next_step_key();
            q.row = static_cast<int32_t>(row_of(i));
            q.penalty_begin = npen;
            if (rep) {
                for (int32_t id : smp->seen()) {
                    auto it = smp->generated().find(id);
                    pen_ids[npen] = id;
                    pen_counts[npen] = it == smp->generated().end() ? 0.0f : static_cast<float>(it->second);
                    ++npen;
                }
            } else if (fp) {
                for (const auto& [id, cnt] : smp->generated()) {
                    pen_ids[npen] = id;
                    pen_counts[npen] = static_cast<float>(cnt);
                    ++npen;
                }
            }
            q.penalty_end = npen;
            ++nsample;
            device_rows.push_back(i);
        }
        // Copies of the rows the host needs (before the sampler transforms the sampled rows in place).
        for (size_t k = 0; k < host_rows_idx.size(); ++k) {
            DS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host_rows + static_cast<int64_t>(k) * cols,
                                                    logits + row_of(host_rows_idx[k]) * ld,
                                                    static_cast<size_t>(cols) * 4, cudaMemcpyDeviceToHost, s));
        }
        if (nsample > 0) {
            auto* dparams = reinterpret_cast<kc::SampleParams*>(ws_base_ + ws_.sample_params.offset);
            auto* dout = reinterpret_cast<kc::SampleOut*>(ws_base_ + ws_.sample_out.offset);
            DS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dparams, params, static_cast<size_t>(nsample) * sizeof(kc::SampleParams),
                                                    cudaMemcpyHostToDevice, s));
            if (npen > 0) {
                DS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(i32(ws_.penalty_ids), pen_ids, static_cast<size_t>(npen) * 4,
                                                        cudaMemcpyHostToDevice, s));
                DS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(f(ws_.penalty_vals), pen_counts, static_cast<size_t>(npen) * 4,
                                                        cudaMemcpyHostToDevice, s));
            }
            DS_RETURN_IF_ERROR(kc::sample_rows(logits, ld, V, dparams, nsample, i32(ws_.penalty_ids),
                                               f(ws_.penalty_vals), dout, s));
            DS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host_out, dout, static_cast<size_t>(nsample) * sizeof(kc::SampleOut),
                                                    cudaMemcpyDeviceToHost, s));
        }
        DS_RETURN_IF_ERROR(sync());
        // Host-side rows: full vocabulary rows (gathered over the stage when split), then in row order.
        std::vector<float> full;
        const float* rows_ptr = host_rows;
        const int64_t nh = static_cast<int64_t>(host_rows_idx.size());
        if (host_vocab && nh > 0) {
            full.assign(static_cast<size_t>(nh * V), 0.0f);
            for (int64_t k = 0; k < nh; ++k) std::copy_n(host_rows + k * Vl, Vl, full.data() + k * V + vb);
            if (reducer_ != nullptr) DS_RETURN_IF_ERROR(reducer_->allgather_vocab(full.data(), nh, V));
            rows_ptr = full.data();
        }
        size_t next_dev = 0, next_host = 0;
        for (int64_t i = 0; i < n; ++i) {
            Sampler* smp = row_sampler_[first + i];
            if (next_dev < device_rows.size() && device_rows[next_dev] == i) {
                out->samples.push_back(to_result(host_out[next_dev]));
                ++next_dev;
                continue;
            }
            const float* row = rows_ptr + static_cast<int64_t>(next_host) * V;
            ++next_host;
            if (smp != nullptr) {
                out->samples.push_back(smp->sample(std::span<const float>(row, V)));
            } else {
                out->logits.insert(out->logits.end(), row, row + V);
                ++out->rows;
            }
        }
    }
    return ok_status();
}

}  // namespace deepshard::model::gpu
