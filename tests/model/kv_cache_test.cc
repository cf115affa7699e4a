// KV cache: the shared block bookkeeping (model/kv_blocks.h) and the CPU engine's float32 storage
// over it (model/kv_cache.h).
#include "model/kv_cache.h"

#include <gtest/gtest.h>

#include <set>

#include "model/kv_blocks.h"

namespace deepshard::model {
namespace {

KvCacheConfig small_config(int64_t blocks) {
    KvCacheConfig c;
    c.num_layers = 2;
    c.latent_dim = 8;
    c.rope_dim = 4;
    c.block_size = 4;
    c.num_blocks = blocks;
    return c;
}

TEST(KvCacheTest, BudgetSizesThePool) {
    KvCacheConfig c = small_config(0);
    EXPECT_EQ(c.block_bytes(), 2 * 4 * 12 * 4);
    EXPECT_EQ(c.blocks_for_budget(10 * c.block_bytes() + 5), 10);
    c.bytes_per_value = 2;  // a BF16 device cache holds twice the blocks in the same budget
    EXPECT_EQ(c.blocks_for_budget(10 * 2 * 4 * 12 * 4 + 5), 20);
}

TEST(KvBlockManagerTest, ReserveReleaseCapacity) {
    auto m = KvBlockManager::create(5, 4);
    ASSERT_TRUE(m.ok());
    ASSERT_TRUE(m->reserve(1, 6).ok());  // 2 blocks
    ASSERT_TRUE(m->reserve(2, 9).ok());  // 3 blocks
    EXPECT_EQ(m->free_blocks(), 0);
    EXPECT_EQ(m->used_blocks(), 5);
    EXPECT_EQ(m->num_sequences(), 2);
    // No room: fails without changing anything.
    Status s = m->reserve(3, 1);
    EXPECT_EQ(s.code(), StatusCode::kResourceExhausted);
    EXPECT_FALSE(m->has(3));
    // Block ids are distinct across sequences and low ids go first.
    std::set<int32_t> ids(m->block_table(1).begin(), m->block_table(1).end());
    ids.insert(m->block_table(2).begin(), m->block_table(2).end());
    EXPECT_EQ(ids, (std::set<int32_t>{0, 1, 2, 3, 4}));
    EXPECT_EQ(m->block_table(1)[0], 0);
    m->release(1);
    EXPECT_EQ(m->free_blocks(), 2);
    EXPECT_TRUE(m->reserve(3, 8).ok());
    EXPECT_EQ(m->capacity(3), 8);
    EXPECT_EQ(m->blocks_needed(3, 9), 1);
    EXPECT_EQ(m->blocks_needed(3, 8), 0);
    m->release(99);  // unknown: ignored
    EXPECT_EQ(m->free_blocks(), 0);
}

// Prefix caching: a published block is shared by reference count; a fork starts from cached
// blocks; the pool gets a block back only when neither a sequence nor a cache entry holds it.
TEST(KvBlockManagerTest, SharedBlocksAreReferenceCounted) {
    auto m = KvBlockManager::create(6, 4);
    ASSERT_TRUE(m.ok());
    ASSERT_TRUE(m->reserve(1, 10).ok());  // blocks 0, 1, 2 (the last one partly filled)
    const std::vector<int32_t> a = m->block_table(1);
    ASSERT_TRUE(m->publish(100, 1, 0).ok());
    ASSERT_TRUE(m->publish(101, 1, 1).ok());
    EXPECT_EQ(m->cached_blocks(), 2);
    EXPECT_EQ(m->refs(a[0]), 2);
    EXPECT_EQ(m->used_blocks(), 3);  // sharing allocates nothing

    // Sequence 2 starts from the two cached blocks: same physical blocks, then its own.
    const std::vector<uint64_t> prefix = {100, 101};
    ASSERT_TRUE(m->fork(2, prefix).ok());
    EXPECT_EQ(m->capacity(2), 8);
    EXPECT_FALSE(m->writable(2, 4));  // inside the shared prefix
    EXPECT_TRUE(m->writable(2, 8));
    ASSERT_TRUE(m->reserve(2, 9).ok());
    EXPECT_EQ(m->block_table(2)[0], a[0]);
    EXPECT_EQ(m->block_table(2)[1], a[1]);
    EXPECT_NE(m->block_table(2)[2], a[2]);
    EXPECT_EQ(m->refs(a[1]), 3);
    EXPECT_EQ(m->used_blocks(), 4);

    // Releasing the first sequence frees only its private block; the cache keeps the shared ones.
    m->release(1);
    EXPECT_EQ(m->used_blocks(), 3);
    EXPECT_EQ(m->refs(a[0]), 2);
    // Evicting an entry a sequence still uses keeps the block until that sequence ends.
    ASSERT_TRUE(m->evict(101).ok());
    EXPECT_EQ(m->used_blocks(), 3);
    m->release(2);
    EXPECT_EQ(m->used_blocks(), 1);  // block a[0], held by entry 100 alone
    ASSERT_TRUE(m->evict(100).ok());
    EXPECT_EQ(m->free_blocks(), 6);
    EXPECT_EQ(m->cached_blocks(), 0);
}

TEST(KvBlockManagerTest, BadCacheOperationsChangeNothing) {
    auto m = KvBlockManager::create(4, 4);
    ASSERT_TRUE(m.ok());
    ASSERT_TRUE(m->reserve(1, 4).ok());
    EXPECT_EQ(m->publish(7, 9, 0).code(), StatusCode::kInvalidArgument);  // unknown sequence
    EXPECT_EQ(m->publish(7, 1, 1).code(), StatusCode::kInvalidArgument);  // past its table
    ASSERT_TRUE(m->publish(7, 1, 0).ok());
    EXPECT_EQ(m->publish(7, 1, 0).code(), StatusCode::kInvalidArgument);  // duplicate id
    const std::vector<uint64_t> bad = {7, 8};
    EXPECT_EQ(m->fork(2, bad).code(), StatusCode::kInvalidArgument);  // entry 8 unknown
    EXPECT_FALSE(m->has(2));
    EXPECT_EQ(m->refs(m->block_table(1)[0]), 2);
    const std::vector<uint64_t> good = {7};
    EXPECT_EQ(m->fork(1, good).code(), StatusCode::kInvalidArgument);  // already holds blocks
    EXPECT_EQ(m->evict(8).code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(m->used_blocks(), 1);
}

TEST(KvBlockManagerTest, BadSizesAreErrors) {
    EXPECT_EQ(KvBlockManager::create(0, 4).status().code(), StatusCode::kResourceExhausted);
    EXPECT_EQ(KvBlockManager::create(4, 0).status().code(), StatusCode::kInvalidArgument);
}

TEST(KvCacheTest, SlotsAreDistinctAndLayerViewsAgree) {
    auto kv = KvCache::create(small_config(5));
    ASSERT_TRUE(kv.ok());
    ASSERT_TRUE(kv->blocks().reserve(1, 6).ok());
    ASSERT_TRUE(kv->blocks().reserve(2, 9).ok());
    // Every (layer, seq, pos) gets its own storage.
    std::set<const float*> seen;
    for (int64_t l = 0; l < 2; ++l) {
        for (int64_t p = 0; p < 6; ++p) EXPECT_TRUE(seen.insert(kv->slot(l, 1, p)).second);
        for (int64_t p = 0; p < 9; ++p) EXPECT_TRUE(seen.insert(kv->slot(l, 2, p)).second);
    }
    kv->slot(1, 2, 8)[3] = 42.0f;
    const auto& table = kv->blocks().block_table(2);
    EXPECT_EQ(kv->block_slot(1, table[2], 0)[3], 42.0f);
    // The kernels' view of layer 1 finds the same slot.
    const kernels::LatentCache c = kv->layer(1);
    EXPECT_EQ(c.slot(table[2], 0), kv->slot(1, 2, 8));
    EXPECT_EQ(c.latent_dim, 8);
    EXPECT_EQ(c.rope_dim, 4);
}

TEST(KvCacheTest, EmptyBudgetIsAnError) {
    EXPECT_EQ(KvCache::create(small_config(0)).status().code(), StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace deepshard::model
