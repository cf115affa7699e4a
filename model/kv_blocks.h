// Block bookkeeping of a paged KV cache, shared by every engine: a pool of `num_blocks` block ids,
// a free list, and per sequence the table of blocks holding its positions (block k of a sequence
// holds positions [k * block_size, (k + 1) * block_size)). It never touches the cache memory: the
// CPU engine keeps float32 blocks in host memory (model/kv_cache.h), the CUDA engine BF16 blocks on
// the device, both indexed by these ids. Engines rebuild their per-step block tables from here, so
// every change below (forks, evictions) is seen by the next step without telling the engine.
//
// Sharing (prefix caching, coordinator/kv_pool.h decides, this only executes):
//  - Blocks are reference-counted. A block is free when no sequence table and no cache entry
//    holds it.
//  - publish(entry, seq, k) makes the full block k of `seq` a read-only cache entry named by the
//    coordinator's id; the sequence keeps using it.
//  - fork(seq, entries) starts a sequence whose table begins with the entries' blocks (a cached
//    prompt prefix): its first new position is entries.size() * block_size.
//  - evict(entry) drops the cache's reference (the block is freed when no sequence still uses it).
//  A shared block is never written: new tokens always go to positions past a sequence's cached
//  prefix, and writable() lets an engine check that before a step (the coordinator never asks for
//  it, so a violation is a protocol bug, refused before any state changes).
// Not thread-safe: the engine's step thread reserves and releases.
#pragma once

#include <cstdint>
#include <span>
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
    // Blocks held by cache entries (some may also be in sequence tables).
    int64_t cached_blocks() const { return static_cast<int64_t>(entries_.size()); }

    // Makes room for positions [0, num_tokens) of `seq` (allocating blocks as needed).
    // kResourceExhausted (and no change) when the pool cannot supply them.
    Status reserve(uint64_t seq, int64_t num_tokens);
    // Keeps only the blocks holding positions [0, num_tokens) of `seq` (speculative decoding drops the
    // blocks of rejected draft positions); the dropped ones return to the pool. Only blocks past the
    // sequence's writable positions may go, so this never touches a shared (cached) block. Unknown
    // ids are ignored.
    void truncate(uint64_t seq, int64_t num_tokens);
    // Drops the sequence's table; blocks no one else holds return to the pool. Unknown ids are ignored.
    void release(uint64_t seq);
    bool has(uint64_t seq) const { return tables_.count(seq) != 0; }
    // Positions the sequence's blocks can hold (0 for an unknown sequence).
    int64_t capacity(uint64_t seq) const;
    // Blocks to add so that `seq` can hold positions [0, num_tokens).
    int64_t blocks_needed(uint64_t seq, int64_t num_tokens) const;
    // Block table of a known sequence (DS_CHECK otherwise).
    const std::vector<int32_t>& block_table(uint64_t seq) const;

    // Prefix caching (see the header comment). Each call checks everything before changing anything:
    // kInvalidArgument naming the problem (unknown or duplicate ids, index past the table).
    Status publish(uint64_t entry, uint64_t seq, int64_t block_index);
    Status fork(uint64_t seq, std::span<const uint64_t> entries);
    Status evict(uint64_t entry);
    bool has_entry(uint64_t entry) const { return entries_.count(entry) != 0; }
    // True when positions from `start_pos` on may be written: the blocks holding them (if any are
    // reserved yet) are held by this sequence alone.
    bool writable(uint64_t seq, int64_t start_pos) const;
    // References to a block (tests; 0 = free).
    int32_t refs(int32_t block) const { return refs_.at(static_cast<size_t>(block)); }

private:
    KvBlockManager(int64_t num_blocks, int64_t block_size) : num_blocks_(num_blocks), block_size_(block_size) {}
    int32_t take();
    void drop(int32_t block);

    int64_t num_blocks_ = 0;
    int64_t block_size_ = 16;
    std::vector<int32_t> free_;
    std::vector<int32_t> refs_;  // per block: sequence tables + cache entries holding it
    std::unordered_map<uint64_t, std::vector<int32_t>> tables_;
    std::unordered_map<uint64_t, int32_t> entries_;  // cache entry id -> block
};

}  // namespace deepshard::model
