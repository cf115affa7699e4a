// ModelConfig: HF config.json <-> struct, validation and the derived RoPE/YaRN quantities.
// Parsing is strict about types (a field present with the wrong type is an error naming it) and
// lenient about presence (optional fields keep the HF/official defaults). nlohmann::json throws,
// so every access goes through helpers that convert to Status.
#include "model/config.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace deepshard::model {
namespace {

constexpr double kPi = 3.14159265358979323846;

Status field_error(const std::string& source, const std::string& field, const std::string& what) {
    return invalid_argument(source + ": field '" + field + "' " + what);
}

// Reads an integer field. Integral floats (4096.0) are accepted: some exporters write them.
Status get_int(const nlohmann::json& j, const char* key, int64_t* out, const std::string& source, bool required,
               const std::string& prefix = "") {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) {
        return required ? field_error(source, prefix + key, "is missing") : ok_status();
    }
    if (it->is_number_integer() || it->is_number_unsigned()) {
        if (it->is_number_unsigned() && it->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
            return field_error(source, prefix + key, "is out of range");
        }
        *out = it->get<int64_t>();
        return ok_status();
    }
    if (it->is_number_float()) {
        double d = it->get<double>();
        if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15) {
            *out = static_cast<int64_t>(d);
            return ok_status();
        }
    }
    return field_error(source, prefix + key, "must be an integer, got " + it->dump());
}

Status get_double(const nlohmann::json& j, const char* key, double* out, const std::string& source,
                  const std::string& prefix = "") {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) {
        return ok_status();
    }
    if (!it->is_number()) {
        return field_error(source, prefix + key, "must be a number, got " + it->dump());
    }
    *out = it->get<double>();
    if (!std::isfinite(*out)) {
        return field_error(source, prefix + key, "must be finite");
    }
    return ok_status();
}

Status get_bool(const nlohmann::json& j, const char* key, bool* out, const std::string& source) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) {
        return ok_status();
    }
    if (!it->is_boolean()) {
        return field_error(source, key, "must be true or false, got " + it->dump());
    }
    *out = it->get<bool>();
    return ok_status();
}

Status get_string(const nlohmann::json& j, const char* key, std::string* out, const std::string& source,
                  const std::string& prefix = "") {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) {
        return ok_status();
    }
    if (!it->is_string()) {
        return field_error(source, prefix + key, "must be a string, got " + it->dump());
    }
    *out = it->get<std::string>();
    return ok_status();
}

Status parse_rope_scaling(const nlohmann::json& j, RopeScaling* r, const std::string& source) {
    auto it = j.find("rope_scaling");
    if (it == j.end() || it->is_null()) {
        r->type = "none";
        return ok_status();
    }
    if (!it->is_object()) {
        return field_error(source, "rope_scaling", "must be an object or null");
    }
    const auto& rs = *it;
    const std::string p = "rope_scaling.";
    std::string type;
    DS_RETURN_IF_ERROR(get_string(rs, "type", &type, source, p));
    if (type.empty()) {
        DS_RETURN_IF_ERROR(get_string(rs, "rope_type", &type, source, p));
    }
    if (type.empty()) {
        return field_error(source, "rope_scaling.type", "is missing");
    }
    r->type = type;
    DS_RETURN_IF_ERROR(get_double(rs, "factor", &r->factor, source, p));
    DS_RETURN_IF_ERROR(get_int(rs, "original_max_position_embeddings", &r->original_max_position_embeddings, source,
                               false, p));
    DS_RETURN_IF_ERROR(get_double(rs, "beta_fast", &r->beta_fast, source, p));
    DS_RETURN_IF_ERROR(get_double(rs, "beta_slow", &r->beta_slow, source, p));
    DS_RETURN_IF_ERROR(get_double(rs, "mscale", &r->mscale, source, p));
    DS_RETURN_IF_ERROR(get_double(rs, "mscale_all_dim", &r->mscale_all_dim, source, p));
    return ok_status();
}

