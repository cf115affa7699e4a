// Tensor layout of a config, and the random-weight model generator. The generator is built for
// models larger than memory: every tensor is cut into chunks of whole FP8 row blocks, each chunk
// draws its values from its own RNG stream (seeded from the model seed, the tensor name and the
// chunk index, so the bytes do not depend on the thread count or schedule), and each chunk is
// written straight to its place in the pre-sized shard file with pwrite.
#include "model/make_model.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>

#include "common/logging.h"
#include "model/safetensors.h"
#include "model/tokenizer/tokenizer.h"

namespace deepshard::model {
namespace fs = std::filesystem;

const char* tensor_kind_name(TensorKind k) {
    switch (k) {
        case TensorKind::kEmbedding:
            return "embedding";
        case TensorKind::kHead:
            return "head";
        case TensorKind::kNorm:
            return "norms";
        case TensorKind::kAttention:
            return "attention";
        case TensorKind::kDenseMlp:
            return "dense mlp";
        case TensorKind::kRouter:
            return "router";
        case TensorKind::kRouterBias:
            return "router bias";
        case TensorKind::kExpert:
            return "experts";
        case TensorKind::kSharedExpert:
            return "shared experts";
        case TensorKind::kMtpProj:
            return "mtp projection";
    }
    return "?";
}

DType ExpectedTensor::dtype(const ModelConfig& c) const {
    if (quantizable()) {
        return c.quantization.fp8 ? DType::kF8E4M3 : DType::kBF16;
    }
    return kind == TensorKind::kRouterBias ? DType::kF32 : DType::kBF16;
}

std::vector<ExpectedTensor> expected_tensors(const ModelConfig& c) {
    std::vector<ExpectedTensor> out;
    auto add = [&](std::string name, std::vector<int64_t> shape, TensorKind kind, int64_t layer, int64_t expert = -1) {
        out.push_back(ExpectedTensor{std::move(name), std::move(shape), kind, layer, expert});
    };
    const int64_t H = c.hidden_size, heads = c.num_attention_heads;
    const int64_t qk = c.qk_nope_head_dim + c.qk_rope_head_dim;
    add("model.embed_tokens.weight", {c.vocab_size, H}, TensorKind::kEmbedding, -1);
    // Layers num_hidden_layers .. + num_nextn_predict_layers - 1 are the MTP modules (MODEL_SPEC §2,
    // the release's layer 61): a full decoder block plus the MTP-only tensors added below.
    const int64_t all_layers = c.num_hidden_layers + c.num_nextn_predict_layers;
    for (int64_t l = 0; l < all_layers; ++l) {
        const std::string p = "model.layers." + std::to_string(l) + ".";
        if (l >= c.num_hidden_layers) {
            // The release's names and order: its own copies of the embedding and head (so a last
            // pipeline stage can run it without the first stage's embedding), the two input norms,
            // the [H, 2H] projection of [enorm(embedding); hnorm(hidden)] (BF16: vLLM and SGLang
            // load it as an unquantized nn.Linear), and the head's norm.
            add(p + "embed_tokens.weight", {c.vocab_size, H}, TensorKind::kEmbedding, l);
            add(p + "enorm.weight", {H}, TensorKind::kNorm, l);
            add(p + "hnorm.weight", {H}, TensorKind::kNorm, l);
            add(p + "eh_proj.weight", {H, 2 * H}, TensorKind::kMtpProj, l);
            add(p + "shared_head.norm.weight", {H}, TensorKind::kNorm, l);
            add(p + "shared_head.head.weight", {c.vocab_size, H}, TensorKind::kHead, l);
        }
        add(p + "input_layernorm.weight", {H}, TensorKind::kNorm, l);
        add(p + "post_attention_layernorm.weight", {H}, TensorKind::kNorm, l);
        const std::string a = p + "self_attn.";
        if (c.q_lora_rank > 0) {
            add(a + "q_a_proj.weight", {c.q_lora_rank, H}, TensorKind::kAttention, l);
            add(a + "q_a_layernorm.weight", {c.q_lora_rank}, TensorKind::kNorm, l);
            add(a + "q_b_proj.weight", {heads * qk, c.q_lora_rank}, TensorKind::kAttention, l);
        } else {
            add(a + "q_proj.weight", {heads * qk, H}, TensorKind::kAttention, l);
        }
        add(a + "kv_a_proj_with_mqa.weight", {c.kv_lora_rank + c.qk_rope_head_dim, H}, TensorKind::kAttention, l);
        add(a + "kv_a_layernorm.weight", {c.kv_lora_rank}, TensorKind::kNorm, l);
        add(a + "kv_b_proj.weight", {heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank},
            TensorKind::kAttention, l);
        add(a + "o_proj.weight", {H, heads * c.v_head_dim}, TensorKind::kAttention, l);
        const std::string m = p + "mlp.";
        auto add_mlp = [&](const std::string& q, int64_t inter, TensorKind kind, int64_t e) {
            add(q + "gate_proj.weight", {inter, H}, kind, l, e);
            add(q + "up_proj.weight", {inter, H}, kind, l, e);
            add(q + "down_proj.weight", {H, inter}, kind, l, e);
        };
        if (!c.is_moe_layer(l)) {
            add_mlp(m, c.intermediate_size, TensorKind::kDenseMlp, -1);
            continue;
        }
        add(m + "gate.weight", {c.n_routed_experts, H}, TensorKind::kRouter, l);
        add(m + "gate.e_score_correction_bias", {c.n_routed_experts}, TensorKind::kRouterBias, l);
        for (int64_t e = 0; e < c.n_routed_experts; ++e) {
            add_mlp(m + "experts." + std::to_string(e) + ".", c.moe_intermediate_size, TensorKind::kExpert, e);
        }
        if (c.n_shared_experts > 0) {
            add_mlp(m + "shared_experts.", c.moe_intermediate_size * c.n_shared_experts, TensorKind::kSharedExpert, -1);
        }
    }
    add("model.norm.weight", {H}, TensorKind::kNorm, -1);
    if (!c.tie_word_embeddings) {
        add("lm_head.weight", {c.vocab_size, H}, TensorKind::kHead, -1);
    }
    return out;
}

std::string scale_name(const std::string& weight_name) { return weight_name + "_scale_inv"; }

std::vector<int64_t> scale_shape(const ModelConfig& c, int64_t rows, int64_t cols) {
    const int64_t br = c.quantization.block_rows, bc = c.quantization.block_cols;
    return {(rows + br - 1) / br, (cols + bc - 1) / bc};
}

int64_t count_parameters(const ModelConfig& c) {
    int64_t n = 0;
    for (const auto& t : expected_tensors(c)) n += t.numel();
    return n;
}

// ---- Presets and overrides ----

StatusOr<ModelConfig> preset_config(const std::string& name) {
    ModelConfig c;
    c.max_position_embeddings = 163840;
    c.first_k_dense_replace = 1;
    c.n_shared_experts = 1;
    c.routed_scaling_factor = 2.5;
    c.quantization.fp8 = true;
    if (name == "tiny") {  // testdata/golden/tiny-bf16's shape
        c.vocab_size = 4096;
        c.hidden_size = 256;
        c.num_hidden_layers = 4;
        c.num_attention_heads = 8;
        c.q_lora_rank = 96;
        c.kv_lora_rank = 64;
        c.qk_nope_head_dim = 32;
        c.qk_rope_head_dim = 16;
        c.v_head_dim = 32;
        c.intermediate_size = 512;
        c.moe_intermediate_size = 128;
        c.n_routed_experts = 16;
        c.num_experts_per_tok = 4;
        c.n_group = 4;
        c.topk_group = 2;
        c.max_position_embeddings = 4096;
    } else if (name == "small") {  // the real vocabulary, so the DeepSeek-V3 tokenizer fits
        c.vocab_size = 129280;
        c.hidden_size = 1024;
        c.num_hidden_layers = 6;
        c.num_attention_heads = 16;
        c.q_lora_rank = 384;
        c.kv_lora_rank = 256;
        c.qk_nope_head_dim = 64;
        c.qk_rope_head_dim = 32;
        c.v_head_dim = 64;
        c.intermediate_size = 2816;
        c.moe_intermediate_size = 256;
        c.n_routed_experts = 32;
        c.num_experts_per_tok = 4;
        c.n_group = 4;
        c.topk_group = 2;
    } else if (name == "medium") {  // >= 1B parameters
        c.vocab_size = 129280;
        c.hidden_size = 2048;
        c.num_hidden_layers = 12;
        c.num_attention_heads = 16;
        c.q_lora_rank = 768;
        c.kv_lora_rank = 512;
        c.qk_nope_head_dim = 128;
        c.qk_rope_head_dim = 64;
        c.v_head_dim = 128;
        c.intermediate_size = 5632;
        c.moe_intermediate_size = 256;
        c.n_routed_experts = 64;
        c.num_experts_per_tok = 6;
        c.n_group = 8;
        c.topk_group = 4;
    } else {
        return invalid_argument("unknown preset '" + name + "' (expected tiny, small or medium)");
    }
    c.num_key_value_heads = c.num_attention_heads;
    DS_RETURN_IF_ERROR(c.validate().with_context("preset " + name));
    return c;
}

Status apply_override(ModelConfig* c, const std::string& key_value) {
    const auto eq = key_value.find('=');
    if (eq == std::string::npos || eq == 0) {
        return invalid_argument("--set '" + key_value + "': expected key=value");
    }
    const std::string key = key_value.substr(0, eq), text = key_value.substr(eq + 1);
    nlohmann::json value = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (value.is_discarded()) {
        value = text;  // a bare word: a string field such as scoring_func=softmax
    }
    nlohmann::json j = c->to_json();
    nlohmann::json* node = &j;
    size_t start = 0;
    for (;;) {
        const auto dot = key.find('.', start);
        const std::string part = key.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
        if (!node->is_object() || !node->contains(part)) {
            return invalid_argument("--set " + key + ": unknown config field '" + key.substr(0, dot) + "'");
        }
        node = &(*node)[part];
        if (dot == std::string::npos) {
            break;
        }
        start = dot + 1;
    }
    *node = value;
    DS_ASSIGN_OR_RETURN(*c, ModelConfig::from_json(j, "--set " + key_value));
    return ok_status();
}

// ---- Deterministic random numbers ----
namespace {

uint64_t fnv1a(const std::string& s) {
    uint64_t h = 1469598103934665603ull;
    for (unsigned char ch : s) h = (h ^ ch) * 1099511628211ull;
    return h;
}

uint64_t splitmix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

// N(0,1) by Box-Muller over mt19937_64, whose output sequence the standard fixes;
// std::normal_distribution's algorithm is implementation-defined, so it is not used.
class NormalRng {
public:
    explicit NormalRng(uint64_t seed) : gen_(seed) {}
    double next() {
        if (have_spare_) {
            have_spare_ = false;
            return spare_;
        }
        const double u1 = static_cast<double>((gen_() >> 11) + 1) * 0x1p-53;  // (0, 1]
        const double u2 = static_cast<double>(gen_() >> 11) * 0x1p-53;        // [0, 1)
        const double r = std::sqrt(-2.0 * std::log(u1));
        const double t = 6.283185307179586476925286766559 * u2;
        spare_ = r * std::sin(t);
        have_spare_ = true;
        return r * std::cos(t);
    }

private:
    std::mt19937_64 gen_;
    bool have_spare_ = false;
    double spare_ = 0;
};

// How a tensor's values are drawn (MODEL_SPEC-style init, see the golden README).
void init_params(const ExpectedTensor& t, double* mean, double* stddev) {
    switch (t.kind) {
        case TensorKind::kEmbedding:
            *mean = 0;
            *stddev = 1;
            return;
        case TensorKind::kNorm:
            *mean = 1;
            *stddev = 0.1;
            return;
        case TensorKind::kRouterBias:
            *mean = 0;
            *stddev = 0.1;
            return;
        default:  // linear layers: N(0,1)/sqrt(fan_in) keeps activations of order 1
            *mean = 0;
            *stddev = 1.0 / std::sqrt(static_cast<double>(t.shape.back()));
            return;
    }
}

}  // namespace

void quantize_fp8_blocks(
    const float* w, int64_t rows, int64_t cols, int64_t block_rows, int64_t block_cols, uint8_t* q, float* scale) {
    const int64_t nrb = (rows + block_rows - 1) / block_rows, ncb = (cols + block_cols - 1) / block_cols;
    for (int64_t rb = 0; rb < nrb; ++rb) {
        const int64_t r0 = rb * block_rows, r1 = std::min(rows, r0 + block_rows);
        for (int64_t cb = 0; cb < ncb; ++cb) {
            const int64_t c0 = cb * block_cols, c1 = std::min(cols, c0 + block_cols);
            float amax = 0;
            for (int64_t r = r0; r < r1; ++r) {
                for (int64_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(w[r * cols + c]));
            }
            const float s = amax / 448.0f;
            scale[rb * ncb + cb] = s;
            for (int64_t r = r0; r < r1; ++r) {
                for (int64_t c = c0; c < c1; ++c) {
                    q[r * cols + c] = s > 0 ? f32_to_e4m3(w[r * cols + c] / s) : 0;
                }
            }
        }
    }
}

// ---- The generator ----
namespace {

struct ShardPlan {
    std::string file;
    std::vector<safetensors::TensorSpec> specs;
    std::vector<size_t> tensors;  // expected-tensor index of each unit in this shard
};

// One piece of work: rows [row0, row0 + rows) of one tensor.
struct Chunk {
    size_t tensor;  // index into the expected list
    int shard;
    size_t spec;         // index of the weight in the shard's specs
    int64_t scale_spec;  // index of its scale, or -1
    int64_t row0, rows, index;
};

// Splits units (tensor + its scale) into `n` contiguous, non-empty shards of about equal bytes.
std::vector<int> assign_shards(const std::vector<uint64_t>& unit_bytes, int n) {
    const size_t units = unit_bytes.size();
    std::vector<int> shard_of(units, 0);
    uint64_t remaining = 0;
    for (auto b : unit_bytes) remaining += b;
    int k = 0;
    uint64_t cur = 0, target = remaining / static_cast<uint64_t>(n);
    size_t in_shard = 0;
    for (size_t i = 0; i < units; ++i) {
        const size_t shards_after = static_cast<size_t>(n - k - 1);
        const bool must_close = in_shard > 0 && shards_after > 0 && units - i == shards_after;
        const bool overshoot = in_shard > 0 && shards_after > 0 && cur + unit_bytes[i] > target &&
                               cur + unit_bytes[i] - target > target - std::min(cur, target);
        if (must_close || overshoot) {
            remaining -= cur;
            ++k;
            target = remaining / static_cast<uint64_t>(n - k);
            cur = 0;
            in_shard = 0;
        }
        shard_of[i] = k;
        cur += unit_bytes[i];
        ++in_shard;
    }
    return shard_of;
}

std::string shard_file_name(int k, int n) {
    if (n == 1) {
        return "model.safetensors";
    }
    char buf[64];
    std::snprintf(buf, sizeof(buf), "model-%05d-of-%05d.safetensors", k + 1, n);
    return buf;
}

Status remove_stale_files(const std::string& dir) {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec)) {
        const std::string n = e.path().filename().string();
        const bool shard = n.rfind("model-", 0) == 0 && n.find("-of-") != std::string::npos && n.size() > 12 &&
                           n.compare(n.size() - 12, 12, ".safetensors") == 0;
        if (shard || n == "model.safetensors" || n == "model.safetensors.index.json") {
            fs::remove(e.path(), ec);
            if (ec) {
                return io_error("cannot remove stale " + e.path().string() + ": " + ec.message());
            }
        }
    }
    if (ec) {
        return io_error("cannot list " + dir + ": " + ec.message());
    }
    return ok_status();
}

