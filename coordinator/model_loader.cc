#include "coordinator/model_loader.h"

#include <filesystem>

#include <spdlog/spdlog.h>

#include "model/checkpoint_files.h"

namespace deepshard::coordinator {

namespace fs = std::filesystem;

StatusOr<uint64_t> model_fingerprint(const std::string& dir, const model::ModelConfig& config) {
    if (!model::has_checkpoint_files(dir)) {
        return model::FingerprintBuilder(config.hash()).value();  // config only: no shard job matches it
    }
    // The checkpoint loader's own reader (headers only; no weight byte is read).
    DS_ASSIGN_OR_RETURN(model::CheckpointFiles files, model::open_checkpoint_files(dir));
    return model::checkpoint_fingerprint(files, config.hash());
}

StatusOr<LoadedModel> load_model(const std::string& dir, const std::string& name) {
    LoadedModel m;
    DS_ASSIGN_OR_RETURN(m.config, model::ModelConfig::load(dir));
    std::error_code ec;
    const fs::path tok = fs::path(dir) / "tokenizer.json";
    if (fs::exists(tok, ec)) {
        DS_ASSIGN_OR_RETURN(model::Tokenizer t, model::Tokenizer::load(dir));
        DS_RETURN_IF_ERROR(t.check_model_vocab(m.config.vocab_size, dir));
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
