#include "coordinator/model_loader.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "common/dtype.h"

namespace deepshard::coordinator {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

struct TensorMeta {
    DType dtype = DType::kF32;
    std::vector<int64_t> shape;
    uint64_t nbytes = 0;
};

// Reads only the 8-byte length and the JSON header of a safetensors file.
Status read_header(const fs::path& path, std::map<std::string, TensorMeta>* out) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return not_found("cannot open " + path.string());
    unsigned char len_bytes[8];
    if (!in.read(reinterpret_cast<char*>(len_bytes), 8)) return data_loss(path.string() + ": truncated header");
    uint64_t len = 0;
    for (int i = 7; i >= 0; --i) len = (len << 8) | len_bytes[i];
    if (len == 0 || len > (100u << 20)) {
        return data_loss(path.string() + ": implausible header length " + std::to_string(len));
    }
    std::string text(len, '\0');
    if (!in.read(text.data(), static_cast<std::streamsize>(len))) {
        return data_loss(path.string() + ": truncated header");
    }
    json h = json::parse(text, nullptr, false);
    if (!h.is_object()) return data_loss(path.string() + ": the header is not a JSON object");
    for (auto& [name, t] : h.items()) {
        if (name == "__metadata__") continue;
        if (!t.is_object() || !t.contains("dtype") || !t.contains("shape") || !t.contains("data_offsets") ||
            !t["dtype"].is_string() || !t["shape"].is_array() || !t["data_offsets"].is_array() ||
            t["data_offsets"].size() != 2) {
            return data_loss(path.string() + ": tensor " + name + " has a malformed header entry");
        }
        TensorMeta m;
        const auto dt = dtype_from_name(t["dtype"].get<std::string>());
        if (!dt) return data_loss(path.string() + ": tensor " + name + ": unknown dtype " + t["dtype"].dump());
        m.dtype = *dt;
        for (const auto& d : t["shape"]) {
            if (!d.is_number_integer()) return data_loss(path.string() + ": tensor " + name + ": bad shape");
            m.shape.push_back(d.get<int64_t>());
        }
        const auto& off = t["data_offsets"];
        if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned() ||
            off[1].get<uint64_t>() < off[0].get<uint64_t>()) {
            return data_loss(path.string() + ": tensor " + name + ": bad data_offsets");
        }
        m.nbytes = off[1].get<uint64_t>() - off[0].get<uint64_t>();
        (*out)[name] = std::move(m);
    }
    return ok_status();
}

}  // namespace

StatusOr<uint64_t> model_fingerprint(const std::string& dir, const model::ModelConfig& config) {
    std::vector<fs::path> files;
    const fs::path index = fs::path(dir) / "model.safetensors.index.json";
    const fs::path single = fs::path(dir) / "model.safetensors";
    std::error_code ec;
    if (fs::exists(index, ec)) {
        std::ifstream in(index);
        json j = json::parse(in, nullptr, false);
        if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object()) {
            return data_loss(index.string() + ": no weight_map object");
        }
        std::set<std::string> names;
        for (auto& [k, v] : j["weight_map"].items()) {
            if (!v.is_string()) return data_loss(index.string() + ": weight_map[" + k + "] is not a file name");
            names.insert(v.get<std::string>());
        }
        for (const auto& n : names) files.push_back(fs::path(dir) / n);
    } else if (fs::exists(single, ec)) {
        files.push_back(single);
    }
    std::map<std::string, TensorMeta> tensors;
    for (const auto& f : files) DS_RETURN_IF_ERROR(read_header(f, &tensors));
    // Must equal model::Checkpoint::fingerprint() (model/checkpoint.cc): FNV-1a over the config
    // hash, then per tensor in name order: name with its NUL, dtype, rank, dims, byte size (u64s
    // in native byte order).
    uint64_t h = 1469598103934665603ull;
    auto mix = [&h](const void* p, size_t n) {
        const auto* b = static_cast<const uint8_t*>(p);
        for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
    };
    auto mix_u64 = [&](uint64_t v) { mix(&v, sizeof(v)); };
    mix_u64(config.hash());
    for (const auto& [name, m] : tensors) {
        mix(name.c_str(), name.size() + 1);
        mix_u64(static_cast<uint64_t>(m.dtype));
        mix_u64(m.shape.size());
        for (auto d : m.shape) mix_u64(static_cast<uint64_t>(d));
        mix_u64(m.nbytes);
    }
    return h;
}

StatusOr<LoadedModel> load_model(const std::string& dir, const std::string& name) {
    LoadedModel m;
    DS_ASSIGN_OR_RETURN(m.config, model::ModelConfig::load(dir));
    std::error_code ec;
    const fs::path tok = fs::path(dir) / "tokenizer.json";
    if (fs::exists(tok, ec)) {
        DS_ASSIGN_OR_RETURN(model::Tokenizer t, model::Tokenizer::load(dir));
        DS_RETURN_IF_ERROR(t.check_fits(m.config.vocab_size).with_context(tok.string()));
        m.tokenizer = std::make_shared<const model::Tokenizer>(std::move(t));
    } else {
        spdlog::warn("{} has no tokenizer.json: only token-id prompts will be accepted", dir);
    }
    m.info.name = name;
    if (m.info.name.empty()) {
        fs::path p = fs::path(dir).lexically_normal();
        if (!p.has_filename()) p = p.parent_path();
        m.info.name = p.filename().string();
    }
    m.info.max_context = m.config.max_position_embeddings;
    m.info.vocab_size = m.config.vocab_size;
    m.info.bos_id = static_cast<int32_t>(m.config.bos_token_id);
    m.info.eos_id = static_cast<int32_t>(m.config.eos_token_id);
    if (m.tokenizer) {
        // The tokenizer's EOS is what ends a turn; config.json's normally agrees.
        m.info.eos_id = m.tokenizer->eos_id();
        m.info.bos_id = m.tokenizer->bos_id();
    }
    DS_ASSIGN_OR_RETURN(m.info.fingerprint, model_fingerprint(dir, m.config));
    return m;
}

}  // namespace deepshard::coordinator
