#include "topology/model_stats.h"

namespace deepshard::topology {

namespace {
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
}  // namespace

const char* dtype_path_name(DtypePath p) {
    switch (p) {
        case DtypePath::kFp8:
            return "fp8";
        case DtypePath::kFp8WeightOnly:
            return "fp8-weight-only";
        case DtypePath::kBf16:
            return "bf16";
    }
    return "?";
}

ModelStats::ModelStats(const model::ModelConfig& c, bool fp8_weights, model::KvStorage kv)
    : c_(c), fp8_(fp8_weights), kv_(kv) {}

double ModelStats::linear(int64_t out, int64_t in) const {
    if (out <= 0 || in <= 0) {
        return 0;
    }
    if (!fp8_) {
        return 2.0 * static_cast<double>(out) * static_cast<double>(in);
    }
    const int64_t br = c_.quantization.block_rows > 0 ? c_.quantization.block_rows : 128;
    const int64_t bc = c_.quantization.block_cols > 0 ? c_.quantization.block_cols : 128;
    return static_cast<double>(out) * static_cast<double>(in) + 4.0 * ceil_div(out, br) * ceil_div(in, bc);
}

double ModelStats::attention_bytes(int split) const {
    const int64_t H = c_.hidden_size, heads = c_.num_attention_heads / split;
    double b = 0;
    if (c_.q_lora_rank > 0) {
        b += linear(c_.q_lora_rank, H) + linear(heads * c_.qk_head_dim(), c_.q_lora_rank) + 2.0 * c_.q_lora_rank;
    } else {
        b += linear(heads * c_.qk_head_dim(), H);
    }
    b += linear(c_.kv_lora_rank + c_.qk_rope_head_dim, H) + 2.0 * c_.kv_lora_rank;
    b += linear(heads * (c_.qk_nope_head_dim + c_.v_head_dim), c_.kv_lora_rank);
    b += linear(H, heads * c_.v_head_dim);
    return b + layer_norm_bytes();
}

double ModelStats::dense_mlp_bytes(int split) const {
    const int64_t I = c_.intermediate_size / split;
    return 2 * linear(I, c_.hidden_size) + linear(c_.hidden_size, I);
}

double ModelStats::shared_bytes(int split) const {
    const int64_t I = c_.moe_intermediate_size * c_.n_shared_experts / split;
    return 2 * linear(I, c_.hidden_size) + linear(c_.hidden_size, I);
}

double ModelStats::expert_bytes() const {
    return 2 * linear(c_.moe_intermediate_size, c_.hidden_size) + linear(c_.hidden_size, c_.moe_intermediate_size);
}

double ModelStats::router_bytes() const {
    return 2.0 * c_.n_routed_experts * c_.hidden_size + 4.0 * c_.n_routed_experts;
}

double ModelStats::embed_bytes(int split) const { return 2.0 * (c_.vocab_size / split) * c_.hidden_size; }

double ModelStats::head_bytes(int split) const {
    return 2.0 * (c_.vocab_size / split) * c_.hidden_size + 2.0 * c_.hidden_size;
}

double ModelStats::layer_norm_bytes() const { return 2.0 * 2 * c_.hidden_size; }

int64_t ModelStats::num_moe_layers() const {
    int64_t n = 0;
    for (int64_t l = 0; l < c_.num_hidden_layers; ++l) {
        n += c_.is_moe_layer(l) ? 1 : 0;
    }
    return n;
}

double ModelStats::total_bytes() const {
    const int64_t moe = num_moe_layers();
    return c_.num_hidden_layers * attention_bytes(1) + num_dense_layers() * dense_mlp_bytes(1) +
           moe * (shared_bytes(1) + router_bytes() + c_.n_routed_experts * expert_bytes()) + embed_bytes(1) +
           head_bytes(1);
}

int64_t ModelStats::attention_params() const {
    const int64_t H = c_.hidden_size, heads = c_.num_attention_heads;
    int64_t p = c_.q_lora_rank > 0 ? c_.q_lora_rank * H + heads * c_.qk_head_dim() * c_.q_lora_rank
                                   : heads * c_.qk_head_dim() * H;
    p += (c_.kv_lora_rank + c_.qk_rope_head_dim) * H;
    p += heads * (c_.qk_nope_head_dim + c_.v_head_dim) * c_.kv_lora_rank;
    p += H * heads * c_.v_head_dim;
    return p;
}

int64_t ModelStats::dense_mlp_params() const { return 3 * c_.intermediate_size * c_.hidden_size; }
int64_t ModelStats::expert_params() const { return 3 * c_.moe_intermediate_size * c_.hidden_size; }
int64_t ModelStats::shared_params() const { return c_.n_shared_experts * expert_params(); }
int64_t ModelStats::router_params() const { return c_.n_routed_experts * c_.hidden_size; }
int64_t ModelStats::head_params() const { return c_.vocab_size * c_.hidden_size; }

int64_t ModelStats::total_params() const {
    const int64_t L = c_.num_hidden_layers, H = c_.hidden_size;
    const int64_t norms = (c_.q_lora_rank > 0 ? c_.q_lora_rank : 0) + c_.kv_lora_rank + 2 * H;
    return L * (attention_params() + norms) + num_dense_layers() * dense_mlp_params() +
           num_moe_layers() *
               (c_.n_routed_experts * expert_params() + shared_params() + router_params() + c_.n_routed_experts) +
           2 * head_params() + H;
}

int64_t ModelStats::active_params() const {
    return c_.num_hidden_layers * attention_params() + num_dense_layers() * dense_mlp_params() +
           num_moe_layers() * (c_.num_experts_per_tok * expert_params() + shared_params() + router_params()) +
           2 * head_params();
}

}  // namespace deepshard::topology