Status parse_quantization(const nlohmann::json& j, QuantizationConfig* q, const std::string& source) {
    auto it = j.find("quantization_config");
    if (it == j.end() || it->is_null()) {
        q->fp8 = false;
        return ok_status();
    }
    if (!it->is_object()) {
        return field_error(source, "quantization_config", "must be an object");
    }
    const auto& qc = *it;
    const std::string p = "quantization_config.";
    std::string method, fmt = "e4m3";
    DS_RETURN_IF_ERROR(get_string(qc, "quant_method", &method, source, p));
    if (method != "fp8") {
        return field_error(source, "quantization_config.quant_method", "must be \"fp8\", got \"" + method + "\"");
    }
    DS_RETURN_IF_ERROR(get_string(qc, "fmt", &fmt, source, p));
    if (fmt != "e4m3") {
        return field_error(source, "quantization_config.fmt", "must be \"e4m3\", got \"" + fmt + "\"");
    }
    DS_RETURN_IF_ERROR(get_string(qc, "activation_scheme", &q->activation_scheme, source, p));
    auto bs = qc.find("weight_block_size");
    if (bs != qc.end()) {
        if (!bs->is_array() || bs->size() != 2 || !(*bs)[0].is_number_integer() || !(*bs)[1].is_number_integer()) {
            return field_error(source, "quantization_config.weight_block_size", "must be two integers");
        }
        q->block_rows = (*bs)[0].get<int64_t>();
        q->block_cols = (*bs)[1].get<int64_t>();
    }
    q->fp8 = true;
    return ok_status();
}

double yarn_get_mscale(double factor, double mscale) {
    return factor <= 1.0 ? 1.0 : 0.1 * mscale * std::log(factor) + 1.0;
}

}  // namespace

StatusOr<ModelConfig> ModelConfig::from_json(const nlohmann::json& j, const std::string& source) {
    if (!j.is_object()) {
        return invalid_argument(source + ": the config must be a JSON object");
    }
    ModelConfig c;
    const std::string& s = source;
    DS_RETURN_IF_ERROR(get_int(j, "vocab_size", &c.vocab_size, s, true));
    DS_RETURN_IF_ERROR(get_int(j, "hidden_size", &c.hidden_size, s, true));
    DS_RETURN_IF_ERROR(get_int(j, "intermediate_size", &c.intermediate_size, s, false));
    DS_RETURN_IF_ERROR(get_int(j, "moe_intermediate_size", &c.moe_intermediate_size, s, false));
    DS_RETURN_IF_ERROR(get_int(j, "num_hidden_layers", &c.num_hidden_layers, s, true));
    DS_RETURN_IF_ERROR(get_int(j, "first_k_dense_replace", &c.first_k_dense_replace, s, false));
    DS_RETURN_IF_ERROR(get_int(j, "moe_layer_freq", &c.moe_layer_freq, s, false));
    DS_RETURN_IF_ERROR(get_int(j, "num_attention_heads", &c.num_attention_heads, s, true));
    c.num_key_value_heads = c.num_attention_heads;
    DS_RETURN_IF_ERROR(get_int(j, "num_key_value_heads", &c.num_key_value_heads, s, false));
    DS_RETURN_IF_ERROR(get_int(j, "n_routed_experts", &c.n_routed_experts, s, false));
    DS_RETURN_IF_ERROR(get_int(j, "n_shared_experts", &c.n_shared_experts, s, false));
    DS_RETURN_IF_ERROR(get_int(j, "num_experts_per_tok", &c.num_experts_per_tok, s, false));
    DS_RETURN_IF_ERROR(get_int(j, "n_group", &c.n_group, s, false));
    DS_RETURN_IF_ERROR(get_int(j, "topk_group", &c.topk_group, s, false));
    DS_RETURN_IF_ERROR(get_string(j, "scoring_func", &c.scoring_func, s));
    DS_RETURN_IF_ERROR(get_string(j, "topk_method", &c.topk_method, s));
    DS_RETURN_IF_ERROR(get_bool(j, "norm_topk_prob", &c.norm_topk_prob, s));
    DS_RETURN_IF_ERROR(get_double(j, "routed_scaling_factor", &c.routed_scaling_factor, s));
    DS_RETURN_IF_ERROR(get_int(j, "q_lora_rank", &c.q_lora_rank, s, false));
    DS_RETURN_IF_ERROR(get_int(j, "kv_lora_rank", &c.kv_lora_rank, s, true));
    DS_RETURN_IF_ERROR(get_int(j, "qk_nope_head_dim", &c.qk_nope_head_dim, s, true));
    DS_RETURN_IF_ERROR(get_int(j, "qk_rope_head_dim", &c.qk_rope_head_dim, s, true));
    DS_RETURN_IF_ERROR(get_int(j, "v_head_dim", &c.v_head_dim, s, true));
    DS_RETURN_IF_ERROR(get_double(j, "rope_theta", &c.rope_theta, s));
    DS_RETURN_IF_ERROR(parse_rope_scaling(j, &c.rope_scaling, s));
    DS_RETURN_IF_ERROR(get_int(j, "max_position_embeddings", &c.max_position_embeddings, s, true));
    DS_RETURN_IF_ERROR(get_double(j, "rms_norm_eps", &c.rms_norm_eps, s));
    DS_RETURN_IF_ERROR(get_int(j, "bos_token_id", &c.bos_token_id, s, false));
    // Some configs list several EOS ids; the first is the model's own.
    if (auto it = j.find("eos_token_id"); it != j.end() && it->is_array() && !it->empty()) {
        DS_RETURN_IF_ERROR(get_int(nlohmann::json{{"eos_token_id", (*it)[0]}}, "eos_token_id", &c.eos_token_id, s,
                                   false));
    } else {
        DS_RETURN_IF_ERROR(get_int(j, "eos_token_id", &c.eos_token_id, s, false));
    }
    DS_RETURN_IF_ERROR(get_bool(j, "tie_word_embeddings", &c.tie_word_embeddings, s));
    DS_RETURN_IF_ERROR(get_int(j, "num_nextn_predict_layers", &c.num_nextn_predict_layers, s, false));
    DS_RETURN_IF_ERROR(get_string(j, "torch_dtype", &c.torch_dtype, s));
    DS_RETURN_IF_ERROR(parse_quantization(j, &c.quantization, s));
    Status st = c.validate();
    if (!st.ok()) {
        return Status(st.code(), source + ": " + st.message());
    }
    return c;
}

