// The CUDA engine: creation, and the orchestration of a step (see model/cuda_engine.h for the design).
// A step is checked and its KV space reserved all-or-nothing exactly as the CPU engine does, cut into
// sub-steps that fit the fixed workspace (model/gpu/plan.h), and each sub-step runs as: inputs packed in
// pinned memory and copied asynchronously, the forward pass (model/gpu/forward.cc) eagerly or as a CUDA
// graph replay (decode steps, per batch bucket), the head in passes of at most max_logits_rows rows,
// sampling on the device for kSample rows, and the outputs copied back asynchronously; one
// synchronization per sub-step (per head pass) makes them visible on the host.
#include "model/cuda_engine.h"

#include <algorithm>
#include <array>
#include <cstring>

#include "common/env.h"
#include "common/logging.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/sampling.h"
#include "model/gpu/cuda_engine_impl.h"

namespace deepshard::model {

StatusOr<std::unique_ptr<Engine>> create_cuda_engine(std::shared_ptr<const ShardWeights> weights,
                                                     const EngineOptions& options) {
    DS_ASSIGN_OR_RETURN(auto e, gpu::CudaEngine::create(std::move(weights), options));
    return std::unique_ptr<Engine>(std::move(e));
}

namespace gpu {

namespace kc = kernels::cuda;

namespace {

constexpr int64_t kDefaultMaxTokens = 2048;
constexpr int64_t kDefaultMaxSeqs = 256;
constexpr int kLtWorkspaceMb = 32;

// The dense weights of a layer that go through GemmRunner::run (routed experts take the grouped kernels;
// only the host expert exchange runs them through it, below).
std::array<const kernels::WeightView*, 11> gemm_weights(const LayerWeights& L) {
    return {&L.wq_a, &L.wq_b, &L.wq, &L.wkv_a, &L.wo, &L.dense.w1, &L.dense.w3, &L.dense.w2,
            &L.shared.w1, &L.shared.w3, &L.shared.w2};
}

int64_t chunk_len(const SeqChunk& c) {
    return c.tokens.empty() ? c.num_tokens : static_cast<int64_t>(c.tokens.size());
}

}  // namespace

// ---- PinnedBuffer ----

StatusOr<PinnedBuffer> PinnedBuffer::create(size_t bytes) {
    PinnedBuffer b;
    if (bytes == 0) return b;
    DS_CUDA_RETURN_IF_ERROR(cudaHostAlloc(&b.p_, bytes, cudaHostAllocDefault));
    b.bytes_ = bytes;
    return b;
}

PinnedBuffer& PinnedBuffer::operator=(PinnedBuffer&& o) noexcept {
    if (this != &o) {
        if (p_ != nullptr) cudaFreeHost(p_);
        p_ = o.p_;
        bytes_ = o.bytes_;
        o.p_ = nullptr;
        o.bytes_ = 0;
    }
    return *this;
}

PinnedBuffer::~PinnedBuffer() {
    if (p_ != nullptr) cudaFreeHost(p_);
}

// ---- creation ----

CudaEngine::~CudaEngine() {
    cudaSetDevice(device_);
    if (stream_.get() != nullptr) cudaStreamSynchronize(stream_.get());
    for (auto& [b, g] : graphs_) {
        if (g.exec != nullptr) cudaGraphExecDestroy(g.exec);
    }
}

StatusOr<std::unique_ptr<CudaEngine>> CudaEngine::create(std::shared_ptr<const ShardWeights> weights,
                                                         const EngineOptions& options) {
    std::string why;
    const int count = kc::device_count(&why);
    if (count == 0) {
        return unavailable("device cuda: no CUDA device (" + why + "); run with --device cpu");
    }
    if (options.device_ordinal < 0 || options.device_ordinal >= count) {
        return invalid_argument("device cuda: ordinal " + std::to_string(options.device_ordinal) + " is outside the " +
                                std::to_string(count) + " visible CUDA devices");
    }
    std::unique_ptr<CudaEngine> e(new CudaEngine(std::move(weights)));
    DS_RETURN_IF_ERROR(e->init(options));
    return e;
}

Status CudaEngine::init(const EngineOptions& options) {
    device_ = options.device_ordinal;
    DS_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
    cudaDeviceProp prop{};
    DS_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, device_));
    sm_major_ = prop.major;
    num_sms_ = prop.multiProcessorCount;
    exact_ = options.precision == Precision::kExact;
    kv_dtype_ = exact_ ? kc::KvDType::kF32 : kc::KvDType::kBF16;
    graphs_enabled_ = options.cuda_graphs;
    // The tensor-core MLA kernel has not run on hardware yet: opt-in (kernels/cuda/mla_attention.h).
    if (env_bool("DS_CUDA_MLA_TC")) kc::mla_set_tensor_cores(true);
    const ShardWeights& w = *weights_;
    const ModelConfig& c = w.config();
    dims_ = dims_of(w);

