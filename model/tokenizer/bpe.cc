// BPE merging in HF tokenizers' Word::merge_all order: repeatedly merge the adjacent pair with the
// lowest rank, leftmost first. Short pieces (nearly all of them) use a quadratic scan over a small
// array, which has no allocation and beats a heap at these sizes; long ones use the heap of
// candidate pairs. Per-thread direct-mapped caches skip merging for repeated pieces.
#include "model/tokenizer/bpe.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>

namespace deepshard::model::internal {

namespace {

// Longest piece merged by the quadratic scan; longer ones (rare: long CJK runs, long words) use the heap.
constexpr size_t kSmallPieceMax = 64;

uint64_t hash_bytes(std::string_view s) {
    uint64_t h = s.size() * 0x9E3779B97F4A7C15ull;
    size_t i = 0;
    for (; i + 8 <= s.size(); i += 8) {
        uint64_t w;
        std::memcpy(&w, s.data() + i, 8);
        h = (h ^ w) * 0xBF58476D1CE4E5B9ull;
        h ^= h >> 31;
    }
    uint64_t tail = 0;
    std::memcpy(&tail, s.data() + i, s.size() - i);
    h = (h ^ tail) * 0x94D049BB133111EBull;
    return h ^ (h >> 29);
}

// Per-thread piece → ids cache, direct-mapped and fixed size: no locks, no allocation per lookup, and
// a colliding piece simply replaces the old entry. It holds one model's entries at a time; a thread
// that alternates between two tokenizers just re-fills it.
template <size_t kKeyBytes, size_t kMaxIdsT, size_t kSlotBits>
struct PieceCache {
    static constexpr size_t kMaxKeyBytes = kKeyBytes;
    static constexpr size_t kMaxIds = kMaxIdsT;
    struct Entry {
        uint8_t key_len;  // 0 = empty (single-byte pieces never reach the cache)
        uint8_t num_ids;
        char key[kKeyBytes];
        int32_t ids[kMaxIds];
    };

    uint64_t owner_id = 0;
    std::unique_ptr<Entry[]> entries;

