// Byte-level BPE merge engine (internal to model/tokenizer). Works on raw bytes and ids: each byte
// starts as the id of its GPT-2-mapped character, and merges are looked up by id pair in a flat
// open-addressing table, so the mapped strings are needed only while loading.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace deepshard::model::internal {

class BpeModel {
public:
    struct Merge {
        int32_t left;
        int32_t right;
        int32_t merged;
    };

    // byte_ids[b]: id of the single-character token for byte b; merges in rank order (a repeated
    // pair keeps its last rank, as HF's HashMap does). Ids must be >= 0. Fails (kUnimplemented) only
    // for vocabularies too large for the packed table (ids >= 2^21 with that many merges).
    static StatusOr<std::unique_ptr<BpeModel>> create(const int32_t (&byte_ids)[256], const std::vector<Merge>& merges);

    size_t num_merges() const { return merged_by_rank_.size(); }

    // Appends the ids of one pre-tokenized piece (raw bytes) to out. Thread-safe: the only mutable
    // state is the per-thread piece caches (2 x 512 KiB per thread, direct-mapped, no locks).
    void encode_piece(std::string_view piece, std::vector<int32_t>* out) const;

    // Same result by the plain algorithm (HF Word::merge_all's heap, no cache). Kept as the reference
    // the fast path is tested and fuzzed against.
    void encode_piece_reference(std::string_view piece, std::vector<int32_t>* out) const;

private:
    static constexpr int32_t kNoMerge = INT32_MAX;

    BpeModel() = default;

    // Priority of the merge (left, right): lower merges first; kNoMerge if there is none. It is the
    // rank, or, when merged ids grow with rank (true of HF-trained files, DeepSeek-V3 included), the
    // merged id itself, which orders the same and saves the dependent load of merged_by_rank_.
    //
    // The table is open addressing with linear probing, power-of-two capacity at most half full,
    // 8 bytes a slot so the 127k DeepSeek merges take 2 MiB (lookups are cache-miss bound): the
    // slot packs the key (left << id_bits_ | right) in its low 2*id_bits_ bits and priority + 1
    // above them; 0 marks an empty slot.
    int32_t rank_of(int32_t left, int32_t right) const {
        const uint64_t key = (static_cast<uint64_t>(left) << id_bits_) | static_cast<uint64_t>(right);
        for (size_t i = slot_of(key);; i = (i + 1) & mask_) {
            const uint64_t slot = slots_[i];
            if (slot == 0) {
                return kNoMerge;
            }
            if ((slot & key_mask_) == key) {
                return static_cast<int32_t>((slot >> key_bits_) - 1);
            }
        }
    }
    size_t slot_of(uint64_t key) const { return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> shift_); }
    int32_t merged_of(int32_t priority) const {
        return priority_is_merged_id_ ? priority : merged_by_rank_[static_cast<size_t>(priority)];
    }
    void prefetch(int32_t left, int32_t right) const {
        const uint64_t key = (static_cast<uint64_t>(left) << id_bits_) | static_cast<uint64_t>(right);
        __builtin_prefetch(&slots_[slot_of(key)]);
    }

    // Quadratic scan over a compact array: for the short pieces of real text this beats the heap.
    void merge_small(std::string_view piece, std::vector<int32_t>* out) const;
    void merge_heap(std::string_view piece, std::vector<int32_t>* out) const;

    int32_t byte_ids_[256];
    // Rank of the merge of the single-byte tokens of bytes (a, b) at [a * 256 + b]: the first round of
    // lookups of every piece hits this small dense table instead of the big one.
    std::vector<int32_t> byte_pair_rank_;
    std::vector<uint64_t> slots_;
    std::vector<int32_t> merged_by_rank_;
    bool priority_is_merged_id_ = false;
    int id_bits_ = 0;
    int key_bits_ = 0;
    uint64_t key_mask_ = 0;
    size_t mask_ = 0;
    int shift_ = 64;
    uint64_t cache_owner_id_ = 0;  // distinguishes this model's entries in the per-thread piece cache
};

}  // namespace deepshard::model::internal