StatusOr<ModelConfig> ModelConfig::load(const std::string& path) {
    namespace fs = std::filesystem;
    std::error_code ec;
    std::string file = path;
    if (fs::is_directory(path, ec)) {
        file = (fs::path(path) / "config.json").string();
    }
    std::ifstream in(file, std::ios::binary);
    if (!in) {
        return not_found("cannot open model config " + file);
    }
    std::stringstream ss;
    ss << in.rdbuf();
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(ss.str());
    } catch (const nlohmann::json::exception& e) {
        return invalid_argument(file + ": malformed JSON: " + e.what());
    }
    return from_json(j, file);
}

nlohmann::json ModelConfig::to_json() const {
    nlohmann::json j;
    j["architectures"] = {"DeepseekV3ForCausalLM"};
    j["model_type"] = "deepseek_v3";
    j["attention_bias"] = false;
    j["hidden_act"] = "silu";
    j["vocab_size"] = vocab_size;
    j["hidden_size"] = hidden_size;
    j["intermediate_size"] = intermediate_size;
    j["moe_intermediate_size"] = moe_intermediate_size;
    j["num_hidden_layers"] = num_hidden_layers;
    j["first_k_dense_replace"] = first_k_dense_replace;
    j["moe_layer_freq"] = moe_layer_freq;
    j["num_attention_heads"] = num_attention_heads;
    j["num_key_value_heads"] = num_key_value_heads;
    j["n_routed_experts"] = n_routed_experts;
    j["n_shared_experts"] = n_shared_experts;
    j["num_experts_per_tok"] = num_experts_per_tok;
    j["n_group"] = n_group;
    j["topk_group"] = topk_group;
    j["scoring_func"] = scoring_func;
    j["topk_method"] = topk_method;
    j["norm_topk_prob"] = norm_topk_prob;
    j["routed_scaling_factor"] = routed_scaling_factor;
    j["q_lora_rank"] = q_lora_rank == 0 ? nlohmann::json(nullptr) : nlohmann::json(q_lora_rank);
    j["kv_lora_rank"] = kv_lora_rank;
    j["qk_nope_head_dim"] = qk_nope_head_dim;
    j["qk_rope_head_dim"] = qk_rope_head_dim;
    j["v_head_dim"] = v_head_dim;
    j["rope_theta"] = rope_theta;
    if (rope_scaling.type == "none") {
        j["rope_scaling"] = nullptr;
    } else {
        j["rope_scaling"] = {
            {"type", rope_scaling.type},
            {"factor", rope_scaling.factor},
            {"original_max_position_embeddings", rope_scaling.original_max_position_embeddings},
            {"beta_fast", rope_scaling.beta_fast},
            {"beta_slow", rope_scaling.beta_slow},
            {"mscale", rope_scaling.mscale},
            {"mscale_all_dim", rope_scaling.mscale_all_dim},
        };
    }
    j["max_position_embeddings"] = max_position_embeddings;
    j["rms_norm_eps"] = rms_norm_eps;
    j["bos_token_id"] = bos_token_id;
    j["eos_token_id"] = eos_token_id;
    j["tie_word_embeddings"] = tie_word_embeddings;
    j["num_nextn_predict_layers"] = num_nextn_predict_layers;
    j["torch_dtype"] = torch_dtype;
    if (quantization.fp8) {
        j["quantization_config"] = {
            {"activation_scheme", quantization.activation_scheme},
            {"fmt", "e4m3"},
            {"quant_method", "fp8"},
            {"weight_block_size", {quantization.block_rows, quantization.block_cols}},
        };
    }
    return j;
}

