// What the coordinator knows about the model it serves: config.json, the tokenizer (when the model
// directory has one) and the model fingerprint. It reads the safetensors *headers* only (for the
// fingerprint), never a weight byte.
#pragma once

#include <memory>
#include <string>

#include "common/status.h"
#include "coordinator/engine.h"
#include "model/config.h"
#include "model/tokenizer/tokenizer.h"

namespace deepshard::coordinator {

struct LoadedModel {
    ModelInfo info;
    model::ModelConfig config;
    std::shared_ptr<const model::Tokenizer> tokenizer;  // null when the directory has no tokenizer.json
};

// `name` overrides the model id clients use (default: the directory's base name).
StatusOr<LoadedModel> load_model(const std::string& dir, const std::string& name = "");

// The fingerprint the shard job's leader sends in Hello (model::Checkpoint::fingerprint()), computed
// by the same reader (model/checkpoint_files.h) from config.json and the safetensors headers. A
// directory without weights gets the config-only hash (no shard job can match it); a malformed
// index or header is an error naming the file.
StatusOr<uint64_t> model_fingerprint(const std::string& dir, const model::ModelConfig& config);

}  // namespace deepshard::coordinator