    DS_ASSIGN_OR_RETURN(stream_, kc::CudaStream::create());
    DS_ASSIGN_OR_RETURN(sync_event_, kc::CudaEvent::create());
    DS_ASSIGN_OR_RETURN(auto lt, kc::CublasLtHandle::create(size_t{kLtWorkspaceMb} << 20));
    lt_ = std::make_unique<kc::CublasLtHandle>(std::move(lt));

    lim_.max_tokens = options.max_step_tokens > 0 ? options.max_step_tokens : kDefaultMaxTokens;
    lim_.max_seqs = std::min(options.max_seqs > 0 ? options.max_seqs : kDefaultMaxSeqs, lim_.max_tokens);
    lim_.max_logits_rows = lim_.max_seqs;
    const int64_t head_groups = (dims_.heads + kc::kMlaHeadsPerBlock - 1) / kc::kMlaHeadsPerBlock;
    lim_.mla_max_ctas = static_cast<int32_t>(std::max<int64_t>(1, 2 * num_sms_ / head_groups));

    // FP8 x FP8 through cuBLASLt where the chip has it and a held weight can use it.
    if (!exact_ && sm_major_ >= 9) {
        int64_t max_k = 0, max_n = 0;
        bool any = false;
        for (const LayerWeights& L : w.layers()) {
            for (const kernels::WeightView* v : gemm_weights(L)) {
                if (!kc::fp8_lt_compatible(*v)) continue;
                any = true;
                max_k = std::max(max_k, v->cols);
                max_n = std::max(max_n, v->rows);
            }
        }
        if (any) {
            auto g = kc::Fp8Gemm::create(lt_.get(), lim_.max_tokens, max_k, max_n, stream());
            if (g.ok()) {
                fp8_ = std::move(g).value();
            } else {
                spdlog::warn("cuda: FP8 cuBLASLt path off, BF16 tensor cores instead: {}", g.status().to_string());
            }
        }
    }
    std::optional<kc::Fp8GemmConfig> lt_cfg;
    if (fp8_) lt_cfg = fp8_->config();
    DS_ASSIGN_OR_RETURN(model_, DeviceModel::upload(w, lt_cfg, &load_stats_));
    // Staging for the cuBLASLt BF16 path: the widest BF16 weight's k times the padded step rows.
    int64_t bf16_k = 0;
    if (!exact_ && sm_major_ >= 8) {
        auto widest = [&bf16_k](const kernels::WeightView& v) {
            if (v.valid() && v.dtype == DType::kBF16) bf16_k = std::max(bf16_k, v.cols);
        };
        for (const LayerWeights& L : w.layers()) {
            for (const kernels::WeightView* v : gemm_weights(L)) {
                widest(*v);
            }
            for (const MlpWeights& e : L.experts) {
                if (!e.held()) continue;
                widest(e.w1);
                widest(e.w3);
                widest(e.w2);
            }
        }
        if (w.has_head()) widest(w.head());
    }
    const int64_t bf16_elems = bf16_k * gemm_rows_padded(std::max(lim_.max_tokens, lim_.max_logits_rows));
    if (bf16_elems > 0) {
        DS_ASSIGN_OR_RETURN(bf16_x_, kc::DeviceBuffer::create(static_cast<size_t>(bf16_elems) * 2));
        DS_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(bf16_x_.get(), 0, bf16_x_.bytes(), stream()));
    }
    gemm_ = GemmRunner(exact_, sm_major_, fp8_.get(), model_.get(), lt_.get(), bf16_x_.as<uint16_t>(), bf16_elems);

    // KV pool: [block][layer][slot][latent | rope] like the CPU cache, plus the padding block.
    const int64_t esz = kc::kv_dtype_size(kv_dtype_);
    const int64_t layers = std::max<int64_t>(w.num_layers(), 1);
    block_bytes_ = layers * options.kv_block_size * (c.kv_lora_rank + c.qk_rope_head_dim) * esz;
    if (options.kv_block_size <= 0) return invalid_argument("kv cache: block size must be positive");
    num_blocks_ = block_bytes_ > 0 ? options.kv_budget_bytes / block_bytes_ : 0;
    if (num_blocks_ > (int64_t{1} << 30)) num_blocks_ = int64_t{1} << 30;
    if (options.kv_max_blocks > 0) num_blocks_ = std::min(num_blocks_, options.kv_max_blocks);
    DS_ASSIGN_OR_RETURN(KvBlockManager bm, KvBlockManager::create(num_blocks_, options.kv_block_size));
    blocks_.emplace(std::move(bm));
    DS_ASSIGN_OR_RETURN(kv_pool_, kc::DeviceBuffer::create(static_cast<size_t>((num_blocks_ + 1) * block_bytes_)));
    DS_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(kv_pool_.get(), 0, kv_pool_.bytes(), stream()));
    const int64_t by_pos = (c.max_position_embeddings + options.kv_block_size - 1) / options.kv_block_size;
    lim_.max_blocks_per_seq = std::max<int64_t>(1, std::min(num_blocks_, by_pos));

    DS_ASSIGN_OR_RETURN(ws_, plan_workspace(dims_, lim_));
    DS_ASSIGN_OR_RETURN(ws_buf_, kc::DeviceBuffer::create(ws_.total));
    DS_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(ws_buf_.get(), 0, ws_.total, stream()));
    ws_base_ = static_cast<uint8_t*>(ws_buf_.get());

    const int64_t T = lim_.max_tokens, S = lim_.max_seqs, H = dims_.hidden, Rl = lim_.max_logits_rows;
    const size_t in_ints = static_cast<size_t>(5 * T + 2 * S + S * lim_.max_blocks_per_seq);
    DS_ASSIGN_OR_RETURN(pin_in_, PinnedBuffer::create(in_ints * 4 + static_cast<size_t>(T * H) * 4));
    const int64_t out_floats = std::max({Rl * dims_.vocab, T * H, T * std::max<int64_t>(dims_.experts, 1)});
    DS_ASSIGN_OR_RETURN(pin_out_, PinnedBuffer::create(static_cast<size_t>(out_floats) * 4 +
                                                       static_cast<size_t>(Rl) * sizeof(kc::SampleOut)));
    DS_ASSIGN_OR_RETURN(pin_sample_, PinnedBuffer::create(static_cast<size_t>(Rl) * sizeof(kc::SampleParams) +
                                                          static_cast<size_t>(lim_.max_penalty_entries) * 8));
    buckets_ = decode_buckets(lim_.max_seqs);
    DS_RETURN_IF_ERROR(sync());

    description_ = std::string(prop.name) + " (sm_" + std::to_string(prop.major) + std::to_string(prop.minor) + ", " +
                   std::to_string(num_sms_) + " SMs), precision " + (exact_ ? "exact" : "fast") + ", GEMMs " +
                   gemm_.describe() + ", KV " + kc::kv_dtype_name(kv_dtype_) + " " + std::to_string(num_blocks_) +
                   " blocks of " + std::to_string(options.kv_block_size) + " tokens, workspace " +
                   std::to_string(ws_.total >> 20) + " MiB for " + std::to_string(lim_.max_tokens) + " tokens / " +
                   std::to_string(lim_.max_seqs) + " sequences, decode graphs " +
                   (graphs_enabled_ ? "on" : "off");
    spdlog::info("cuda: engine on device {}: {}", device_, description_);
    return ok_status();
}

