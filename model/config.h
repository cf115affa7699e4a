// DeepSeek-V3 model configuration, read from a Hugging Face style config.json (MODEL_SPEC §1).
// Every size the engine uses comes from here; nothing assumes DeepSeek's published dimensions.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"

namespace deepshard::model {

struct RopeScaling {
    std::string type = "yarn";  // "yarn" or "none" (no rope_scaling in the file)
    double factor = 40.0;
    int64_t original_max_position_embeddings = 4096;
    double beta_fast = 32.0;
    double beta_slow = 1.0;
    double mscale = 1.0;
    double mscale_all_dim = 1.0;
};

struct QuantizationConfig {
    bool fp8 = false;  // quant_method "fp8", fmt "e4m3"
    int64_t block_rows = 128;
    int64_t block_cols = 128;
    std::string activation_scheme = "dynamic";
};

struct ModelConfig {
    // Field names follow the HF config.json.
    int64_t vocab_size = 0;
    int64_t hidden_size = 0;
    int64_t intermediate_size = 0;
    int64_t moe_intermediate_size = 0;
    int64_t num_hidden_layers = 0;
    int64_t first_k_dense_replace = 0;
    int64_t moe_layer_freq = 1;
    int64_t num_attention_heads = 0;
    int64_t num_key_value_heads = 0;  // ignored by MLA, kept for round-tripping
    int64_t n_routed_experts = 0;
    int64_t n_shared_experts = 0;
    int64_t num_experts_per_tok = 0;
    int64_t n_group = 1;
    int64_t topk_group = 1;
    std::string scoring_func = "sigmoid";
    std::string topk_method = "noaux_tc";
    bool norm_topk_prob = true;
    double routed_scaling_factor = 1.0;
    int64_t q_lora_rank = 0;  // 0 = no low-rank q path (wq directly)
    int64_t kv_lora_rank = 0;
    int64_t qk_nope_head_dim = 0;
    int64_t qk_rope_head_dim = 0;
    int64_t v_head_dim = 0;
    double rope_theta = 10000.0;
    RopeScaling rope_scaling;
    int64_t max_position_embeddings = 0;
    double rms_norm_eps = 1e-6;
    int64_t bos_token_id = 0;
    int64_t eos_token_id = 1;
    bool tie_word_embeddings = false;
    int64_t num_nextn_predict_layers = 0;
    std::string torch_dtype = "bfloat16";
    QuantizationConfig quantization;

    // Parses and validates (see validate()). `source` names the file in error messages.
    static StatusOr<ModelConfig> from_json(const nlohmann::json& j, const std::string& source = "config.json");
    static StatusOr<ModelConfig> load(const std::string& path);  // a config.json file or a model directory
    nlohmann::json to_json() const;

    // Checks every field: positive sizes, experts divisible by groups, topk_group <= n_group,
    // top-k <= experts in the kept groups, sane rope scaling, ...; the message names the field.
    Status validate() const;

    // Derived quantities.
    int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
    bool is_moe_layer(int64_t layer) const {
        return n_routed_experts > 0 && layer >= first_k_dense_replace && (layer % moe_layer_freq) == 0;
    }
    // YaRN attention factor m = 0.1 * mscale * ln(factor) + 1 (1 when factor <= 1 or no yarn).
    double yarn_mscale() const;
    // softmax scale = qk_head_dim^-0.5 * m^2 (MODEL_SPEC §2: always applied).
    double softmax_scale() const;
    // Per rope pair i (qk_rope_head_dim/2 of them): the YaRN-corrected inverse frequency.
    std::vector<float> rope_inv_freq() const;
    // Canonical hash of the fields that change the math (not the weights): part of the model fingerprint.
    uint64_t hash() const;
};

}  // namespace deepshard::model
