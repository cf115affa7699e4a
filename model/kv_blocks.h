// Block bookkeeping of a paged KV cache, shared by every engine: a pool of `num_blocks` block ids,
// a free list, and per sequence the table of blocks holding its positions (block k of a sequence
// holds positions [k * block_size, (k + 1) * block_size)). It never touches the cache memory: the
// CPU engine keeps float32 blocks in host memory (model/kv_cache.h), the CUDA engine BF16 blocks on
// the device, both indexed by these ids.
// Not thread-safe: the engine's step thread reserves and releases.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "common/status.h"

namespace deepshard::model {

class KvBlockManager {
public:
    // kInvalidArgument for a non-positive block size, kResourceExhausted for an empty pool.
    static StatusOr<KvBlockManager> create(int64_t num_blocks, int64_t block_size);

    int64_t block_size() const { return block_size_; }
    int64_t total_blocks() const { return num_blocks_; }
    int64_t free_blocks() const { return static_cast<int64_t>(free_.size()); }
    int64_t used_blocks() const { return num_blocks_ - free_blocks(); }
    int64_t num_sequences() const { return static_cast<int64_t>(tables_.size()); }

    // Makes room for positions [0, num_tokens) of `seq` (allocating blocks as needed).
    // kResourceExhausted (and no change) when the pool cannot supply them.
    Status reserve(uint64_t seq, int64_t num_tokens);
    // Returns the sequence's blocks to the pool. Unknown ids are ignored.
    void release(uint64_t seq);
    bool has(uint64_t seq) const { return tables_.count(seq) != 0; }
    // Positions the sequence's blocks can hold (0 for an unknown sequence).
    int64_t capacity(uint64_t seq) const;
    // Blocks to add so that `seq` can hold positions [0, num_tokens).
    int64_t blocks_needed(uint64_t seq, int64_t num_tokens) const;
    // Block table of a known sequence (DS_CHECK otherwise).
    const std::vector<int32_t>& block_table(uint64_t seq) const;

private:
    KvBlockManager(int64_t num_blocks, int64_t block_size) : num_blocks_(num_blocks), block_size_(block_size) {}
    int64_t num_blocks_ = 0;
    int64_t block_size_ = 16;
    std::vector<int32_t> free_;
    std::unordered_map<uint64_t, std::vector<int32_t>> tables_;
};

}  // namespace deepshard::model
