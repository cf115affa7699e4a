#include "model/inspect.h"

#include <cinttypes>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <unordered_map>

#include "model/tokenizer/tokenizer.h"

namespace deepshard::model {
namespace {

constexpr TensorKind kKinds[] = {TensorKind::kEmbedding,  TensorKind::kAttention,    TensorKind::kDenseMlp,
                                 TensorKind::kExpert,     TensorKind::kSharedExpert, TensorKind::kRouter,
                                 TensorKind::kRouterBias, TensorKind::kNorm,         TensorKind::kHead,
                                 TensorKind::kMtpProj};

void add_to(CountRow* row, const TensorInfo& t, bool is_scale) {
    if (!is_scale) {
        row->tensors += 1;
        row->params += t.numel();
    }
    row->bytes += t.nbytes;
    row->bytes_by_dtype[t.dtype] += t.nbytes;
}

std::string human(double v, const char* unit = "") {
    const char* suffix[] = {"", "K", "M", "G", "T"};
    int i = 0;
    while (v >= 1000 && i < 4) {
        v /= 1000;
        ++i;
    }
    char buf[48];
    std::snprintf(buf, sizeof(buf), i == 0 ? "%.0f%s%s" : "%.2f%s%s", v, suffix[i], unit);
    return buf;
}

std::string params_str(int64_t p) { return human(static_cast<double>(p)); }
std::string bytes_str(uint64_t b) { return human(static_cast<double>(b), "B"); }

}  // namespace

ModelSummary summarize(const Checkpoint& ck) {
    const ModelConfig& c = ck.config();
    ModelSummary s;
    std::unordered_map<std::string, const ExpectedTensor*> expected;
    const std::vector<ExpectedTensor> list = expected_tensors(c);
    for (const auto& e : list) expected.emplace(e.name, &e);
    const int64_t all_layers = c.num_hidden_layers + c.num_nextn_predict_layers;  // MTP modules last
    s.layers.resize(static_cast<size_t>(all_layers));
    for (int64_t l = 0; l < all_layers; ++l) {
        s.layers[l].layer = l;
        s.layers[l].moe = c.is_moe_layer(l);
    }
    const std::string suffix = "_scale_inv";
    for (const TensorInfo& t : ck.tensors()) {
        std::string base = t.name;
        const bool is_scale =
            base.size() > suffix.size() && base.compare(base.size() - suffix.size(), suffix.size(), suffix) == 0;
        if (is_scale) {
            base.resize(base.size() - suffix.size());
        }
        add_to(&s.total, t, is_scale);
        add_to(&s.by_dtype[t.dtype], t, is_scale);
        auto it = expected.find(base);
        if (it == expected.end()) {
            add_to(&s.other, t, is_scale);
            s.other_names.push_back(t.name);
            continue;
        }
        const ExpectedTensor& e = *it->second;
        add_to(&s.by_kind[e.kind], t, is_scale);
        if (e.layer >= 0) {
            add_to(&s.layers[e.layer].by_kind[e.kind], t, is_scale);
            add_to(&s.layers[e.layer].total, t, is_scale);
        }
    }
    // Active parameters: a token uses top-k of the routed experts in each MoE layer.
    s.active_params = s.total.params;
    if (c.n_routed_experts > 0) {
        for (const auto& L : s.layers) {
            auto it = L.by_kind.find(TensorKind::kExpert);
            if (L.moe && it != L.by_kind.end()) {
                const int64_t per_expert = it->second.params / c.n_routed_experts;
                s.active_params -= per_expert * (c.n_routed_experts - c.num_experts_per_tok);
            }
        }
    }
    return s;
}

std::string format_summary(const Checkpoint& ck, const ModelSummary& s) {
    const ModelConfig& c = ck.config();
    std::ostringstream o;
    char line[256];
    int64_t moe_layers = 0;
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) moe_layers += c.is_moe_layer(l) ? 1 : 0;
    o << "model: " << ck.dir() << "\n";
    o << "  hidden " << c.hidden_size << ", layers " << c.num_hidden_layers << " (" << c.num_hidden_layers - moe_layers
      << " dense, " << moe_layers << " MoE), heads " << c.num_attention_heads << ", q_lora " << c.q_lora_rank
      << ", kv_lora " << c.kv_lora_rank << ", qk " << c.qk_nope_head_dim << "+" << c.qk_rope_head_dim << ", v "
      << c.v_head_dim << ", vocab " << c.vocab_size << "\n";
    if (moe_layers > 0) {
        o << "  experts " << c.n_routed_experts << " routed (top-" << c.num_experts_per_tok << ", " << c.n_group
          << " groups, keep " << c.topk_group << ") + " << c.n_shared_experts << " shared, width "
          << c.moe_intermediate_size << "; dense width " << c.intermediate_size << "\n";
    }
    o << "  weights: "
      << (c.quantization.fp8 ? "FP8 e4m3, " + std::to_string(c.quantization.block_rows) + "x" +
                                   std::to_string(c.quantization.block_cols) + " block scales"
                             : std::string("unquantized"))
      << "; " << ck.file_names().size() << " file(s), " << ck.tensors().size() << " tensors\n";
    std::snprintf(line, sizeof(line), "  fingerprint: %016" PRIx64 "\n\n", ck.fingerprint());
    o << line;

