#include "model/kv_cache.h"

#include <string>

namespace deepshard::model {

KvCache::KvCache(const KvCacheConfig& config) : config_(config) {}

StatusOr<KvCache> KvCache::create(const KvCacheConfig& config) {
    if (config.num_layers <= 0 || config.latent_dim <= 0 || config.rope_dim < 0 || config.block_size <= 0) {
        return invalid_argument("kv cache: layers, latent dim and block size must be positive");
    }
    if (config.num_blocks <= 0) {
        return resource_exhausted("kv cache: the memory budget holds no block (one block needs " +
                                  std::to_string(config.block_bytes()) + " bytes)");
    }
    KvCache cache(config);
    const int64_t floats = config.num_blocks * config.num_layers * config.block_size * config.token_floats();
    try {
        cache.pool_.assign(static_cast<size_t>(floats), 0.0f);
    } catch (const std::bad_alloc&) {
        return resource_exhausted("kv cache: cannot allocate " + std::to_string(floats * 4) + " bytes");
    }
    cache.free_.reserve(static_cast<size_t>(config.num_blocks));
    // Hand out low block ids first (pop_back), which keeps early sequences' blocks contiguous.
    for (int64_t b = config.num_blocks - 1; b >= 0; --b) {
        cache.free_.push_back(static_cast<int32_t>(b));
    }
    return cache;
}

int64_t KvCache::capacity(uint64_t seq) const {
    auto it = tables_.find(seq);
    return it == tables_.end() ? 0 : static_cast<int64_t>(it->second.size()) * config_.block_size;
}

int64_t KvCache::blocks_needed(uint64_t seq, int64_t num_tokens) const {
    const int64_t want = (num_tokens + config_.block_size - 1) / config_.block_size;
    auto it = tables_.find(seq);
    const int64_t have = it == tables_.end() ? 0 : static_cast<int64_t>(it->second.size());
    return want > have ? want - have : 0;
}

Status KvCache::reserve(uint64_t seq, int64_t num_tokens) {
    const int64_t need = blocks_needed(seq, num_tokens);
    if (need > free_blocks()) {
        return resource_exhausted("kv cache: sequence " + std::to_string(seq) + " needs " + std::to_string(need) +
                                  " more blocks, " + std::to_string(free_blocks()) + " free");
    }
    auto& table = tables_[seq];
    for (int64_t i = 0; i < need; ++i) {
        table.push_back(free_.back());
        free_.pop_back();
    }
    return ok_status();
}

void KvCache::release(uint64_t seq) {
    auto it = tables_.find(seq);
    if (it == tables_.end()) {
        return;
    }
    for (auto b : it->second) {
        free_.push_back(b);
    }
    tables_.erase(it);
}

const std::vector<int32_t>& KvCache::block_table(uint64_t seq) const {
    auto it = tables_.find(seq);
    DS_CHECK(it != tables_.end()) << "kv cache: unknown sequence " << seq;
    return it->second;
}

float* KvCache::slot(int64_t layer, uint64_t seq, int64_t pos) {
    return const_cast<float*>(static_cast<const KvCache*>(this)->slot(layer, seq, pos));
}

const float* KvCache::slot(int64_t layer, uint64_t seq, int64_t pos) const {
    const auto& table = block_table(seq);
    const int64_t bi = pos / config_.block_size;
    DS_CHECK(bi < static_cast<int64_t>(table.size())) << "kv cache: position " << pos << " of sequence " << seq
                                                      << " is not reserved";
    const int64_t block = table[bi];
    const int64_t idx = ((block * config_.num_layers + layer) * config_.block_size + pos % config_.block_size) *
                        config_.token_floats();
    return pool_.data() + idx;
}

}  // namespace deepshard::model