Status ModelConfig::validate() const {
    auto positive = [](const char* field, int64_t v) -> Status {
        if (v <= 0) {
            return invalid_argument(std::string("field '") + field + "' must be positive, got " + std::to_string(v));
        }
        return ok_status();
    };
    auto non_negative = [](const char* field, int64_t v) -> Status {
        if (v < 0) {
            return invalid_argument(std::string("field '") + field + "' must be >= 0, got " + std::to_string(v));
        }
        return ok_status();
    };
    auto bad = [](const std::string& field, const std::string& what) {
        return invalid_argument("field '" + field + "' " + what);
    };
    DS_RETURN_IF_ERROR(positive("vocab_size", vocab_size));
    DS_RETURN_IF_ERROR(positive("hidden_size", hidden_size));
    DS_RETURN_IF_ERROR(positive("num_hidden_layers", num_hidden_layers));
    DS_RETURN_IF_ERROR(positive("num_attention_heads", num_attention_heads));
    DS_RETURN_IF_ERROR(non_negative("num_key_value_heads", num_key_value_heads));
    DS_RETURN_IF_ERROR(non_negative("q_lora_rank", q_lora_rank));
    DS_RETURN_IF_ERROR(positive("kv_lora_rank", kv_lora_rank));
    DS_RETURN_IF_ERROR(positive("qk_nope_head_dim", qk_nope_head_dim));
    DS_RETURN_IF_ERROR(positive("qk_rope_head_dim", qk_rope_head_dim));
    if (qk_rope_head_dim % 2 != 0) {
        return bad("qk_rope_head_dim", "must be even (RoPE rotates pairs), got " + std::to_string(qk_rope_head_dim));
    }
    DS_RETURN_IF_ERROR(positive("v_head_dim", v_head_dim));
    DS_RETURN_IF_ERROR(positive("max_position_embeddings", max_position_embeddings));
    DS_RETURN_IF_ERROR(positive("moe_layer_freq", moe_layer_freq));
    DS_RETURN_IF_ERROR(non_negative("first_k_dense_replace", first_k_dense_replace));
    if (first_k_dense_replace > num_hidden_layers) {
        return bad("first_k_dense_replace", "(" + std::to_string(first_k_dense_replace) +
                                                ") must be <= num_hidden_layers (" +
                                                std::to_string(num_hidden_layers) + ")");
    }
    DS_RETURN_IF_ERROR(non_negative("n_routed_experts", n_routed_experts));
    DS_RETURN_IF_ERROR(non_negative("n_shared_experts", n_shared_experts));
    DS_RETURN_IF_ERROR(non_negative("num_nextn_predict_layers", num_nextn_predict_layers));
    bool any_dense = false, any_moe = false;
    for (int64_t l = 0; l < num_hidden_layers; ++l) {
        (is_moe_layer(l) ? any_moe : any_dense) = true;
    }
    if (any_dense) {
        DS_RETURN_IF_ERROR(positive("intermediate_size", intermediate_size));
    }
    if (any_moe) {
        DS_RETURN_IF_ERROR(positive("moe_intermediate_size", moe_intermediate_size));
        DS_RETURN_IF_ERROR(positive("num_experts_per_tok", num_experts_per_tok));
        DS_RETURN_IF_ERROR(positive("n_group", n_group));
        DS_RETURN_IF_ERROR(positive("topk_group", topk_group));
        if (n_routed_experts % n_group != 0) {
            return bad("n_routed_experts", "(" + std::to_string(n_routed_experts) + ") must be divisible by n_group (" +
                                               std::to_string(n_group) + ")");
        }
        if (topk_group > n_group) {
            return bad("topk_group", "(" + std::to_string(topk_group) + ") must be <= n_group (" +
                                         std::to_string(n_group) + ")");
        }
        const int64_t eligible = topk_group * (n_routed_experts / n_group);
        if (num_experts_per_tok > eligible) {
            return bad("num_experts_per_tok", "(" + std::to_string(num_experts_per_tok) +
                                                  ") must be <= the experts in topk_group groups (" +
                                                  std::to_string(eligible) + ")");
        }
        if (scoring_func != "sigmoid" && scoring_func != "softmax") {
            return bad("scoring_func", "must be \"sigmoid\" or \"softmax\", got \"" + scoring_func + "\"");
        }
        if (topk_method != "noaux_tc" && topk_method != "greedy" && topk_method != "group_limited_greedy") {
            return bad("topk_method", "must be noaux_tc, greedy or group_limited_greedy, got \"" + topk_method + "\"");
        }
        if (!(routed_scaling_factor > 0)) {
            return bad("routed_scaling_factor", "must be positive");
        }
    }
    if (!(rope_theta > 0)) {
        return bad("rope_theta", "must be positive");
    }
    if (!(rms_norm_eps > 0)) {
        return bad("rms_norm_eps", "must be positive");
    }
    if (bos_token_id < 0 || bos_token_id >= vocab_size) {
        return bad("bos_token_id", "must be in [0, vocab_size)");
    }
    if (eos_token_id < 0 || eos_token_id >= vocab_size) {
        return bad("eos_token_id", "must be in [0, vocab_size)");
    }
    if (rope_scaling.type != "none") {
        if (rope_scaling.type != "yarn") {
            return bad("rope_scaling.type", "must be \"yarn\", got \"" + rope_scaling.type + "\"");
        }
        if (!(rope_scaling.factor >= 1.0)) {
            return bad("rope_scaling.factor", "must be >= 1");
        }
        if (!(rope_scaling.beta_slow > 0)) {
            return bad("rope_scaling.beta_slow", "must be positive");
        }
        if (!(rope_scaling.beta_fast > rope_scaling.beta_slow)) {
            return bad("rope_scaling.beta_fast", "must be greater than rope_scaling.beta_slow");
        }
        if (rope_scaling.original_max_position_embeddings <= 0) {
            return bad("rope_scaling.original_max_position_embeddings", "must be positive");
        }
        if (!(rope_scaling.mscale >= 0) || !(rope_scaling.mscale_all_dim >= 0)) {
            return bad("rope_scaling.mscale", "must be >= 0");
        }
    }
    if (quantization.fp8) {
        if (quantization.block_rows <= 0 || quantization.block_cols <= 0) {
            return bad("quantization_config.weight_block_size", "must be two positive integers");
        }
    }
    return ok_status();
}

