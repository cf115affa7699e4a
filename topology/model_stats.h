// Parameter, byte and KV accounting of a DeepSeek-V3 style model, from its config alone
// (MODEL_SPEC §7). The planner sizes every rank with it; the cost model reads the same numbers.
// Linear weights are counted exactly per matrix, including the FP32 128x128 block scales of FP8
// checkpoints; embeddings, head, norms and the router stay BF16 (FP32 for the router bias).
#pragma once

#include <cstdint>

#include "model/config.h"
#include "model/kv_format.h"

namespace deepshard::topology {

// How weights are stored and multiplied.
enum class DtypePath {
    kFp8,            // FP8 e4m3 block-scaled weights, FP8 tensor-core GEMMs (Hopper, sm_90)
    kFp8WeightOnly,  // FP8 weights kept in memory, dequantized to BF16 inside the GEMM (A100, CPU)
    kBf16,           // BF16 weights (a BF16 checkpoint, or FP8 upcast at load)
};
const char* dtype_path_name(DtypePath p);

class ModelStats {
public:
    // `fp8_weights`: linear weights are held in FP8 with block scales (else BF16). `kv`: how the
    // engine that runs the plan stores its latent KV cache (model/kv_format.h).
    ModelStats(const model::ModelConfig& c, bool fp8_weights, model::KvStorage kv = model::KvStorage::kBf16);

    const model::ModelConfig& config() const { return c_; }
    bool fp8_weights() const { return fp8_; }

    // Bytes one rank holds of each piece when it is split `split` ways (tensor parallel; 1 = whole).
    double attention_bytes(int split) const;  // one layer: q_a, kv_a replicated; q_b, kv_b, o split; norms
    double dense_mlp_bytes(int split) const;  // one dense layer's MLP (w1, w3 column-, w2 row-split)
    double shared_bytes(int split) const;     // one MoE layer's shared experts
    double expert_bytes() const;              // one routed expert (never split)
    double router_bytes() const;              // gate weight + correction bias of one MoE layer
    double embed_bytes(int split) const;      // vocab-parallel embedding rows
    double head_bytes(int split) const;       // vocab-parallel head rows + final norm
    double layer_norm_bytes() const;          // attn_norm + ffn_norm of one layer

    // The whole model (main layers; the MTP layer is not served), all experts, unsplit.
    double total_bytes() const;
    int64_t total_params() const;
    // Parameters one token touches: all attention, dense MLPs, k routed + shared experts, router, head.
    int64_t active_params() const;

    // Parameter counts of the pieces (for FLOPs: 2 per parameter per token).
    int64_t attention_params() const;  // one layer, excluding norms
    int64_t dense_mlp_params() const;
    int64_t expert_params() const;
    int64_t shared_params() const;
    int64_t router_params() const;
    int64_t head_params() const;

    int64_t num_moe_layers() const;
    int64_t num_dense_layers() const { return c_.num_hidden_layers - num_moe_layers(); }

    // Latent KV cache (MLA, absorbed form): (kv_lora_rank + qk_rope_head_dim) values per token per
    // layer, in the engine's storage (BF16 on CUDA fast numerics, float32 otherwise).
    model::KvStorage kv_storage() const { return kv_; }
    int64_t kv_bytes_per_token_layer() const { return model::kv_bytes_per_token_layer(c_, kv_); }

private:
    double linear(int64_t out, int64_t in) const;  // bytes of one [out, in] weight in this storage
    model::ModelConfig c_;
    bool fp8_;
    model::KvStorage kv_;
};

}  // namespace deepshard::topology
