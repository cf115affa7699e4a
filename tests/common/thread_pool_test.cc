#include "common/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <vector>

namespace deepshard {
namespace {

TEST(ThreadPoolTest, CoversEveryIndexExactlyOnce) {
    ThreadPool pool(4);
    for (int64_t n : {1, 3, 7, 100, 1001}) {
        std::vector<std::atomic<int>> hits(n);
        pool.parallel_for(n, [&](int64_t b, int64_t e) {
            for (int64_t i = b; i < e; ++i) hits[i]++;
        }, 8);
        for (int64_t i = 0; i < n; ++i) {
            ASSERT_EQ(hits[i].load(), 1) << "n=" << n << " i=" << i;
        }
    }
}

TEST(ThreadPoolTest, ChunksAreMultiplesOfGrain) {
    ThreadPool pool(3);
    std::atomic<int> bad{0};
    pool.parallel_for(1000, [&](int64_t b, int64_t e) {
        if (b % 64 != 0 || (e % 64 != 0 && e != 1000)) bad++;
    }, 64);
    EXPECT_EQ(bad.load(), 0);
}

}  // namespace
}  // namespace deepshard
