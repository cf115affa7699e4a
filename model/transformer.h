// The DeepSeek-V3 forward pass (MODEL_SPEC §2) over a memory-mapped checkpoint, written against
// kernels/. Activations are float32 throughout; weights stay FP8/BF16 in the mapping.
//
// One Transformer holds a *shard* of the model: a contiguous layer range, optionally the embedding
// and/or the final norm + head (a vocabulary row range), a head range of every attention layer
// (tensor parallel), a column range of the dense MLPs and shared experts, and a subset of routed
// experts. With the default ShardSpec it is the whole model in one process. Partial sums that need
// combining across the ranks of a stage go through the TpReducer passed in (nullptr = none).
//
// A step processes a batch of sequence chunks at once: prefill chunks of any length and single-token
// decodes, mixed. Their tokens are stacked so every weight is read once per step.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "common/status.h"
#include "kernels/weight_view.h"
#include "model/checkpoint.h"
#include "model/kv_cache.h"

namespace deepshard::model {

struct ShardSpec {
    int64_t first_layer = 0;
    int64_t last_layer = -1;       // exclusive; -1 = num_hidden_layers
    bool has_embedding = true;     // this shard embeds tokens (first stage)
    bool has_head = true;          // this shard applies the final norm + head (last stage)
    int64_t vocab_begin = 0;       // embedding/head rows held (vocab-parallel); end -1 = vocab_size
    int64_t vocab_end = -1;
    int64_t head_begin = 0;        // attention heads held; end -1 = all
    int64_t head_end = -1;
    int64_t tp_rank = 0;           // index / count used to slice dense MLP + shared expert columns
    int64_t tp_size = 1;
    std::vector<bool> experts;     // routed experts held (empty = all)
};

// Combines partial results across the ranks of a tensor-parallel group.
class TpReducer {
public:
    virtual ~TpReducer() = default;
    virtual Status allreduce_sum(float* data, int64_t n) = 0;
    // logits[rows, full_vocab]: each rank filled its vocab columns [vocab_begin, vocab_end).
    virtual Status allgather_vocab(float* logits, int64_t rows, int64_t full_vocab) = 0;
};

// Expert parallelism with data-parallel attention: routed tokens go to the ranks that own their
// experts and come back weight-summed (comm/ep dispatch + combine). Called once per MoE layer on
// every rank of the stage, also with T == 0, since it is collective.
class MoeExchange {
public:
    virtual ~MoeExchange() = default;
    // Runs one of this rank's experts on n rows of x [n, hidden] into y [n, hidden].
    using LocalExpert = std::function<void(int32_t expert, const float* x, int64_t n, float* y)>;
    // out[t] = sum_k weights[t*K+k] * Expert_{experts[t*K+k]}(x[t]) for the T local tokens.
    virtual Status run(const float* x, int64_t T, int64_t hidden, std::span<const int32_t> experts,
                       std::span<const float> weights, int64_t K, const LocalExpert& local_expert, float* out) = 0;
};

// Optional observers for tests and debugging (nullptr = off).
struct ForwardHooks {
    // After the embedding (layer = -1) and after each block: the residual stream [tokens, hidden].
    std::function<void(int64_t layer, const float* h, int64_t tokens, int64_t hidden)> on_hidden;
    // After the final RMSNorm.
    std::function<void(const float* h, int64_t tokens, int64_t hidden)> on_final_norm;
    // Per MoE layer and token: chosen experts (top-k order) and their weights (after scaling).
    std::function<void(int64_t layer, int64_t token, std::span<const int32_t> experts, std::span<const float> weights)>
        on_routing;
};

enum class LogitsMode { kNone, kLast, kAll };

struct SeqChunk {
    uint64_t seq_id = 0;
    std::span<const int32_t> tokens;  // new tokens (first stage); count only elsewhere
    int64_t num_tokens = 0;           // == tokens.size() when tokens are given
    int64_t start_pos = 0;            // absolute position of the first new token
    LogitsMode logits = LogitsMode::kLast;
};

struct StepOutput {
    // Rows of logits in chunk order: one per chunk for kLast, num_tokens for kAll, none for kNone.
    std::vector<float> logits;
    int64_t rows = 0;
    int64_t vocab = 0;
    // Hidden states leaving this shard [tokens, hidden] when it has no head (pipeline output).
    std::vector<float> hidden;
};

struct TransformerOptions {
    int64_t kv_budget_bytes = int64_t{1} << 30;
    int64_t kv_block_size = 16;
};

class Transformer {
public:
    static StatusOr<std::unique_ptr<Transformer>> create(std::shared_ptr<const Checkpoint> checkpoint,
                                                         const ShardSpec& spec, const TransformerOptions& options);
    ~Transformer();

    const ModelConfig& config() const { return checkpoint_->config(); }
    const ShardSpec& spec() const { return spec_; }
    KvCache& kv_cache() { return kv_; }
    void set_reducer(TpReducer* reducer) { reducer_ = reducer; }
    void set_hooks(ForwardHooks* hooks) { hooks_ = hooks; }
    void set_moe_exchange(MoeExchange* exchange) { exchange_ = exchange; }

    // Runs one step. KV space for [start_pos, start_pos+num_tokens) is reserved here (fails with
    // ResourceExhausted before any change when the pool cannot supply it). `hidden_in` is the
    // input residual stream [total tokens, hidden] for shards without the embedding.
    StatusOr<StepOutput> step(std::span<const SeqChunk> chunks, std::span<const float> hidden_in = {});

    // Drops a sequence's cache.
    void release(uint64_t seq_id) { kv_.release(seq_id); }

    // Faults in exactly the byte ranges of the weights this shard holds (one read per page, all
    // cores), so a rank's resident memory is its share of the checkpoint. Returns bytes and time.
    LoadStats prefault() const;

    // Bytes of weights one decode token reads on this shard (all held dense weights plus the
    // routed experts a token activates), for benchmarks.
    int64_t weight_bytes_per_token() const;

private:
    struct Impl;
    Transformer(std::shared_ptr<const Checkpoint> checkpoint, const ShardSpec& spec, KvCache kv);
    std::shared_ptr<const Checkpoint> checkpoint_;
    ShardSpec spec_;
    KvCache kv_;
    TpReducer* reducer_ = nullptr;
    ForwardHooks* hooks_ = nullptr;
    MoeExchange* exchange_ = nullptr;
    std::unique_ptr<Impl> impl_;
};

}  // namespace deepshard::model
