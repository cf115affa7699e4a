#include "model/kv_blocks.h"

#include <algorithm>
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
    m.refs_.assign(static_cast<size_t>(num_blocks), 0);
    // Hand out low block ids first (pop_back), which keeps early sequences' blocks contiguous.
    for (int64_t b = num_blocks - 1; b >= 0; --b) {
        m.free_.push_back(static_cast<int32_t>(b));
    }
    return m;
}

int32_t KvBlockManager::take() {
    const int32_t b = free_.back();
    free_.pop_back();
    refs_[static_cast<size_t>(b)] = 1;
    return b;
}

void KvBlockManager::drop(int32_t block) {
    int32_t& r = refs_[static_cast<size_t>(block)];
    DS_CHECK(r > 0) << "kv cache: block " << block << " released more often than held";
    if (--r == 0) free_.push_back(block);
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
    for (int64_t i = 0; i < need; ++i) table.push_back(take());
    return ok_status();
}

void KvBlockManager::truncate(uint64_t seq, int64_t num_tokens) {
    auto it = tables_.find(seq);
    if (it == tables_.end()) {
        return;
    }
    const size_t keep = static_cast<size_t>(std::max<int64_t>(0, (num_tokens + block_size_ - 1) / block_size_));
    while (it->second.size() > keep) {
        drop(it->second.back());
        it->second.pop_back();
    }
}

void KvBlockManager::release(uint64_t seq) {
    auto it = tables_.find(seq);
    if (it == tables_.end()) {
        return;
    }
    for (auto b : it->second) drop(b);
    tables_.erase(it);
}

const std::vector<int32_t>& KvBlockManager::block_table(uint64_t seq) const {
    auto it = tables_.find(seq);
    DS_CHECK(it != tables_.end()) << "kv cache: unknown sequence " << seq;
    return it->second;
}

Status KvBlockManager::publish(uint64_t entry, uint64_t seq, int64_t block_index) {
    if (entries_.count(entry) != 0) {
        return invalid_argument("kv cache: cache entry " + std::to_string(entry) + " already exists");
    }
    auto it = tables_.find(seq);
    if (it == tables_.end()) {
        return invalid_argument("kv cache: cannot cache a block of unknown sequence " + std::to_string(seq));
    }
    if (block_index < 0 || block_index >= static_cast<int64_t>(it->second.size())) {
        return invalid_argument("kv cache: sequence " + std::to_string(seq) + " has " +
                                std::to_string(it->second.size()) + " blocks, cannot cache block " +
                                std::to_string(block_index));
    }
    const int32_t b = it->second[static_cast<size_t>(block_index)];
    ++refs_[static_cast<size_t>(b)];
    entries_.emplace(entry, b);
    return ok_status();
}

Status KvBlockManager::fork(uint64_t seq, std::span<const uint64_t> entries) {
    auto it = tables_.find(seq);
    if (it != tables_.end() && !it->second.empty()) {
        return invalid_argument("kv cache: sequence " + std::to_string(seq) +
                                " already holds blocks; only a sequence without KV starts from a cached prefix");
    }
    std::vector<int32_t> table;
    table.reserve(entries.size());
    for (uint64_t e : entries) {
        auto en = entries_.find(e);
        if (en == entries_.end()) {
            return invalid_argument("kv cache: sequence " + std::to_string(seq) + " starts from unknown cache entry " +
                                    std::to_string(e));
        }
        table.push_back(en->second);
    }
    for (int32_t b : table) ++refs_[static_cast<size_t>(b)];
    tables_[seq] = std::move(table);
    return ok_status();
}

Status KvBlockManager::evict(uint64_t entry) {
    auto it = entries_.find(entry);
    if (it == entries_.end()) {
        return invalid_argument("kv cache: cannot evict unknown cache entry " + std::to_string(entry));
    }
    const int32_t b = it->second;
    entries_.erase(it);
    drop(b);
    return ok_status();
}

bool KvBlockManager::writable(uint64_t seq, int64_t start_pos) const {
    auto it = tables_.find(seq);
    if (it == tables_.end()) return true;
    for (size_t k = static_cast<size_t>(start_pos / block_size_); k < it->second.size(); ++k) {
        if (refs_[static_cast<size_t>(it->second[k])] != 1) return false;
    }
    return true;
}

}  // namespace deepshard::model