Status CudaEngine::sync() {
    if (device_collectives_ == nullptr) {
        DS_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream()));
        return ok_status();
    }
    // The stream may wait inside a collective for a peer: the wait is bounded by the collectives' watchdog.
    DS_RETURN_IF_ERROR(sync_event_.record(stream()));
    cudaEvent_t ev = sync_event_.get();
    const int dev = device_;
    const uint64_t token = device_collectives_->begin_wait("the CUDA engine's step on device " + std::to_string(dev),
                                                           [ev, dev] {
                                                               cudaSetDevice(dev);
                                                               return cudaEventQuery(ev) != cudaErrorNotReady;
                                                           });
    const cudaError_t err = cudaEventSynchronize(ev);
    device_collectives_->end_wait(token);
    DS_CUDA_RETURN_IF_ERROR(err);
    return ok_status();
}

KvUsage CudaEngine::kv_usage() const {
    KvUsage u;
    u.total_blocks = blocks_->total_blocks();
    u.free_blocks = blocks_->free_blocks();
    u.block_size = blocks_->block_size();
    u.block_bytes = block_bytes_;
    u.sequences = blocks_->num_sequences();
    return u;
}

kc::MlaCache CudaEngine::cache(int64_t layer) const {
    const ModelConfig& c = config();
    return kc::mla_cache_layer(kv_pool_.get(), kv_dtype_, std::max<int64_t>(weights_->num_layers(), 1), layer,
                               static_cast<int32_t>(blocks_->block_size()), static_cast<int32_t>(num_blocks_ + 1),
                               static_cast<int32_t>(c.kv_lora_rank), static_cast<int32_t>(c.qk_rope_head_dim));
}

