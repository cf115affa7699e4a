// Paged latent KV cache for MLA (MODEL_SPEC §2 "absorbed" form): per token and layer it holds the
// normalized kv latent (kv_lora_rank values) and the rotated rope key (qk_rope_head_dim values),
// nothing else. Memory is one pool of fixed-size blocks preallocated from a byte budget; each
// sequence owns a block table. A block holds `block_size` consecutive positions for every layer
// of this shard, so one table serves all layers.
// Not thread-safe: one scheduler thread reserves/frees; kernels read/write disjoint slots.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "common/status.h"

namespace deepshard::model {

struct KvCacheConfig {
    int64_t num_layers = 0;  // layers held by this shard
    int64_t latent_dim = 0;  // kv_lora_rank
    int64_t rope_dim = 0;    // qk_rope_head_dim
    int64_t block_size = 16; // tokens per block
    int64_t num_blocks = 0;

    int64_t token_floats() const { return latent_dim + rope_dim; }
    int64_t block_bytes() const { return num_layers * block_size * token_floats() * static_cast<int64_t>(sizeof(float)); }
    // Blocks that fit in `budget_bytes`.
    int64_t blocks_for_budget(int64_t budget_bytes) const {
        return block_bytes() > 0 ? budget_bytes / block_bytes() : 0;
    }
};

class KvCache {
public:
    static StatusOr<KvCache> create(const KvCacheConfig& config);

    KvCache(KvCache&&) noexcept = default;
    KvCache& operator=(KvCache&&) noexcept = default;
    KvCache(const KvCache&) = delete;
    KvCache& operator=(const KvCache&) = delete;

    const KvCacheConfig& config() const { return config_; }

    // Makes room for positions [0, num_tokens) of `seq` (allocating blocks as needed).
    // ResourceExhausted (and no change) when the pool cannot supply them.
    Status reserve(uint64_t seq, int64_t num_tokens);
    // Returns the sequence's blocks to the pool. Unknown ids are ignored.
    void release(uint64_t seq);
    bool has(uint64_t seq) const { return tables_.count(seq) != 0; }
    // Positions the sequence's blocks can hold.
    int64_t capacity(uint64_t seq) const;
    // Blocks needed for `extra` more tokens on top of what `seq` holds.
    int64_t blocks_needed(uint64_t seq, int64_t num_tokens) const;

    int64_t free_blocks() const { return static_cast<int64_t>(free_.size()); }
    int64_t total_blocks() const { return config_.num_blocks; }
    int64_t num_sequences() const { return static_cast<int64_t>(tables_.size()); }

    // Slot of (layer, seq, pos): latent_dim floats followed by rope_dim floats. pos must be reserved.
    float* slot(int64_t layer, uint64_t seq, int64_t pos);
    const float* slot(int64_t layer, uint64_t seq, int64_t pos) const;
    // Slot `offset` (< block_size) of block `block` at `layer`: walks a block table without lookups.
    const float* block_slot(int64_t layer, int32_t block, int64_t offset) const {
        return pool_.data() + ((block * config_.num_layers + layer) * config_.block_size + offset) * config_.token_floats();
    }
    // Block table of a sequence (for kernels that walk blocks).
    const std::vector<int32_t>& block_table(uint64_t seq) const;

private:
    explicit KvCache(const KvCacheConfig& config);
    KvCacheConfig config_;
    std::vector<float> pool_;
    std::vector<int32_t> free_;
    std::unordered_map<uint64_t, std::vector<int32_t>> tables_;
};

}  // namespace deepshard::model
