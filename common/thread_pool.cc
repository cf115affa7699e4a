#include "common/thread_pool.h"

#include <algorithm>

#include "common/env.h"

namespace deepshard {

namespace {
// Set while a thread runs a parallel_for chunk: a nested parallel_for then runs inline instead of
// deadlocking on the pool (kernels may be called from inside another parallel loop).
thread_local bool t_in_parallel_region = false;

struct RegionGuard {
    bool saved;
    RegionGuard() : saved(t_in_parallel_region) { t_in_parallel_region = true; }
    ~RegionGuard() { t_in_parallel_region = saved; }
};
}  // namespace

ThreadPool::ThreadPool(int num_threads) {
    if (num_threads <= 0) {
        num_threads = static_cast<int>(env_int("DS_NUM_THREADS"));
    }
    if (num_threads <= 0) {
        num_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    }
    for (int i = 1; i < num_threads; ++i) {
        workers_.emplace_back([this, i] { worker_loop(i); });
    }
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lock(mu_);
        stop_ = true;
    }
    cv_start_.notify_all();
    for (auto& t : workers_) {
        t.join();
    }
}

void ThreadPool::worker_loop(int index) {
    uint64_t seen = 0;
    for (;;) {
        std::pair<int64_t, int64_t> range;
        const std::function<void(int64_t, int64_t)>* fn;
        {
            std::unique_lock<std::mutex> lock(mu_);
            cv_start_.wait(lock, [&] { return stop_ || generation_ != seen; });
            if (stop_) {
                return;
            }
            seen = generation_;
            range = ranges_[index];
            fn = fn_;
        }
        if (range.first < range.second) {
            RegionGuard guard;
            (*fn)(range.first, range.second);
        }
        {
            std::lock_guard<std::mutex> lock(mu_);
            if (--pending_ == 0) {
                cv_done_.notify_one();
            }
        }
    }
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t grain) {
    if (n <= 0) {
        return;
    }
    grain = std::max<int64_t>(1, grain);
    const int64_t units = (n + grain - 1) / grain;
    const int nt = size();
    if (nt == 1 || units == 1 || t_in_parallel_region) {
        RegionGuard guard;
        fn(0, n);
        return;
    }
    std::lock_guard<std::mutex> call_lock(call_mu_);
    std::vector<std::pair<int64_t, int64_t>> ranges(nt);
    const int64_t per = units / nt, extra = units % nt;
    int64_t u = 0;
    for (int i = 0; i < nt; ++i) {
        int64_t cnt = per + (i < extra ? 1 : 0);
        int64_t b = std::min(n, u * grain), e = std::min(n, (u + cnt) * grain);
        ranges[i] = {b, e};
        u += cnt;
    }
    {
        std::lock_guard<std::mutex> lock(mu_);
        ranges_ = ranges;
        fn_ = &fn;
        pending_ = nt - 1;
        ++generation_;
    }
    cv_start_.notify_all();
    if (ranges[0].first < ranges[0].second) {
        RegionGuard guard;
        fn(ranges[0].first, ranges[0].second);
    }
    std::unique_lock<std::mutex> lock(mu_);
    cv_done_.wait(lock, [&] { return pending_ == 0; });
}

ThreadPool& ThreadPool::global() {
    static ThreadPool pool;
    return pool;
}

}  // namespace deepshard