bool CudaEngine::graphs_allowed() const {
    return graphs_enabled_ && hooks_ == nullptr && exchange_ == nullptr &&
           (reducer_ == nullptr || device_collectives_ != nullptr);
}

// ---- the step ----

Status CudaEngine::check_chunks(std::span<const SeqChunk> chunks, std::span<const float> hidden_in,
                                int64_t* tokens) const {
    const ModelConfig& c = config();
    int64_t T = 0, need = 0;
    for (size_t i = 0; i < chunks.size(); ++i) {
        const SeqChunk& ch = chunks[i];
        const int64_t n = chunk_len(ch);
        if (n <= 0) return invalid_argument("step: sequence " + std::to_string(ch.seq_id) + " has no tokens");
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
        if (ch.start_pos > 0 && blocks_->capacity(ch.seq_id) < ch.start_pos) {
            return invalid_argument("step: sequence " + std::to_string(ch.seq_id) + " starts at position " +
                                    std::to_string(ch.start_pos) + " but has no cached prefix");
        }
        if (!blocks_->writable(ch.seq_id, ch.start_pos)) {
            // Prefix-cache blocks are shared read-only; writing one would corrupt other sequences.
            return invalid_argument("step: sequence " + std::to_string(ch.seq_id) + " would write position " +
                                    std::to_string(ch.start_pos) + " into a shared (cached) KV block");
        }
        if (ch.logits == LogitsMode::kSample && ch.sampler == nullptr) {
            return invalid_argument("step: sequence " + std::to_string(ch.seq_id) + " asks for sampling without a sampler");
        }
        if (weights_->has_embedding()) {
            for (int32_t id : ch.tokens) {
                if (id < 0 || id >= c.vocab_size) {
                    return invalid_argument("token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                                            std::to_string(c.vocab_size) + ")");
                }
            }
            if (ch.tokens.empty()) {
                return invalid_argument("step: sequence " + std::to_string(ch.seq_id) + " has no token ids");
            }
        }
        need += blocks_->blocks_needed(ch.seq_id, ch.start_pos + n);
        T += n;
    }
    if (need > blocks_->free_blocks()) {
        return resource_exhausted("step needs " + std::to_string(need) + " KV blocks, " +
                                  std::to_string(blocks_->free_blocks()) + " free");
    }
    if (!weights_->has_embedding() && static_cast<int64_t>(hidden_in.size()) != T * c.hidden_size) {
        return invalid_argument("step: expected " + std::to_string(T * c.hidden_size) + " input hidden values, got " +
                                std::to_string(hidden_in.size()));
    }
    *tokens = T;
    return ok_status();
}

StatusOr<StepOutput> CudaEngine::step(std::span<const SeqChunk> chunks, std::span<const float> hidden_in) {
    DS_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
    int64_t T = 0;
    DS_RETURN_IF_ERROR(check_chunks(chunks, hidden_in, &T));
    StepOutput out;
    out.vocab = weights_->has_head() ? config().vocab_size : 0;
    if (T == 0) {
        if (exchange_ != nullptr) DS_RETURN_IF_ERROR(zero_token_step());
        return out;
    }
    for (const SeqChunk& ch : chunks) DS_RETURN_IF_ERROR(blocks_->reserve(ch.seq_id, ch.start_pos + chunk_len(ch)));
    const auto subs = split_step(chunks, lim_.max_tokens, lim_.max_seqs);
    int64_t t0 = 0;
    for (const auto& sub : subs) {
        int64_t n = 0;
        for (const SeqChunk& p : sub) n += chunk_len(p);
        const float* hin = hidden_in.empty() ? nullptr : hidden_in.data() + t0 * config().hidden_size;
        DS_RETURN_IF_ERROR(run_substep(sub, hin, &out));
        t0 += n;
    }
    return out;
}