    // The slot for `piece`, after making sure the cache belongs to `owner`.
    Entry& slot(uint64_t owner, std::string_view piece) {
        if (owner_id != owner) {
            if (!entries) {
                entries = std::make_unique<Entry[]>(size_t{1} << kSlotBits);
            }
            for (size_t i = 0; i < (size_t{1} << kSlotBits); ++i) {
                entries[i].key_len = 0;
            }
            owner_id = owner;
        }
        return entries[hash_bytes(piece) >> (64 - kSlotBits)];
    }
};

// Short pieces (most words): one cache line an entry, 512 KiB. Long ones (Chinese clauses, long
// identifiers; a third of the bytes of mixed text): four lines an entry, 512 KiB.
using ShortPieceCache = PieceCache<22, 10, 13>;
using LongPieceCache = PieceCache<126, 32, 11>;
static_assert(sizeof(ShortPieceCache::Entry) == 64 && sizeof(LongPieceCache::Entry) == 256);
thread_local ShortPieceCache t_short_cache;
thread_local LongPieceCache t_long_cache;

std::atomic<uint64_t> g_next_model_id{1};

}  // namespace

StatusOr<std::unique_ptr<BpeModel>> BpeModel::create(const int32_t (&byte_ids)[256], const std::vector<Merge>& merges) {
    std::unique_ptr<BpeModel> model(new BpeModel());
    model->cache_owner_id_ = g_next_model_id.fetch_add(1);
    std::copy(std::begin(byte_ids), std::end(byte_ids), std::begin(model->byte_ids_));

    int32_t max_id = 0;
    for (int32_t id : byte_ids) {
        max_id = std::max(max_id, id);
    }
    for (const Merge& m : merges) {
        max_id = std::max({max_id, m.left, m.right, m.merged});
    }
    int id_bits = 1;
    while ((int64_t{1} << id_bits) <= max_id) {
        ++id_bits;
    }
    const int key_bits = 2 * id_bits;
    // Merged ids that grow with rank (which also rules out a repeated pair: it would merge to the
    // same id twice) let the slot hold the merged id as the priority.
    bool monotonic = true;
    for (size_t r = 1; r < merges.size() && monotonic; ++r) {
        monotonic = merges[r].merged > merges[r - 1].merged;
    }
    const uint64_t max_priority = monotonic ? static_cast<uint64_t>(max_id) : merges.size();
    if (key_bits >= 64 || max_priority + 1 >= (uint64_t{1} << (64 - key_bits))) {
        return unimplemented("BPE vocabulary too large for the merge table: max id " + std::to_string(max_id) +
                             " with " + std::to_string(merges.size()) + " merges");
    }
    model->id_bits_ = id_bits;
    model->key_bits_ = key_bits;
    model->key_mask_ = (uint64_t{1} << key_bits) - 1;
    size_t capacity = 1024;
    while (capacity < 2 * merges.size()) {
        capacity *= 2;
    }
    model->slots_.assign(capacity, 0);
    model->mask_ = capacity - 1;
    model->shift_ = 64 - __builtin_ctzll(capacity);
    model->merged_by_rank_.reserve(merges.size());
    for (const Merge& m : merges) {
        model->merged_by_rank_.push_back(m.merged);
    }
    model->priority_is_merged_id_ = monotonic;
    for (size_t r = 0; r < merges.size(); ++r) {
        const Merge& m = merges[r];
        const uint64_t priority = monotonic ? static_cast<uint64_t>(m.merged) : r;
        const uint64_t key = (static_cast<uint64_t>(m.left) << id_bits) | static_cast<uint64_t>(m.right);
        size_t i = model->slot_of(key);
        while (model->slots_[i] != 0 && (model->slots_[i] & model->key_mask_) != key) {
            i = (i + 1) & model->mask_;
        }
        // A repeated pair overwrites its slot: the last rank wins, as in HF (real files have none).
        model->slots_[i] = ((priority + 1) << key_bits) | key;
    }
    model->byte_pair_rank_.resize(256 * 256);
    for (int a = 0; a < 256; ++a) {
        for (int b = 0; b < 256; ++b) {
            model->byte_pair_rank_[a * 256 + b] = model->rank_of(byte_ids[a], byte_ids[b]);
        }
    }
    return model;
}

namespace {

// Looks `piece` up in `cache`; on a miss merges it with `merge` and remembers the result.
template <typename Cache, typename Merge>
void encode_cached(Cache& cache, uint64_t owner, std::string_view piece, std::vector<int32_t>* out, Merge&& merge) {
    typename Cache::Entry& entry = cache.slot(owner, piece);
    if (entry.key_len == piece.size() && std::memcmp(entry.key, piece.data(), piece.size()) == 0) {
        out->insert(out->end(), entry.ids, entry.ids + entry.num_ids);
        return;
    }
    const size_t first = out->size();
    merge();
    const size_t num_ids = out->size() - first;
    if (num_ids <= Cache::kMaxIds) {
        entry.key_len = static_cast<uint8_t>(piece.size());
        entry.num_ids = static_cast<uint8_t>(num_ids);
        std::memcpy(entry.key, piece.data(), piece.size());
        std::copy(out->begin() + static_cast<std::ptrdiff_t>(first), out->end(), entry.ids);
    }
}

}  // namespace

void BpeModel::encode_piece(std::string_view piece, std::vector<int32_t>* out) const {
    if (piece.size() == 1) {
        out->push_back(byte_ids_[static_cast<unsigned char>(piece[0])]);
        return;
    }
    auto merge = [&] {
        if (piece.size() <= kSmallPieceMax) {
            merge_small(piece, out);
        } else {
            merge_heap(piece, out);
        }
    };
    if (piece.size() <= ShortPieceCache::kMaxKeyBytes) {
        encode_cached(t_short_cache, cache_owner_id_, piece, out, merge);
    } else if (piece.size() <= LongPieceCache::kMaxKeyBytes) {
        encode_cached(t_long_cache, cache_owner_id_, piece, out, merge);
    } else {
        merge();
    }
}

void BpeModel::encode_piece_reference(std::string_view piece, std::vector<int32_t>* out) const {
    merge_heap(piece, out);
}

void BpeModel::merge_small(std::string_view piece, std::vector<int32_t>* out) const {
    struct Symbol {
        int32_t id;
        int32_t rank;  // rank of the merge with the next symbol, kNoMerge if none
    };
    Symbol syms[kSmallPieceMax];
    size_t n = piece.size();
    const auto* bytes = reinterpret_cast<const unsigned char*>(piece.data());
    for (size_t i = 0; i + 1 < n; ++i) {
        syms[i] = Symbol{byte_ids_[bytes[i]], byte_pair_rank_[bytes[i] * 256 + bytes[i + 1]]};
    }
    syms[n - 1] = Symbol{byte_ids_[bytes[n - 1]], kNoMerge};
    while (n > 1) {
        size_t best = 0;
        int32_t best_rank = kNoMerge;
        for (size_t i = 0; i + 1 < n; ++i) {
            if (syms[i].rank < best_rank) {  // strict: the leftmost of equal ranks wins
                best_rank = syms[i].rank;
                best = i;
            }
        }
        if (best_rank == kNoMerge) {
            break;
        }
        syms[best].id = merged_of(best_rank);
        std::memmove(&syms[best + 1], &syms[best + 2], (n - best - 2) * sizeof(Symbol));
        --n;
        // The two pairs touching the new symbol change; look both up (their loads overlap).
        if (best + 1 < n) {
            prefetch(syms[best].id, syms[best + 1].id);
        }
        if (best > 0) {
            syms[best - 1].rank = rank_of(syms[best - 1].id, syms[best].id);
        }
        syms[best].rank = best + 1 < n ? rank_of(syms[best].id, syms[best + 1].id) : kNoMerge;
    }
    for (size_t i = 0; i < n; ++i) {
        out->push_back(syms[i].id);
    }
}

void BpeModel::merge_heap(std::string_view piece, std::vector<int32_t>* out) const {
    struct Symbol {
        int32_t id;
        int32_t prev;  // index of the previous live symbol, -1 at the start
        int32_t next;  // index of the next live symbol, -1 at the end
        bool alive;
    };
    struct Candidate {
        int32_t rank;
        int32_t pos;  // index of the left symbol
        int32_t left;
        int32_t right;
        int32_t merged;
        // Min-heap on (rank, pos) through std::push_heap's max-heap.
        bool operator<(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    // Scratch reused across calls on this thread: long pieces are rare but may be very long.
    thread_local std::vector<Symbol> symbols;
    thread_local std::vector<Candidate> heap;

    const auto n = static_cast<int32_t>(piece.size());
    symbols.resize(static_cast<size_t>(n));
    heap.clear();
    for (int32_t i = 0; i < n; ++i) {
        symbols[i] = Symbol{byte_ids_[static_cast<unsigned char>(piece[i])], i - 1, i + 1 < n ? i + 1 : -1, true};
    }
    auto push_pair = [&](int32_t pos) {
        const int32_t next = symbols[pos].next;
        if (next < 0) {
            return;
        }
        const int32_t rank = rank_of(symbols[pos].id, symbols[next].id);
        if (rank != kNoMerge) {
            heap.push_back(Candidate{rank, pos, symbols[pos].id, symbols[next].id, merged_of(rank)});
            std::push_heap(heap.begin(), heap.end());
        }
    };
    for (int32_t i = 0; i + 1 < n; ++i) {
        push_pair(i);
    }

    while (!heap.empty()) {
        std::pop_heap(heap.begin(), heap.end());
        const Candidate top = heap.back();
        heap.pop_back();
        Symbol& left = symbols[top.pos];
        // Stale if either side has since been merged into something else.
        if (!left.alive || left.id != top.left || left.next < 0) {
            continue;
        }
        Symbol& right = symbols[left.next];
        if (right.id != top.right) {
            continue;
        }
        left.id = top.merged;
        right.alive = false;
        left.next = right.next;
        if (right.next >= 0) {
            symbols[right.next].prev = top.pos;
        }
        if (left.prev >= 0) {
            push_pair(left.prev);
        }
        push_pair(top.pos);
    }

    for (int32_t i = 0; n > 0 && i >= 0; i = symbols[i].next) {
        out->push_back(symbols[i].id);
    }
}

}  // namespace deepshard::model::internal
