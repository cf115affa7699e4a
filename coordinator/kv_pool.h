// The coordinator's exact mirror of the shard job's KV pools, and the prefix cache over them
// (issue 13, deliverables 1 and 2). A pure data structure: the Scheduler drives it and turns its
// decisions into the step batch's KV operations (control protocol KvOps), which the job executes
// on its model::KvBlockManager in batch order. Both sides therefore hold the same state after every
// batch; the job reports its counts with each result (StepResult.kv) and the scheduler compares.
//
// Domains: one KvDomain per independent pool (Hello.kv_domains): a single one with tensor-parallel
// attention (every rank of a stage holds every sequence's cache, every pipeline stage the blocks of
// its own layers, all with the same block ids' meaning), one per local rank with data-parallel
// attention (each rank caches the prefixes of the sequences it serves).
//
// Prefix cache: a radix tree over *full* blocks, keyed by their token ids. The root is the empty
// prefix; a node is one cached block whose key is (parent node, the block's block_size token ids),
// so a node stands for the whole token prefix up to the end of its block (the KV of a block depends
// on every earlier token). Node ids are the cache entry ids of the control protocol.
//  - A sequence's "chain" is the run of nodes matching its leading full blocks; it pins them
//    (reference count). Pinned sets are closed under ancestors (a chain starts at the root), so a
//    node with no pin has no pinned descendant: every unpinned node is reclaimable.
//  - Its table slots are either cache blocks (started from the cache, or its own block published
//    into the tree) or private blocks (not cached yet, or a duplicate of a node another sequence
//    published first: the sequence pins that node to keep its chain, and keeps its own block).
//  - Used blocks = private blocks of all sequences + tree nodes; free = total - used.
//  - Eviction only when a block is needed and none is free: the least recently used unpinned leaf
//    first (a parent becomes a leaf once its children are gone).
//  - Matches stop one token short of the sequence's known tokens, so the last token is always
//    computed (its logits sample the next token) and shared blocks are never written.
// Not thread-safe (the Scheduler's thread).
#pragma once

#include <cstdint>
#include <set>
#include <span>
#include <unordered_map>
#include <vector>

#include "control/protocol.h"

namespace deepshard::coordinator {

class KvDomain {
public:
    // `next_entry` is shared by the domains of one session so entry ids are unique across them.
    KvDomain(uint32_t id, uint64_t total_blocks, uint32_t block_size, uint64_t* next_entry);

    uint32_t id() const { return id_; }
    uint32_t block_size() const { return block_size_; }
    uint64_t total_blocks() const { return total_; }
    uint64_t used_blocks() const { return private_ + nodes_.size(); }
    uint64_t free_blocks() const { return total_ - used_blocks(); }
    uint64_t cached_blocks() const { return nodes_.size(); }
    // Cache blocks no sequence uses: what eviction can give back.
    uint64_t reclaimable_blocks() const { return nodes_.size() - pinned_nodes_; }
    size_t sequences() const { return seqs_.size(); }

    // The cached chain for `tokens`: node ids of its longest cached run of leading full blocks,
    // at most `max_blocks`. Does not change anything.
    std::vector<uint64_t> match(std::span<const int32_t> tokens, int64_t max_blocks) const;
    // How many of `prefix`'s nodes are not pinned now (starting from them makes them non-reclaimable).
    uint64_t unpinned_in(const std::vector<uint64_t>& prefix) const;

    // A sequence starts (or restarts after preemption) holding `prefix` (a match() result): its
    // table is the prefix's blocks. DS_CHECKs that it is not already here.
    void start(uint64_t seq, const std::vector<uint64_t>& prefix);
    bool has(uint64_t seq) const { return seqs_.count(seq) != 0; }
    // Blocks in the sequence's table on the job.
    int64_t blocks_of(uint64_t seq) const;
    // Blocks to add so `seq` holds positions [0, tokens).
    int64_t growth(uint64_t seq, int64_t tokens) const;
    // Adds those blocks; DS_CHECKs that they are free (make room first).
    void grow(uint64_t seq, int64_t tokens);
    // Drops the blocks of `seq` past those holding positions [0, tokens) (speculative decoding: the
    // blocks of rejected drafts; the job's model::KvBlockManager::truncate does the same).
    void shrink(uint64_t seq, int64_t tokens);
    // Caches the full blocks of `seq` among positions [0, computed) of `tokens` that are not in the
    // tree yet, appending one KvPublish per new node; pins existing duplicates instead.
    void publish(uint64_t seq, std::span<const int32_t> tokens, int64_t computed,
                 std::vector<deepshard::control::KvPublish>* ops);
    // The sequence leaves the pool (finished or preempted): its private blocks are free, its chain
    // unpinned (and marked recently used).
    void drop(uint64_t seq);
    // Evicts the least recently used unpinned leaf; false when there is none.
    bool evict_one(std::vector<deepshard::control::KvEvict>* ops);

private:
    struct Node {
        uint64_t parent = 0;  // 0 = root
        std::vector<int32_t> tokens;
        uint32_t children = 0;
        uint32_t pins = 0;
        uint64_t last_use = 0;
    };
    struct SeqKv {
        int64_t blocks = 0;            // table length
        int64_t cache_slots = 0;       // slots whose block is a node's block
        std::vector<uint64_t> chain;   // pinned nodes for slots [0, chain.size())
    };
    static uint64_t key_hash(uint64_t parent, std::span<const int32_t> tokens);
    uint64_t find_child(uint64_t parent, std::span<const int32_t> tokens) const;
    void pin(uint64_t node);
    void unpin(uint64_t node);
    void refresh_evictable(uint64_t node);

    uint32_t id_;
    uint64_t total_;
    uint32_t block_size_;
    uint64_t* next_entry_;
    uint64_t private_ = 0;
    uint64_t pinned_nodes_ = 0;
    uint64_t clock_ = 0;
    std::unordered_map<uint64_t, Node> nodes_;
    std::unordered_multimap<uint64_t, uint64_t> index_;     // key_hash -> node
    std::set<std::pair<uint64_t, uint64_t>> evictable_;     // (last_use, node): unpinned leaves
    std::unordered_map<uint64_t, SeqKv> seqs_;
};

}  // namespace deepshard::coordinator