Status CudaEngine::upload_inputs(std::span<const SeqChunk> pieces, int64_t T, int64_t rows, int64_t stride,
                                 const float* hidden_in) {
    // Pinned layout: tok_local[T] tok_pos[T] tok_row[T] logit_rows[T] seq_lens[rows] tables[rows * width].
    const ShardWeights& w = *weights_;
    int32_t* base = pin_in_.as<int32_t>();
    int32_t* tok_local = base;
    int32_t* tok_pos = tok_local + T;
    int32_t* tok_row = tok_pos + T;
    int32_t* lrows = tok_row + T;
    int32_t* seq_lens = lrows + T;
    int32_t* tables = seq_lens + rows;
    int64_t width = 1;
    for (const SeqChunk& p : pieces) {
        width = std::max<int64_t>(width, static_cast<int64_t>(blocks_->block_table(p.seq_id).size()));
    }
    if (width > stride) return internal_error("cuda step: block table wider than the workspace stride");
    const auto trash = static_cast<int32_t>(num_blocks_);
    int64_t t = 0;
    for (size_t r = 0; r < static_cast<size_t>(rows); ++r) {
        int32_t* row = tables + static_cast<int64_t>(r) * width;
        if (r < pieces.size()) {
            const SeqChunk& p = pieces[r];
            const int64_t n = chunk_len(p);
            for (int64_t k = 0; k < n; ++k, ++t) {
                int32_t id = p.tokens.empty() ? 0 : p.tokens[static_cast<size_t>(k)];
                id = (id >= w.vocab_begin() && id < w.vocab_end()) ? id - static_cast<int32_t>(w.vocab_begin()) : -1;
                tok_local[t] = id;
                tok_pos[t] = static_cast<int32_t>(p.start_pos + k);
                tok_row[t] = static_cast<int32_t>(r);
            }
            seq_lens[r] = static_cast<int32_t>(p.start_pos + n);
            const std::vector<int32_t>& bt = blocks_->block_table(p.seq_id);
            for (int64_t k = 0; k < width; ++k) row[k] = k < static_cast<int64_t>(bt.size()) ? bt[k] : trash;
        } else {
            // Padding rows of a graph bucket: one token at position 0 of the scratch block.
            tok_local[t] = -1;
            tok_pos[t] = 0;
            tok_row[t] = static_cast<int32_t>(r);
            ++t;
            seq_lens[r] = 1;
            for (int64_t k = 0; k < width; ++k) row[k] = trash;
        }
    }
    for (int64_t i = 0; i < T; ++i) lrows[i] = static_cast<int32_t>(i);
    auto h2d = [&](const Slice& dst, const int32_t* src, int64_t n) -> Status {
        DS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(ws_base_ + dst.offset, src, static_cast<size_t>(n) * 4,
                                                cudaMemcpyHostToDevice, stream()));
        return ok_status();
    };
    DS_RETURN_IF_ERROR(h2d(ws_.tok_local, tok_local, T));
    DS_RETURN_IF_ERROR(h2d(ws_.tok_pos, tok_pos, T));
    DS_RETURN_IF_ERROR(h2d(ws_.tok_row, tok_row, T));
    DS_RETURN_IF_ERROR(h2d(ws_.logit_rows, lrows, T));
    DS_RETURN_IF_ERROR(h2d(ws_.seq_lens, seq_lens, rows));
    DS_CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(ws_base_ + ws_.tables.offset, static_cast<size_t>(stride) * 4, tables,
                                              static_cast<size_t>(width) * 4, static_cast<size_t>(width) * 4,
                                              static_cast<size_t>(rows), cudaMemcpyHostToDevice, stream()));
    if (!w.has_embedding()) {
        const int64_t H = dims_.hidden;
        int64_t real = 0;
        for (const SeqChunk& p : pieces) real += chunk_len(p);
        float* hpin = reinterpret_cast<float*>(tables + rows * width);
        std::memcpy(hpin, hidden_in, static_cast<size_t>(real * H) * 4);
        std::fill(hpin + real * H, hpin + T * H, 0.0f);
        DS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(f(ws_.h), hpin, static_cast<size_t>(T * H) * 4, cudaMemcpyHostToDevice,
                                                stream()));
    }
    return ok_status();
}