    std::snprintf(line, sizeof(line), "%-16s %8s %12s %12s  %s\n", "kind", "tensors", "params", "bytes", "by dtype");
    o << line;
    auto row = [&](const char* name, const CountRow& r) {
        std::string dt;
        for (const auto& [d, b] : r.bytes_by_dtype)
            dt += std::string(dt.empty() ? "" : ", ") + dtype_name(d) + " " + bytes_str(b);
        std::snprintf(line, sizeof(line), "%-16s %8" PRId64 " %12s %12s  %s\n", name, r.tensors,
                      params_str(r.params).c_str(), bytes_str(r.bytes).c_str(), dt.c_str());
        o << line;
    };
    for (TensorKind k : kKinds) {
        if (auto it = s.by_kind.find(k); it != s.by_kind.end()) {
            row(tensor_kind_name(k), it->second);
        }
    }
    if (s.other.tensors > 0) {
        row("other", s.other);
    }
    row("total", s.total);
    o << "active parameters per token: " << params_str(s.active_params) << " (" << s.active_params << ")\n\n";

    std::snprintf(line, sizeof(line), "%-8s %6s %12s", "dtype", "tensors", "bytes");
    o << line << "\n";
    for (const auto& [d, r] : s.by_dtype) {
        std::snprintf(line, sizeof(line), "%-8s %6" PRId64 " %12s\n", dtype_name(d), r.tensors,
                      bytes_str(r.bytes).c_str());
        o << line;
    }
    o << "\n";

    std::snprintf(line, sizeof(line), "%-6s %-6s %10s %10s %10s %10s %10s %10s %12s\n", "layer", "type", "attention",
                  "norms", "dense mlp", "router", "experts", "shared", "bytes");
    o << line;
    auto p = [](const LayerSummary& L, TensorKind k) {
        auto it = L.by_kind.find(k);
        int64_t v = it == L.by_kind.end() ? 0 : it->second.params;
        if (k == TensorKind::kRouter) {
            auto b = L.by_kind.find(TensorKind::kRouterBias);
            v += b == L.by_kind.end() ? 0 : b->second.params;
        }
        return params_str(v);
    };
    for (const auto& L : s.layers) {
        std::snprintf(line, sizeof(line), "%-6" PRId64 " %-6s %10s %10s %10s %10s %10s %10s %12s\n", L.layer,
                      L.moe ? "moe" : "dense", p(L, TensorKind::kAttention).c_str(), p(L, TensorKind::kNorm).c_str(),
                      p(L, TensorKind::kDenseMlp).c_str(), p(L, TensorKind::kRouter).c_str(),
                      p(L, TensorKind::kExpert).c_str(), p(L, TensorKind::kSharedExpert).c_str(),
                      bytes_str(L.total.bytes).c_str());
        o << line;
    }
    if (!s.other_names.empty()) {
        o << "\n" << s.other_names.size() << " tensor(s) the config does not imply, e.g. " << s.other_names[0] << "\n";
    }
    return o.str();
}

Status inspect_model(const std::string& dir, std::ostream& out) {
    DS_ASSIGN_OR_RETURN(auto ck, Checkpoint::open(dir));
    out << format_summary(*ck, summarize(*ck));
    DS_RETURN_IF_ERROR(ck->validate());
    // The tokenizer files are part of the model directory and validated with it: they must load
    // (ids in range, no duplicates) and fit the model's vocabulary.
    std::error_code ec;
    const bool has_tokenizer = std::filesystem::exists(std::filesystem::path(dir) / "tokenizer.json", ec);
    if (has_tokenizer) {
        DS_ASSIGN_OR_RETURN(Tokenizer tok, Tokenizer::load(dir));
        DS_RETURN_IF_ERROR(tok.check_model_vocab(ck->config().vocab_size, dir));
        out << "\ntokenizer: " << tok.vocab_size() << " ids (model vocabulary " << ck->config().vocab_size
            << "), BOS " << tok.bos_id() << ", EOS " << tok.eos_id() << "\n";
    } else {
        out << "\ntokenizer: none (only token-id prompts can be served)\n";
    }
    out << "\nvalidation: OK (every tensor the config implies is present with the right shape and dtype; FP8 "
           "scales present, shaped and finite"
        << (has_tokenizer ? "; tokenizer ids unique, in range and inside the vocabulary" : "; no tokenizer") << ")\n";
    return ok_status();
}

}  // namespace deepshard::model
