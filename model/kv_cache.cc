#include "model/kv_cache.h"

#include <string>

namespace deepshard::model {

StatusOr<KvCache> KvCache::create(const KvCacheConfig& config) {
    if (config.num_layers <= 0 || config.latent_dim <= 0 || config.rope_dim < 0 || config.block_size <= 0) {
        return invalid_argument("kv cache: layers, latent dim and block size must be positive");
    }
    if (config.bytes_per_value != 4) {
        return invalid_argument("kv cache: the CPU cache stores float32 values");
    }
    if (config.num_blocks <= 0) {
        return resource_exhausted("kv cache: the memory budget holds no block (one block needs " +
                                  std::to_string(config.block_bytes()) + " bytes)");
    }
    DS_ASSIGN_OR_RETURN(KvBlockManager blocks, KvBlockManager::create(config.num_blocks, config.block_size));
    KvCache cache(config, std::move(blocks));
    const int64_t floats = config.num_blocks * config.num_layers * config.block_size * config.token_values();
    try {
        cache.pool_.assign(static_cast<size_t>(floats), 0.0f);
    } catch (const std::bad_alloc&) {
        return resource_exhausted("kv cache: cannot allocate " + std::to_string(floats * 4) + " bytes");
    }
    return cache;
}

float* KvCache::slot(int64_t layer, uint64_t seq, int64_t pos) {
    return const_cast<float*>(static_cast<const KvCache*>(this)->slot(layer, seq, pos));
}

const float* KvCache::slot(int64_t layer, uint64_t seq, int64_t pos) const {
    const auto& table = blocks_.block_table(seq);
    const int64_t bi = pos / config_.block_size;
    DS_CHECK(bi < static_cast<int64_t>(table.size())) << "kv cache: position " << pos << " of sequence " << seq
                                                      << " is not reserved";
    return block_slot(layer, table[bi], pos % config_.block_size);
}

kernels::LatentCache KvCache::layer(int64_t layer) {
    kernels::LatentCache c;
    c.token_stride = config_.token_values();
    c.data = pool_.data() + layer * config_.block_size * c.token_stride;
    c.block_stride = config_.num_layers * config_.block_size * c.token_stride;
    c.block_size = static_cast<int32_t>(config_.block_size);
    c.num_blocks = static_cast<int32_t>(config_.num_blocks);
    c.latent_dim = static_cast<int32_t>(config_.latent_dim);
    c.rope_dim = static_cast<int32_t>(config_.rope_dim);
    return c;
}

}  // namespace deepshard::model