Status CudaEngine::run_graph(std::span<const SeqChunk> pieces, int64_t bucket, const float* hidden_in) {
    const int64_t stride = lim_.max_blocks_per_seq;
    DS_RETURN_IF_ERROR(upload_inputs(pieces, bucket, bucket, stride, hidden_in));
    const Pass eager{bucket, bucket, stride, true, false};
    auto it = graphs_.find(bucket);
    if (it == graphs_.end()) {
        if (bucket_seen_[bucket]++ == 0) {
            // First time: eagerly (creates the cuBLASLt plans and kernel attributes outside any capture).
            DS_RETURN_IF_ERROR(body(eager));
            return weights_->has_head() ? head(0, bucket, false) : ok_status();
        }
        Pass p = eager;
        p.graph = true;
        DS_CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(stream(), cudaStreamCaptureModeThreadLocal));
        Status s = body(p);
        if (s.ok() && weights_->has_head()) s = head(0, bucket, true);
        cudaGraph_t graph = nullptr;
        const cudaError_t end = cudaStreamEndCapture(stream(), &graph);
        cudaGraphExec_t exec = nullptr;
        if (s.ok() && end == cudaSuccess) {
            const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
            if (inst != cudaSuccess) s = kc::cuda_error(inst, "cudaGraphInstantiate", __FILE__, __LINE__);
        } else if (s.ok()) {
            s = kc::cuda_error(end, "cudaStreamEndCapture", __FILE__, __LINE__);
        }
        if (graph != nullptr) cudaGraphDestroy(graph);
        if (!s.ok()) {
            cudaGetLastError();
            spdlog::warn("cuda: capturing the decode graph of batch {} failed; decode stays eager: {}", bucket,
                         s.to_string());
            graphs_enabled_ = false;
            DS_RETURN_IF_ERROR(upload_inputs(pieces, bucket, bucket, stride, hidden_in));
            DS_RETURN_IF_ERROR(body(eager));
            return weights_->has_head() ? head(0, bucket, false) : ok_status();
        }
        it = graphs_.emplace(bucket, Graph{exec}).first;
        spdlog::info("cuda: captured the decode graph of batch {}", bucket);
    }
    DS_CUDA_RETURN_IF_ERROR(cudaGraphLaunch(it->second.exec, stream()));
    ++graph_replays_;
    return ok_status();
}

Status CudaEngine::run_substep(std::span<const SeqChunk> pieces, const float* hidden_in, StepOutput* out) {
    int64_t T = 0;
    for (const SeqChunk& p : pieces) T += chunk_len(p);
    const int64_t rows = static_cast<int64_t>(pieces.size());
    // The rows that need logits (token indices) and which of them are sampled here.
    logit_rows_.clear();
    row_sampler_.clear();
    if (weights_->has_head()) {
        int64_t t = 0;
        for (const SeqChunk& p : pieces) {
            const int64_t n = chunk_len(p);
            if (p.logits == LogitsMode::kAll) {
                for (int64_t i = 0; i < n; ++i) {
                    logit_rows_.push_back(static_cast<int32_t>(t + i));
                    row_sampler_.push_back(nullptr);
                }
            } else if (p.logits == LogitsMode::kLast || p.logits == LogitsMode::kSample) {
                logit_rows_.push_back(static_cast<int32_t>(t + n - 1));
                row_sampler_.push_back(p.logits == LogitsMode::kSample ? p.sampler : nullptr);
            }
            t += n;
        }
    }
    const bool decode = is_decode_step(pieces);
    const int64_t bucket = decode && graphs_allowed() ? choose_bucket(buckets_, rows) : -1;
    if (bucket > 0) {
        DS_RETURN_IF_ERROR(run_graph(pieces, bucket, hidden_in));
        return collect_outputs(pieces, T, true, out);
    }
    int64_t width = 1;
    for (const SeqChunk& p : pieces) {
        width = std::max<int64_t>(width, static_cast<int64_t>(blocks_->block_table(p.seq_id).size()));
    }
    DS_RETURN_IF_ERROR(upload_inputs(pieces, T, rows, width, hidden_in));
    DS_RETURN_IF_ERROR(body(Pass{T, rows, width, decode, false}));
    return collect_outputs(pieces, T, false, out);
}

}  // namespace gpu
}  // namespace deepshard::model