Status write_text(const std::string& path, const std::string& text) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << text;
    out.close();
    if (!out) {
        return io_error("cannot write " + path);
    }
    return ok_status();
}

template <typename T>
Status write_vec(const safetensors::FileWriter& w, size_t spec, uint64_t offset, const std::vector<T>& v) {
    return w.write(spec, offset, v.data(), v.size() * sizeof(T));
}

// The name whose random stream a tensor's values come from: its own, except the MTP module's
// copies of the embedding and head, which hold the same values as the main ones (the release
// ships copies too), so drafting embeds and predicts in the main model's vocabulary space.
std::string value_name(const ModelConfig& c, const ExpectedTensor& t, MakeModelOptions::MtpInit init) {
    if (t.layer >= c.num_hidden_layers && t.kind == TensorKind::kEmbedding) return "model.embed_tokens.weight";
    if (t.layer >= c.num_hidden_layers && t.kind == TensorKind::kHead) return "lm_head.weight";
    if (init == MakeModelOptions::MtpInit::kMirror && t.layer >= c.num_hidden_layers) {
        const std::string p = "model.layers." + std::to_string(t.layer) + ".";
        if (t.name == p + "shared_head.norm.weight") return "model.norm.weight";
        // The block's tensors: the same name one layer down (the last main layer; same shapes when
        // both are MoE or both dense).
        return "model.layers." + std::to_string(c.num_hidden_layers - 1) + "." + t.name.substr(p.size());
    }
    return t.name;
}

