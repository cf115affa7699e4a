#include "model/kv_blocks.h"

#include <limits>
#include <string>

namespace deepshard::model {

StatusOr<KvBlockManager> KvBlockManager::create(int64_t num_blocks, int64_t block_size) {
    if (block_size <= 0) {
        return invalid_argument("kv cache: block size must be positive, got " + std::to_string(block_size));
    }
    if (num_blocks <= 0) {
        return resource_exhausted("kv cache: the memory budget holds no block");
    }
    if (num_blocks > std::numeric_limits<int32_t>::max()) {
        return invalid_argument("kv cache: " + std::to_string(num_blocks) + " blocks exceed the int32 block ids");
    }
    KvBlockManager m(num_blocks, block_size);
    m.free_.reserve(static_cast<size_t>(num_blocks));
    // Hand out low block ids first (pop_back), which keeps early sequences' blocks contiguous.
    for (int64_t b = num_blocks - 1; b >= 0; --b) {
        m.free_.push_back(static_cast<int32_t>(b));
    }
    return m;
}

int64_t KvBlockManager::capacity(uint64_t seq) const {
    auto it = tables_.find(seq);
    return it == tables_.end() ? 0 : static_cast<int64_t>(it->second.size()) * block_size_;
}

int64_t KvBlockManager::blocks_needed(uint64_t seq, int64_t num_tokens) const {
    const int64_t want = (num_tokens + block_size_ - 1) / block_size_;
    auto it = tables_.find(seq);
    const int64_t have = it == tables_.end() ? 0 : static_cast<int64_t>(it->second.size());
    return want > have ? want - have : 0;
}

Status KvBlockManager::reserve(uint64_t seq, int64_t num_tokens) {
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

void KvBlockManager::release(uint64_t seq) {
    auto it = tables_.find(seq);
    if (it == tables_.end()) {
        return;
    }
    for (auto b : it->second) {
        free_.push_back(b);
    }
    tables_.erase(it);
}

const std::vector<int32_t>& KvBlockManager::block_table(uint64_t seq) const {
    auto it = tables_.find(seq);
    DS_CHECK(it != tables_.end()) << "kv cache: unknown sequence " << seq;
    return it->second;
}

}  // namespace deepshard::model
