#include "common/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

namespace deepshard {
namespace {

void busy_wait_us(int us) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(us);
    while (std::chrono::steady_clock::now() < until) {
    }
}

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
    std::atomic<int> bad{0}, chunks{0};
    pool.parallel_for(1000, [&](int64_t b, int64_t e) {
        chunks++;
        if (b % 64 != 0 || (e % 64 != 0 && e != 1000)) bad++;
    }, 64);
    EXPECT_EQ(bad.load(), 0);
    EXPECT_EQ(chunks.load(), 3);  // about size() chunks
}

TEST(ThreadPoolTest, DynamicChunksHaveTheGivenSizeAndCoverAll) {
    ThreadPool pool(2);
    for (int64_t chunk : {1, 5, 64, 5000}) {
        std::vector<std::atomic<int>> hits(1000);
        std::atomic<int> bad{0};
        pool.parallel_for_dynamic(1000, [&](int64_t b, int64_t e) {
            if (b % chunk != 0 || (e - b != chunk && e != 1000)) bad++;
            for (int64_t i = b; i < e; ++i) hits[i]++;
        }, chunk);
        EXPECT_EQ(bad.load(), 0) << "chunk " << chunk;
        for (int64_t i = 0; i < 1000; ++i) ASSERT_EQ(hits[i].load(), 1) << "chunk " << chunk << " i=" << i;
    }
}

TEST(ThreadPoolTest, TasksRunOnEveryThreadAndOnlyOnce) {
    ThreadPool pool(2, /*spin_us=*/100000);
    std::vector<std::atomic<int>> hits(64);
    std::mutex mu;
    std::set<std::thread::id> threads;
    pool.parallel_tasks(64, [&](int64_t t) {
        hits[t]++;
        {
            std::lock_guard<std::mutex> lock(mu);
            threads.insert(std::this_thread::get_id());
        }
        // The first task waits (bounded) for a second thread to claim work, so the test does not
        // depend on the worker being scheduled within some time on a loaded machine.
        if (t == 0) {
            const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
            for (;;) {
                {
                    std::lock_guard<std::mutex> lock(mu);
                    if (threads.size() > 1) break;
                }
                if (std::chrono::steady_clock::now() > until) break;
                std::this_thread::yield();
            }
        }
    });
    for (auto& h : hits) ASSERT_EQ(h.load(), 1);
    EXPECT_EQ(threads.size(), 2u);
}

TEST(ThreadPoolTest, ManyBackToBackRegionsAreAllComplete) {
    // The spinning hand-off between regions: every region must see the previous one finished.
    ThreadPool pool(3, /*spin_us=*/1000);
    std::vector<int64_t> data(256, 0);
    for (int r = 0; r < 20000; ++r) {
        pool.parallel_for(256, [&](int64_t b, int64_t e) {
            for (int64_t i = b; i < e; ++i) data[i] += 1;
        }, 16);
    }
    for (int64_t v : data) ASSERT_EQ(v, 20000);
}

TEST(ThreadPoolTest, WorkersWakeFromSleep) {
    // Spin budget 0: workers sleep on the futex between regions and must still be woken.
    ThreadPool pool(2, /*spin_us=*/0);
    for (int r = 0; r < 200; ++r) {
        std::atomic<int64_t> sum{0};
        pool.parallel_for_dynamic(100, [&](int64_t b, int64_t e) {
            for (int64_t i = b; i < e; ++i) sum += i;
        }, 7);
        ASSERT_EQ(sum.load(), 4950);
        if (r % 50 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
}

TEST(ThreadPoolTest, NestedRegionsRunInline) {
    ThreadPool pool(2);
    std::atomic<int> inner{0};
    pool.parallel_for(4, [&](int64_t b, int64_t e) {
        EXPECT_TRUE(ThreadPool::in_parallel_region());
        for (int64_t i = b; i < e; ++i) {
            const auto self = std::this_thread::get_id();
            pool.parallel_for(10, [&](int64_t ib, int64_t ie) {
                EXPECT_EQ(std::this_thread::get_id(), self);  // inline on the calling thread
                inner += static_cast<int>(ie - ib);
            });
        }
    });
    EXPECT_EQ(inner.load(), 40);
    EXPECT_FALSE(ThreadPool::in_parallel_region());
}

TEST(ThreadPoolTest, ConcurrentCallersAreSerialized) {
    ThreadPool pool(2);
    std::atomic<int64_t> total{0};
    auto caller = [&] {
        for (int r = 0; r < 300; ++r) {
            pool.parallel_for(64, [&](int64_t b, int64_t e) {
                total += e - b;
            });
        }
    };
    std::vector<std::thread> ts;
    for (int i = 0; i < 3; ++i) ts.emplace_back(caller);
    for (auto& t : ts) t.join();
    EXPECT_EQ(total.load(), 3 * 300 * 64);
}

TEST(ThreadPoolTest, ExceptionIsRethrownAfterRunningChunksFinish) {
    ThreadPool pool(2, /*spin_us=*/100000);
    for (int trial = 0; trial < 5; ++trial) {
        std::atomic<int> running{0};
        bool caught = false;
        try {
            pool.parallel_tasks(16, [&](int64_t t) {
                running++;
                busy_wait_us(300);
                if (t == 3) {
                    running--;
                    throw std::runtime_error("task 3 failed");
                }
                running--;
            });
        } catch (const std::runtime_error& e) {
            caught = true;
            EXPECT_STREQ(e.what(), "task 3 failed");
        }
        EXPECT_TRUE(caught);
        EXPECT_EQ(running.load(), 0) << "a chunk was still running when parallel_for returned";
    }
    // The pool is usable afterwards and reports no stale error.
    std::atomic<int64_t> sum{0};
    pool.parallel_for(1000, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) sum += 1;
    });
    EXPECT_EQ(sum.load(), 1000);
}

TEST(ThreadPoolTest, ChunksAfterAFailureAreSkipped) {
    // Early exit: once a chunk has thrown, chunks not yet started do not run. The first task to run
    // throws; each task takes 50 µs, so the other thread gets through a few tasks at most before the
    // failure is recorded. Scheduling can delay the recording on a loaded machine, so it is enough
    // that one of several trials skips most of the work.
    ThreadPool pool(2, /*spin_us=*/100000);
    int best = 1 << 30;
    for (int trial = 0; trial < 10; ++trial) {
        std::atomic<int> started{0}, ran{0};
        EXPECT_THROW(pool.parallel_tasks(400,
                                         [&](int64_t) {
                                             if (started++ == 0) throw std::logic_error("first");
                                             busy_wait_us(50);
                                             ran++;
                                         }),
                     std::logic_error);
        best = std::min(best, ran.load());
    }
    EXPECT_LT(best, 200);
}

TEST(ThreadPoolTest, InlineExceptionPropagatesWithOneThread) {
    ThreadPool pool(1);
    EXPECT_THROW(pool.parallel_for(10, [](int64_t, int64_t) { throw std::runtime_error("x"); }), std::runtime_error);
    int calls = 0;
    pool.parallel_for(10, [&](int64_t b, int64_t e) { calls += static_cast<int>(e - b); });
    EXPECT_EQ(calls, 10);
}

TEST(ThreadPoolTest, DestroysWhileWorkersSleep) {
    for (int i = 0; i < 20; ++i) {
        ThreadPool pool(3, /*spin_us=*/0);
        pool.parallel_for(30, [](int64_t, int64_t) {});
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
}

}  // namespace
}  // namespace deepshard