// kMirror's constant MTP tensors (enorm = 1, eh_proj = [I | 0]); false for every other tensor.
bool mirror_constant(const ModelConfig& c, const ExpectedTensor& t, const Chunk& ch, std::vector<float>* v) {
    if (t.layer < c.num_hidden_layers) return false;
    const std::string p = "model.layers." + std::to_string(t.layer) + ".";
    if (t.name == p + "enorm.weight") {
        std::fill(v->begin(), v->end(), 1.0f);
        return true;
    }
    if (t.name == p + "eh_proj.weight") {
        const int64_t cols = t.shape.back();
        std::fill(v->begin(), v->end(), 0.0f);
        for (int64_t r = 0; r < ch.rows; ++r) (*v)[static_cast<size_t>(r * cols + ch.row0 + r)] = 1.0f;
        return true;
    }
    return false;
}

Status run_chunk(const ModelConfig& c, const ExpectedTensor& t, const Chunk& ch, const MakeModelOptions& opt,
                 const safetensors::FileWriter& w) {
    const int64_t cols = t.shape.back();
    const int64_t n = ch.rows * cols;
    NormalRng rng(splitmix64(splitmix64(opt.seed ^ fnv1a(value_name(c, t, opt.mtp_init))) +
                             static_cast<uint64_t>(ch.index)));
    double mean = 0, stddev = 1;
    init_params(t, &mean, &stddev);
    std::vector<float> v(static_cast<size_t>(n));
    if (opt.mtp_init != MakeModelOptions::MtpInit::kMirror || !mirror_constant(c, t, ch, &v)) {
        for (auto& x : v) x = static_cast<float>(mean + stddev * rng.next());
    }
    const DType dt = t.dtype(c);
    const auto first = static_cast<uint64_t>(ch.row0 * cols);
    switch (dt) {
        case DType::kF8E4M3: {
            const int64_t br = c.quantization.block_rows, bc = c.quantization.block_cols;
            const int64_t ncb = (cols + bc - 1) / bc, nrb = (ch.rows + br - 1) / br;
            std::vector<uint8_t> q(static_cast<size_t>(n));
            std::vector<float> s(static_cast<size_t>(nrb * ncb));
            quantize_fp8_blocks(v.data(), ch.rows, cols, br, bc, q.data(), s.data());
            DS_RETURN_IF_ERROR(write_vec(w, ch.spec, first, q));
            return write_vec(w, static_cast<size_t>(ch.scale_spec),
                             static_cast<uint64_t>((ch.row0 / br) * ncb) * sizeof(float), s);
        }
        case DType::kBF16: {
            std::vector<uint16_t> b(v.size());
            for (size_t i = 0; i < v.size(); ++i) b[i] = f32_to_bf16(v[i]);
            return write_vec(w, ch.spec, first * 2, b);
        }
        case DType::kF32:
            return write_vec(w, ch.spec, first * 4, v);
        default:
            return internal_error("make-model: unexpected dtype for " + t.name);
    }
}

}  // namespace

