#include "model/kv_cache.h"

#include <gtest/gtest.h>

#include <set>

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
}

TEST(KvCacheTest, ReserveReleaseAndSlotsAreDistinct) {
    auto kv = KvCache::create(small_config(5));
    ASSERT_TRUE(kv.ok());
    ASSERT_TRUE(kv->reserve(1, 6).ok());  // 2 blocks
    ASSERT_TRUE(kv->reserve(2, 9).ok());  // 3 blocks
    EXPECT_EQ(kv->free_blocks(), 0);
    // No room: fails without changing anything.
    Status s = kv->reserve(3, 1);
    EXPECT_EQ(s.code(), StatusCode::kResourceExhausted);
    EXPECT_FALSE(kv->has(3));
    // Every (layer, seq, pos) gets its own storage.
    std::set<const float*> seen;
    for (int64_t l = 0; l < 2; ++l) {
        for (int64_t p = 0; p < 6; ++p) EXPECT_TRUE(seen.insert(kv->slot(l, 1, p)).second);
        for (int64_t p = 0; p < 9; ++p) EXPECT_TRUE(seen.insert(kv->slot(l, 2, p)).second);
    }
    kv->slot(1, 2, 8)[3] = 42.0f;
    const auto& table = kv->block_table(2);
    EXPECT_EQ(kv->block_slot(1, table[2], 0)[3], 42.0f);
    kv->release(1);
    EXPECT_EQ(kv->free_blocks(), 2);
    EXPECT_TRUE(kv->reserve(3, 8).ok());
    EXPECT_EQ(kv->capacity(3), 8);
    EXPECT_EQ(kv->blocks_needed(3, 9), 1);
}

TEST(KvCacheTest, EmptyBudgetIsAnError) {
    EXPECT_EQ(KvCache::create(small_config(0)).status().code(), StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace deepshard::model
