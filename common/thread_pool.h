// A fixed pool of worker threads for data-parallel loops (kernels split rows across cores).
// parallel_for blocks the caller until every chunk has run; the caller's thread runs chunk 0.
// A parallel_for called from inside a chunk runs inline on the calling thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace deepshard {

class ThreadPool {
public:
    // num_threads <= 0: hardware concurrency (or DS_NUM_THREADS).
    explicit ThreadPool(int num_threads = 0);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return static_cast<int>(workers_.size()) + 1; }

    // Calls fn(begin, end) over [0, n) split into about size() contiguous chunks, each a
    // multiple of `grain` (except the last).
    void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t grain = 1);

    // The process-wide pool used by the kernels.
    static ThreadPool& global();

private:
    void worker_loop(int index);

    std::vector<std::thread> workers_;
    std::mutex mu_;
    std::condition_variable cv_start_;
    std::condition_variable cv_done_;
    const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
    std::vector<std::pair<int64_t, int64_t>> ranges_;
    uint64_t generation_ = 0;
    int pending_ = 0;
    bool stop_ = false;
    std::mutex call_mu_;  // serializes parallel_for callers
};

}  // namespace deepshard
