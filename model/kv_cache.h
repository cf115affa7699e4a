// The CPU engine's paged latent KV cache for MLA (MODEL_SPEC §2 "absorbed" form): per token and layer
// it holds the normalized kv latent (kv_lora_rank values) and the rotated rope key
// (qk_rope_head_dim values), float32 (the exact reference). Memory is one pool of fixed-size blocks
// preallocated from a byte budget; which sequence owns which block is the shared bookkeeping of
// model/kv_blocks.h (the CUDA engine uses the same bookkeeping over its own BF16 device pool).
// A block holds `block_size` consecutive positions for every layer of this shard, so one table
// serves all layers: layout [block][layer][slot][latent | rope].
// Not thread-safe: one step thread reserves/frees; kernels read/write disjoint slots.
#pragma once

#include <cstdint>
#include <vector>

#include "common/status.h"
#include "kernels/mla.h"
#include "model/kv_blocks.h"

namespace deepshard::model {

struct KvCacheConfig {
    int64_t num_layers = 0;  // layers held by this shard
    int64_t latent_dim = 0;  // kv_lora_rank
    int64_t rope_dim = 0;    // qk_rope_head_dim
    int64_t block_size = 16; // tokens per block
    int64_t num_blocks = 0;
    int64_t bytes_per_value = 4;  // float32 on the CPU; 2 for a BF16 device cache

    int64_t token_values() const { return latent_dim + rope_dim; }
    int64_t block_bytes() const { return num_layers * block_size * token_values() * bytes_per_value; }
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
    KvBlockManager& blocks() { return blocks_; }
    const KvBlockManager& blocks() const { return blocks_; }

    // Slot of (layer, seq, pos): latent_dim floats followed by rope_dim floats. pos must be reserved.
    float* slot(int64_t layer, uint64_t seq, int64_t pos);
    const float* slot(int64_t layer, uint64_t seq, int64_t pos) const;
    // Slot `offset` (< block_size) of block `block` at `layer`: walks a block table without lookups.
    const float* block_slot(int64_t layer, int32_t block, int64_t offset) const {
        return pool_.data() + ((block * config_.num_layers + layer) * config_.block_size + offset) * config_.token_values();
    }
    // One layer of the pool as the kernels see it (kernels/mla.h).
    kernels::LatentCache layer(int64_t layer);

private:
    KvCache(const KvCacheConfig& config, KvBlockManager blocks) : config_(config), blocks_(std::move(blocks)) {}
    KvCacheConfig config_;
    KvBlockManager blocks_;
    std::vector<float> pool_;
};

}  // namespace deepshard::model
