// The CUDA engine's class (internal; model/cuda_engine.h is the public, CUDA-free entry point).
// model/cuda_engine.cc: creation, step orchestration (admission, sub-steps, inputs, graphs, outputs);
// model/gpu/forward.cc: the forward pass on the device (the CPU engine's ops, in its order).
#pragma once

#include <cuda_runtime_api.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kernels/cuda/cublaslt_fp8.h"
#include "kernels/cuda/cuda_handles.h"
#include "kernels/cuda/mla_attention.h"
#include "kernels/cuda/sampling_math.h"
#include "model/engine.h"
#include "model/gpu/device_model.h"
#include "model/gpu/gemm.h"
#include "model/gpu/plan.h"
#include "model/kv_blocks.h"

namespace deepshard::model::gpu {

// One device pass: at most StepLimits tokens / sequences, inputs already in the workspace.
struct Pass {
    int64_t T = 0;             // tokens (a graph pass: the bucket)
    int64_t rows = 0;          // block-table rows (one per chunk; a graph pass: the bucket)
    int64_t table_stride = 0;  // block-table row width in the workspace
    bool decode = false;       // one token per row, token t in row t (the balanced decode attention)
    bool graph = false;        // being captured: no host synchronization allowed
};

// Pinned host memory (cudaHostAlloc), RAII.
class PinnedBuffer {
public:
    PinnedBuffer() = default;
    static StatusOr<PinnedBuffer> create(size_t bytes);
    PinnedBuffer(PinnedBuffer&& o) noexcept : p_(o.p_), bytes_(o.bytes_) {
        o.p_ = nullptr;
        o.bytes_ = 0;
    }
    PinnedBuffer& operator=(PinnedBuffer&& o) noexcept;
    PinnedBuffer(const PinnedBuffer&) = delete;
    PinnedBuffer& operator=(const PinnedBuffer&) = delete;
    ~PinnedBuffer();
    template <typename T>
    T* as() const {
        return static_cast<T*>(p_);
    }
    size_t bytes() const { return bytes_; }

private:
    void* p_ = nullptr;
    size_t bytes_ = 0;
};

class CudaEngine final : public Engine {
public:
    static StatusOr<std::unique_ptr<CudaEngine>> create(std::shared_ptr<const ShardWeights> weights,
                                                        const EngineOptions& options);
    ~CudaEngine() override;

    Device device() const override { return Device::kCuda; }
    StatusOr<LoadStats> prepare() override { return load_stats_; }
    StatusOr<StepOutput> step(std::span<const SeqChunk> chunks, std::span<const float> hidden_in = {}) override;
    void release(uint64_t seq_id) override { blocks_->release(seq_id); }
    KvUsage kv_usage() const override;
    KvBlockManager& kv_blocks() override { return *blocks_; }

    // Introspection for tests and benchmarks.
    bool exact() const { return exact_; }
    const std::string& description() const { return description_; }
    int64_t graphs_captured() const { return static_cast<int64_t>(graphs_.size()); }
    int64_t graph_replays() const { return graph_replays_; }
    // Fast precision with FP8 x FP8 GEMMs in use: the activations of FP8 weights' GEMMs are rounded to
    // e4m3 (2^-4 relative), not BF16 (2^-8); the golden tests derive their noise bounds from this.
    bool fp8_activations() const { return !exact_ && fp8_ != nullptr && model_ && model_->lt_weight_count() > 0; }
    const StepLimits& limits() const { return lim_; }

private:
    CudaEngine(std::shared_ptr<const ShardWeights> weights) : Engine(std::move(weights)) {}
    Status init(const EngineOptions& options);