int64_t vocab_for_tokenizer(int64_t tokenizer_ids) { return (tokenizer_ids + 127) / 128 * 128; }

StatusOr<MakeModelResult> make_model(const ModelConfig& c, const std::string& out_dir, const MakeModelOptions& opt) {
    DS_RETURN_IF_ERROR(c.validate());
    for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) {
        if (!opt.tokenizer_dir.empty() && !fs::is_regular_file(fs::path(opt.tokenizer_dir) / f)) {
            return not_found("--tokenizer " + opt.tokenizer_dir + ": no " + f + " there");
        }
    }
    if (!opt.tokenizer_dir.empty()) {
        // Never write a model its own tokenizer overflows: every request would fail on the first id
        // past the embedding.
        DS_ASSIGN_OR_RETURN(Tokenizer tok, Tokenizer::load(opt.tokenizer_dir));
        DS_RETURN_IF_ERROR(tok.check_model_vocab(c.vocab_size, "make-model " + out_dir));
    }
    const auto t0 = std::chrono::steady_clock::now();
    std::error_code ec;
    fs::create_directories(out_dir, ec);
    if (ec || !fs::is_directory(out_dir)) {
        return io_error("cannot create output directory " + out_dir + (ec ? ": " + ec.message() : ""));
    }
    DS_RETURN_IF_ERROR(remove_stale_files(out_dir));

    const std::vector<ExpectedTensor> tensors = expected_tensors(c);
    std::vector<uint64_t> unit_bytes;
    uint64_t total = 0;
    for (const auto& t : tensors) {
        uint64_t b = static_cast<uint64_t>(t.numel()) * dtype_size(t.dtype(c));
        if (t.dtype(c) == DType::kF8E4M3) {
            auto s = scale_shape(c, t.shape[0], t.shape[1]);
            b += static_cast<uint64_t>(s[0] * s[1]) * 4;
        }
        unit_bytes.push_back(b);
        total += b;
    }
    int n = opt.shards;
    if (n <= 0) {
        n = static_cast<int>(std::max<uint64_t>(3, (total + 1999999999ull) / 2000000000ull));
    }
    n = std::min<int>(n, static_cast<int>(tensors.size()));
    const std::vector<int> shard_of = assign_shards(unit_bytes, n);

    // Shard contents in model order; each FP8 weight is followed by its scale.
    std::vector<ShardPlan> plans(static_cast<size_t>(n));
    for (int k = 0; k < n; ++k) plans[k].file = shard_file_name(k, n);
    for (size_t i = 0; i < tensors.size(); ++i) {
        const auto& t = tensors[i];
        ShardPlan& p = plans[static_cast<size_t>(shard_of[i])];
        p.tensors.push_back(i);
        p.specs.push_back({t.name, t.dtype(c), t.shape});
        if (t.dtype(c) == DType::kF8E4M3) {
            p.specs.push_back({scale_name(t.name), DType::kF32, scale_shape(c, t.shape[0], t.shape[1])});
        }
    }
    // Safetensors data has no padding, so an odd-sized FP8 tensor would leave the next F32 scale
    // misaligned. When a shard would have that, order its data by element size instead (as the
    // reference writer always does).
    for (ShardPlan& p : plans) {
        uint64_t off = 0;
        bool aligned = true;
        for (const auto& s : p.specs) {
            aligned = aligned && off % dtype_size(s.dtype) == 0;
            off += s.nbytes();
        }
        if (!aligned) {
            std::stable_sort(p.specs.begin(), p.specs.end(),
                             [](const auto& a, const auto& b) { return dtype_size(a.dtype) > dtype_size(b.dtype); });
        }
    }
    std::vector<std::unique_ptr<safetensors::FileWriter>> writers;
    nlohmann::json weight_map = nlohmann::json::object();
    std::vector<Chunk> chunks;
    for (int k = 0; k < n; ++k) {
        ShardPlan& p = plans[static_cast<size_t>(k)];
        std::map<std::string, size_t> spec_index;
        for (size_t s = 0; s < p.specs.size(); ++s) {
            spec_index[p.specs[s].name] = s;
            weight_map[p.specs[s].name] = p.file;
        }
        for (size_t ti : p.tensors) {
            const auto& t = tensors[ti];
            const int64_t rows = t.shape.size() == 2 ? t.shape[0] : 1;
            const bool fp8 = t.dtype(c) == DType::kF8E4M3;
            const int64_t br = c.quantization.block_rows;
            const int64_t step = fp8 ? br * std::max<int64_t>(1, 128 / br) : 128;
            const int64_t scale_spec = fp8 ? static_cast<int64_t>(spec_index.at(scale_name(t.name))) : -1;
            for (int64_t r = 0, idx = 0; r < rows; r += step, ++idx) {
                chunks.push_back({ti, k, spec_index.at(t.name), scale_spec, r, std::min(step, rows - r), idx});
            }
        }
        DS_ASSIGN_OR_RETURN(auto w, safetensors::FileWriter::create((fs::path(out_dir) / p.file).string(), p.specs,
                                                                    {{"format", "pt"}}));
        writers.push_back(std::move(w));
    }

    ThreadPool& pool = opt.pool != nullptr ? *opt.pool : ThreadPool::global();
    std::atomic<size_t> next{0};
    std::atomic<uint64_t> done_bytes{0};
    std::atomic<int> logged_tenths{0};
    std::mutex err_mu;
    Status first_error;
    std::atomic<bool> failed{false};
    pool.parallel_for(pool.size(), [&](int64_t, int64_t) {
        for (size_t i = next++; i < chunks.size() && !failed.load(); i = next++) {
            const Chunk& ch = chunks[i];
            const ExpectedTensor& t = tensors[ch.tensor];
            Status s = run_chunk(c, t, ch, opt, *writers[static_cast<size_t>(ch.shard)]);
            if (!s.ok()) {
                std::lock_guard<std::mutex> lock(err_mu);
                if (first_error.ok()) {
                    first_error = s;
                }
                failed = true;
                return;
            }
            const uint64_t rows = t.shape.size() == 2 ? static_cast<uint64_t>(t.shape[0]) : 1;
            const uint64_t d = done_bytes += unit_bytes[ch.tensor] * static_cast<uint64_t>(ch.rows) / rows;
            const int tenths = static_cast<int>(d * 10 / std::max<uint64_t>(total, 1));
            int prev = logged_tenths.load();
            if (opt.progress && tenths > prev && logged_tenths.compare_exchange_strong(prev, tenths)) {
                spdlog::info("make-model: {}% ({:.2f} of {:.2f} GB)", tenths * 10, d / 1e9, total / 1e9);
            }
        }
    });
    DS_RETURN_IF_ERROR(first_error);
    MakeModelResult result;
    for (auto& w : writers) {
        DS_RETURN_IF_ERROR(w->finish());
        result.files.push_back(fs::path(w->path()).filename().string());
    }
    nlohmann::json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    DS_RETURN_IF_ERROR(write_text((fs::path(out_dir) / "model.safetensors.index.json").string(), index.dump(2) + "\n"));
    DS_RETURN_IF_ERROR(write_text((fs::path(out_dir) / "config.json").string(), c.to_json().dump(2) + "\n"));
    if (!opt.tokenizer_dir.empty()) {
        for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) {
            const fs::path src = fs::path(opt.tokenizer_dir) / f;
            fs::copy_file(src, fs::path(out_dir) / f, fs::copy_options::overwrite_existing, ec);
            if (ec) {
                return io_error("--tokenizer: cannot copy " + src.string() + ": " + ec.message());
            }
        }
    }
    result.parameters = count_parameters(c);
    result.bytes = total;
    result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return result;
}

}  // namespace deepshard::model
