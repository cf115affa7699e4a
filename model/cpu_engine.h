// The CPU engine: the DeepSeek-V3 forward pass (MODEL_SPEC §2) on the CPU kernels of kernels/ over a
// ShardWeights. The residual stream, norms, router, attention and the KV cache are float32. With
// EngineOptions::numerics = exact the weight matmuls are float32 too: this engine is then the
// numerical reference (the golden tests hold it to the official float32 implementation) and the
// fallback where no GPU is present; fast multiplies BF16 where the CPU can. Weights stay FP8/BF16
// in the checkpoint mapping.
#pragma once

#include <memory>

#include "model/engine.h"
#include "model/kv_cache.h"

namespace deepshard::model {

class CpuEngine final : public Engine {
public:
    static StatusOr<std::unique_ptr<CpuEngine>> create(std::shared_ptr<const ShardWeights> weights,
                                                       const EngineOptions& options);
    ~CpuEngine() override;

    Device device() const override { return Device::kCpu; }
    StatusOr<LoadStats> prepare() override { return weights_->prefault(); }
    StatusOr<StepOutput> step(std::span<const SeqChunk> chunks, std::span<const float> hidden_in = {}) override;
    void release(uint64_t seq_id) override { kv_.blocks().release(seq_id); }
    KvUsage kv_usage() const override;
    KvBlockManager& kv_blocks() override { return kv_.blocks(); }
    bool has_mtp() const override { return weights_->mtp() != nullptr; }
    // model/cpu_engine_mtp.cc
    StatusOr<std::vector<std::vector<int32_t>>> mtp_draft(std::span<const MtpChunk> chunks) override;

    Status read_kv_rows(uint64_t seq_id, int64_t pos_begin, int64_t pos_end, std::vector<uint8_t>* out) const override;
    Status write_kv_rows(uint64_t seq_id, int64_t pos_begin, int64_t pos_end, std::span<const uint8_t> rows) override;

    // The cache itself (tests read slots to check kernels against the model's own state).
    const KvCache& kv_cache() const { return kv_; }

private:
    struct Scratch;
    CpuEngine(std::shared_ptr<const ShardWeights> weights, KvCache kv, kernels::Numerics numerics);
    void mla(const LayerWeights& L, const float* x, int64_t T, const int32_t* tok_pos, const int32_t* tok_row,
             const std::vector<int32_t>& tables, int32_t max_blocks, float* y);
    // One decoder block on the residual stream h [T, hidden] in place (attention + MLP/MoE).
    Status block(const LayerWeights& L, float* h, int64_t T, const int32_t* tok_pos, const int32_t* tok_row,
                 const std::vector<int32_t>& tables, int32_t max_blocks);
    void mlp(const MlpWeights& m, const float* x, int64_t T, float* y);
    Status moe(const LayerWeights& L, const float* x, int64_t T, float* y);

    KvCache kv_;
    kernels::Numerics numerics_;
    std::unique_ptr<Scratch> s_;
};

}  // namespace deepshard::model