// HF semantics (config.json is an HF file): the softmax multiplier uses mscale_all_dim; the
// official code uses `mscale`. DeepSeek-V3 sets both to 1.0.
double ModelConfig::yarn_mscale() const {
    if (rope_scaling.type != "yarn") {
        return 1.0;
    }
    return yarn_get_mscale(rope_scaling.factor, rope_scaling.mscale_all_dim);
}

double ModelConfig::softmax_scale() const {
    const double m = yarn_mscale();
    return std::pow(static_cast<double>(qk_head_dim()), -0.5) * m * m;
}

std::vector<float> ModelConfig::rope_inv_freq() const {
    const int64_t dim = qk_rope_head_dim;
    const int64_t half = dim / 2;
    const double base = rope_theta;
    std::vector<float> out(static_cast<size_t>(half));
    std::vector<double> f(static_cast<size_t>(half));
    for (int64_t i = 0; i < half; ++i) {
        f[i] = 1.0 / std::pow(base, static_cast<double>(2 * i) / static_cast<double>(dim));
    }
    if (rope_scaling.type == "yarn" && rope_scaling.factor > 1.0) {
        const double orig = static_cast<double>(rope_scaling.original_max_position_embeddings);
        auto corr = [&](double rot) {
            return static_cast<double>(dim) * std::log(orig / (rot * 2.0 * kPi)) / (2.0 * std::log(base));
        };
        double low = std::max(std::floor(corr(rope_scaling.beta_fast)), 0.0);
        double high = std::min(std::ceil(corr(rope_scaling.beta_slow)), static_cast<double>(dim - 1));
        if (high == low) {
            high += 0.001;  // as the official linear_ramp_factor: avoids a division by zero
        }
        for (int64_t i = 0; i < half; ++i) {
            double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
            f[i] = f[i] / rope_scaling.factor * ramp + f[i] * (1.0 - ramp);
        }
    }
    for (int64_t i = 0; i < half; ++i) {
        out[i] = static_cast<float>(f[i]);
    }
    return out;
}

uint64_t ModelConfig::hash() const {
    nlohmann::json j = to_json();
    // Fields that do not change the math are left out, so renaming tokens does not change identity.
    for (const char* k : {"bos_token_id", "eos_token_id", "num_key_value_heads", "torch_dtype", "architectures",
                          "model_type", "max_position_embeddings"}) {
        j.erase(k);
    }
    const std::string s = j.dump();  // keys are sorted: canonical
    uint64_t h = 1469598103934665603ull;
    for (unsigned char ch : s) {
        h = (h ^ ch) * 1099511628211ull;
    }
    return h;
}

}  // namespace deepshard::model
