#include "coordinator/kv_pool.h"

#include <algorithm>

#include "common/status.h"

namespace deepshard::coordinator {

namespace ctl = deepshard::control;

KvDomain::KvDomain(uint32_t id, uint64_t total_blocks, uint32_t block_size, uint64_t* next_entry)
    : id_(id), total_(total_blocks), block_size_(block_size), next_entry_(next_entry) {}

uint64_t KvDomain::key_hash(uint64_t parent, std::span<const int32_t> tokens) {
    // FNV-1a over the parent id and the token ids; collisions are resolved by comparing tokens.
    uint64_t h = 1469598103934665603ull;
    auto mix = [&h](uint64_t v) {
        for (int i = 0; i < 8; ++i) {
            h ^= (v >> (8 * i)) & 0xff;
            h *= 1099511628211ull;
        }
    };
    mix(parent);
    for (int32_t t : tokens) mix(static_cast<uint32_t>(t));
    return h;
}

uint64_t KvDomain::find_child(uint64_t parent, std::span<const int32_t> tokens) const {
    auto [b, e] = index_.equal_range(key_hash(parent, tokens));
    for (auto it = b; it != e; ++it) {
        const Node& n = nodes_.at(it->second);
        if (n.parent == parent && std::equal(n.tokens.begin(), n.tokens.end(), tokens.begin(), tokens.end())) {
            return it->second;
        }
    }
    return 0;
}

std::vector<uint64_t> KvDomain::match(std::span<const int32_t> tokens, int64_t max_blocks) const {
    std::vector<uint64_t> chain;
    uint64_t parent = 0;
    const int64_t bs = block_size_;
    for (int64_t k = 0; k < max_blocks && (k + 1) * bs <= static_cast<int64_t>(tokens.size()); ++k) {
        const uint64_t child = find_child(parent, tokens.subspan(static_cast<size_t>(k * bs), block_size_));
        if (child == 0) break;
        chain.push_back(child);
        parent = child;
    }
    return chain;
}

uint64_t KvDomain::unpinned_in(const std::vector<uint64_t>& prefix) const {
    uint64_t n = 0;
    for (uint64_t id : prefix) n += nodes_.at(id).pins == 0 ? 1 : 0;
    return n;
}

void KvDomain::refresh_evictable(uint64_t id) {
    const Node& n = nodes_.at(id);
    if (n.pins == 0 && n.children == 0) {
        evictable_.insert({n.last_use, id});
    } else {
        evictable_.erase({n.last_use, id});
    }
}

void KvDomain::pin(uint64_t id) {
    Node& n = nodes_.at(id);
    evictable_.erase({n.last_use, id});
    if (n.pins++ == 0) ++pinned_nodes_;
    n.last_use = ++clock_;
}

void KvDomain::unpin(uint64_t id) {
    Node& n = nodes_.at(id);
    DS_CHECK(n.pins > 0) << "kv pool: node " << id << " unpinned more often than pinned";
    evictable_.erase({n.last_use, id});
    if (--n.pins == 0) --pinned_nodes_;
    n.last_use = ++clock_;
    refresh_evictable(id);
}

void KvDomain::start(uint64_t seq, const std::vector<uint64_t>& prefix) {
    DS_CHECK(seqs_.count(seq) == 0) << "kv pool: sequence " << seq << " started twice";
    SeqKv& s = seqs_[seq];
    for (uint64_t id : prefix) pin(id);
    s.chain = prefix;
    s.blocks = static_cast<int64_t>(prefix.size());
    s.cache_slots = s.blocks;
}

int64_t KvDomain::blocks_of(uint64_t seq) const {
    auto it = seqs_.find(seq);
    return it == seqs_.end() ? 0 : it->second.blocks;
}

int64_t KvDomain::growth(uint64_t seq, int64_t tokens) const {
    const int64_t want = (tokens + block_size_ - 1) / block_size_;
    return std::max<int64_t>(0, want - blocks_of(seq));
}

void KvDomain::grow(uint64_t seq, int64_t tokens) {
    const int64_t add = growth(seq, tokens);
    DS_CHECK(static_cast<uint64_t>(add) <= free_blocks()) << "kv pool: growing sequence " << seq << " by " << add
                                                          << " blocks with " << free_blocks() << " free";
    SeqKv& s = seqs_.at(seq);
    s.blocks += add;
    private_ += static_cast<uint64_t>(add);
}

void KvDomain::shrink(uint64_t seq, int64_t tokens) {
    auto it = seqs_.find(seq);
    if (it == seqs_.end()) return;
    SeqKv& s = it->second;
    const int64_t want = (tokens + block_size_ - 1) / block_size_;
    if (s.blocks <= want) return;
    // Only private tail blocks go (the cached ones lie within the computed positions).
    DS_CHECK(want >= s.cache_slots) << "kv pool: shrinking sequence " << seq << " into its cached blocks";
    private_ -= static_cast<uint64_t>(s.blocks - want);
    s.blocks = want;
}

void KvDomain::publish(uint64_t seq, std::span<const int32_t> tokens, int64_t computed,
                       std::vector<ctl::KvPublish>* ops) {
    SeqKv& s = seqs_.at(seq);
    const int64_t bs = block_size_;
    const int64_t full = std::min<int64_t>(computed, static_cast<int64_t>(tokens.size())) / bs;
    for (int64_t k = static_cast<int64_t>(s.chain.size()); k < full && k < s.blocks; ++k) {
        const uint64_t parent = k == 0 ? 0 : s.chain.back();
        const auto block = tokens.subspan(static_cast<size_t>(k * bs), block_size_);
        uint64_t id = find_child(parent, block);
        if (id != 0) {
            // Someone cached this prefix first: keep our own block, follow their chain.
            pin(id);
            s.chain.push_back(id);
            continue;
        }
        id = (*next_entry_)++;
        Node n;
        n.parent = parent;
        n.tokens.assign(block.begin(), block.end());
        nodes_.emplace(id, std::move(n));
        index_.emplace(key_hash(parent, block), id);
        if (parent != 0) {
            ++nodes_.at(parent).children;
            refresh_evictable(parent);
        }
        pin(id);
        s.chain.push_back(id);
        // The private block becomes the node's block: used blocks stay the same.
        ++s.cache_slots;
        --private_;
        ops->push_back({.entry = id, .seq_id = seq, .block_index = static_cast<uint32_t>(k), .domain = id_});
    }
}

void KvDomain::drop(uint64_t seq) {
    auto it = seqs_.find(seq);
    if (it == seqs_.end()) return;
    SeqKv& s = it->second;
    private_ -= static_cast<uint64_t>(s.blocks - s.cache_slots);
    // Root to leaf: the deepest block gets the newest use, and leaves go first anyway.
    for (uint64_t id : s.chain) unpin(id);
    seqs_.erase(it);
}

bool KvDomain::evict_one(std::vector<ctl::KvEvict>* ops) {
    if (evictable_.empty()) return false;
    const uint64_t id = evictable_.begin()->second;
    evictable_.erase(evictable_.begin());
    Node n = std::move(nodes_.at(id));
    nodes_.erase(id);
    auto [b, e] = index_.equal_range(key_hash(n.parent, n.tokens));
    for (auto it = b; it != e; ++it) {
        if (it->second == id) {
            index_.erase(it);
            break;
        }
    }
    if (n.parent != 0) {
        --nodes_.at(n.parent).children;
        refresh_evictable(n.parent);
    }
    ops->push_back({.entry = id, .domain = id_});
    return true;
}

}  // namespace deepshard::coordinator
