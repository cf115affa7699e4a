// The tensor layout a config implies (one list, used by make-model to write and by
// Checkpoint::validate / inspect to check) and the random-weight model generator behind
// `deepshard make-model` (DESIGN §6): presets, `--set key=value` overrides, deterministic weights
// (same seed => same bytes, whatever the thread count), FP8 block quantization as the DeepSeek
// release does it, and streaming writes so models larger than memory can be generated.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/status.h"
#include "common/thread_pool.h"
#include "model/config.h"

namespace deepshard::model {

// What a tensor is, for counting (inspect) and for choosing its dtype and initialization.
enum class TensorKind {
    kEmbedding, kHead, kNorm, kAttention, kDenseMlp, kRouter, kRouterBias, kExpert, kSharedExpert,
    kMtpProj,  // the MTP module's eh_proj (BF16 in the release, not block-quantized)
};
const char* tensor_kind_name(TensorKind k);

struct ExpectedTensor {
    std::string name;
    std::vector<int64_t> shape;  // [out, in] for matrices
    TensorKind kind = TensorKind::kAttention;
    int64_t layer = -1;   // -1: model-level
    int64_t expert = -1;  // routed expert index, else -1
    // Linear projections: FP8 with a `<name>_scale_inv` block grid when the config is quantized.
    bool quantizable() const {
        return kind == TensorKind::kAttention || kind == TensorKind::kDenseMlp || kind == TensorKind::kExpert ||
               kind == TensorKind::kSharedExpert;
    }
    // The dtype make-model writes for it (the published layout: FP8 projections, BF16 embedding,
    // head, norms and router, F32 router bias).
    DType dtype(const ModelConfig& c) const;
    int64_t numel() const {
        int64_t n = 1;
        for (auto d : shape) n *= d;
        return n;
    }
};

// Every tensor the config implies, in the published order (model order, layer by layer). Scale
// tensors are not listed: see scale_name() / scale_shape().
std::vector<ExpectedTensor> expected_tensors(const ModelConfig& c);
std::string scale_name(const std::string& weight_name);  // "<name>_scale_inv"
// [ceil(rows / block_rows), ceil(cols / block_cols)].
std::vector<int64_t> scale_shape(const ModelConfig& c, int64_t rows, int64_t cols);
// Total parameters (scales excluded).
int64_t count_parameters(const ModelConfig& c);

// ---- Generator ----

// "tiny", "small" or "medium" (medium has >= 1B parameters). FP8 unless told otherwise.
StatusOr<ModelConfig> preset_config(const std::string& name);
// Applies "key=value" to the config: key is any config.json field, dotted for nested objects
// (rope_scaling.factor); value is a JSON literal or a bare string. The result is validated.
Status apply_override(ModelConfig* c, const std::string& key_value);

// The vocabulary a model needs for a tokenizer of `tokenizer_ids` ids: rounded up to a multiple of
// 128 (DeepSeek-V3 pads its 128,815 ids to 129,280 rows) so the embedding and head still split
// evenly over tensor-parallel ranks.
int64_t vocab_for_tokenizer(int64_t tokenizer_ids);

struct MakeModelOptions {
    uint64_t seed = 0;
    int shards = 0;              // 0: automatic (at least 3, ~2 GB each); 1: a single model.safetensors
    std::string tokenizer_dir;   // copy tokenizer.json + tokenizer_config.json from here when set;
                                 // refused if the config's vocab_size is smaller than its ids
    ThreadPool* pool = nullptr;  // default: ThreadPool::global()
    bool progress = false;       // log lines while writing
    // How the MTP module (num_nextn_predict_layers > 0) is drawn. kRandom: like every other layer.
    // kMirror: a module whose drafts approximate the main model, so speculative decoding on a
    // random-weight model accepts a realistic share of drafts (tests, benchmarks): its block copies
    // the last main layer, shared_head.norm the final norm, enorm is 1 and eh_proj = [I | 0] (the
    // block sees the next token's normalized embedding, like the main model's last layer sees its
    // input when that is the only layer).
    enum class MtpInit { kRandom, kMirror };
    MtpInit mtp_init = MtpInit::kRandom;
};

struct MakeModelResult {
    int64_t parameters = 0;
    uint64_t bytes = 0;              // tensor bytes written (the index's total_size)
    std::vector<std::string> files;  // shard file names
    double seconds = 0;
};

// Writes config.json, model.safetensors.index.json and the shards into `out_dir` (created if
// needed; stale shard files of an earlier run are removed first).
StatusOr<MakeModelResult> make_model(const ModelConfig& c, const std::string& out_dir, const MakeModelOptions& opt);

// FP8 block quantization of a [rows, cols] row-major matrix (or a block-aligned row range of one):
// per block, scale = amax / 448 in float32 (an edge block's amax covers only its real elements) and
// q = e4m3(w / scale), round-to-nearest-even, so every non-zero block holds a +-448 code. Writes
// rows * cols codes to `q` and the ceil(rows / block_rows) x ceil(cols / block_cols) grid to `scale`.
void quantize_fp8_blocks(
    const float* w, int64_t rows, int64_t cols, int64_t block_rows, int64_t block_cols, uint8_t* q, float* scale);

}  // namespace deepshard::model