    // ---- step orchestration (cuda_engine.cc) ----
    Status check_chunks(std::span<const SeqChunk> chunks, std::span<const float> hidden_in, int64_t* tokens) const;
    Status run_substep(std::span<const SeqChunk> pieces, const float* hidden_in, StepOutput* out);
    Status run_graph(std::span<const SeqChunk> pieces, int64_t bucket, const float* hidden_in);
    Status upload_inputs(std::span<const SeqChunk> pieces, int64_t T, int64_t rows, int64_t stride, const float* hidden_in);
    // Copies back the sub-step's outputs (hidden rows, or logits rows and samples). head_done: a graph pass
    // computed the head for every token row already (row t = token t); else the head runs here in passes.
    Status collect_outputs(std::span<const SeqChunk> pieces, int64_t T, bool head_done, StepOutput* out);
    // Runs one of this rank's experts on n rows of host memory (the host MoE exchange's callback).
    Status run_local_expert(const DevLayer& L, int32_t expert, const float* x, int64_t n, float* y);
    Status zero_token_step();
    bool graphs_allowed() const;

    // ---- forward pass (forward.cc) ----
    Status body(const Pass& p);
    Status embed(const Pass& p);
    Status mla(const DevLayer& L, int64_t layer, const Pass& p);
    Status mlp(const DevMlp& m, const float* x, int64_t T, float* y, bool accumulate);
    Status moe(const DevLayer& L, const Pass& p);
    Status moe_host_exchange(const DevLayer& L, const Pass& p);
    // Head over rows [first, first + n) of the logit_rows list: final-normed rows -> logits [n, vocab(_local)].
    Status head(int64_t first, int64_t n, bool graph);
    Status tp_allreduce(float* data, int64_t n, bool graph);
    Status hidden_hook(int64_t layer, int64_t T);
    kernels::cuda::MlaCache cache(int64_t layer) const;

    float* f(const Slice& s) const { return reinterpret_cast<float*>(ws_base_ + s.offset); }
    int32_t* i32(const Slice& s) const { return reinterpret_cast<int32_t*>(ws_base_ + s.offset); }
    cudaStream_t stream() const { return stream_.get(); }
    Status sync();

    int device_ = 0;
    bool exact_ = false;
    int sm_major_ = 0, num_sms_ = 0;
    std::string description_;
    LoadStats load_stats_;
    EngineDims dims_;
    StepLimits lim_;
    kernels::cuda::KvDType kv_dtype_ = kernels::cuda::KvDType::kBF16;
    bool graphs_enabled_ = true;

    kernels::cuda::CudaStream stream_;
    kernels::cuda::CudaEvent sync_event_;
    std::unique_ptr<kernels::cuda::CublasLtHandle> lt_;
    std::unique_ptr<kernels::cuda::Fp8Gemm> fp8_;
    kernels::cuda::DeviceBuffer bf16_x_;  // GemmRunner's BF16 activation staging (fast precision)
    std::unique_ptr<DeviceModel> model_;
    GemmRunner gemm_;

    // KV cache: num_blocks_ managed blocks + one scratch block (id num_blocks_) that the padding rows of
    // a graph batch write to and read from.
    kernels::cuda::DeviceBuffer kv_pool_;
    std::optional<KvBlockManager> blocks_;
    int64_t num_blocks_ = 0;
    int64_t block_bytes_ = 0;

    WorkspaceLayout ws_;
    kernels::cuda::DeviceBuffer ws_buf_;
    uint8_t* ws_base_ = nullptr;
    PinnedBuffer pin_in_;   // int32 inputs + hidden_in
    PinnedBuffer pin_out_;  // logits rows / hidden / sample outputs / host collectives
    PinnedBuffer pin_sample_;  // sample params + penalty lists

    // Per sub-step bookkeeping (host): logit row list and its sampling flags.
    std::vector<int32_t> logit_rows_;
    std::vector<Sampler*> row_sampler_;

    struct Graph {
        cudaGraphExec_t exec = nullptr;
    };
    std::map<int64_t, Graph> graphs_;
    std::map<int64_t, int> bucket_seen_;  // eager runs before capture
    std::vector<int64_t> buckets_;
    int64_t graph_replays_ = 0;
};

}  // namespace deepshard::model::gpu
