// A fixed pool of worker threads for data-parallel loops (kernels split rows across cores).
//
// Persistent and spinning: a decode step runs a few hundred short parallel regions (one per matmul
// or fused op), so the workers do not sleep between them. After a region a worker spins on the
// pool's generation counter for a spin budget (DS_SPIN_US, default 2000 µs) and only then sleeps
// on a futex (std::atomic::wait), so an idle process stops burning CPU within milliseconds while
// back-to-back regions start in about a microsecond instead of a condition-variable wake-up.
// Spinning backfires on an oversubscribed machine (more runnable threads than cores: other jobs
// compiling, a shared VM): a spinning thread spends its fair share of the core polling, the
// scheduler charges it for that, and the thread it waits for may be the one it keeps off the core.
// So a thread that finds it has been preempted (its involuntary context switches rose; checked at
// most every 2 ms) spins only DS_SPIN_CONTENDED_US (default 0: sleep at once) for the next 200 ms.
// Measured on a 2-vCPU VM at load 6-8: decode 25-30% and prefill 40-50% faster than spinning 2 ms.
//
// Work is claimed dynamically: a region is cut into chunks and every thread (the caller included)
// takes the next unclaimed chunk until none is left. A worker that is descheduled (a loaded or
// shared machine) therefore delays only the chunk it holds, never the chunks it has not started.
//
// Semantics shared by every entry point:
//  - the caller blocks until every chunk has run, and runs chunks itself;
//  - a region started from inside a chunk runs inline on that thread (no deadlock on nesting);
//  - concurrent callers from different threads are serialized (one region at a time);
//  - if a chunk throws, chunks not yet started are skipped, the region waits for the running ones,
//    and the first exception is rethrown to the caller (the pool stays usable).
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace deepshard {

class ThreadPool {
public:
    // num_threads <= 0: hardware concurrency (or DS_NUM_THREADS). spin_us < 0: DS_SPIN_US or 2000.
    explicit ThreadPool(int num_threads = 0, int64_t spin_us = -1);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return static_cast<int>(workers_.size()) + 1; }

    // Calls fn(begin, end) over [0, n) split into about size() contiguous chunks, each a
    // multiple of `grain` (except the last).
    void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t grain = 1);

    // Calls fn(begin, end) over [0, n) in chunks of exactly `chunk` indices (the last may be
    // shorter), claimed one at a time by whichever thread is free: load balancing for uneven work
    // or a machine shared with other processes.
    void parallel_for_dynamic(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t chunk);

    // Calls fn(task) for every task in [0, num_tasks), each claimed by whichever thread is free.
    void parallel_tasks(int64_t num_tasks, const std::function<void(int64_t)>& fn);

    // The process-wide pool used by the kernels.
    static ThreadPool& global();

    // True on a thread that is running a chunk of some region (nested regions run inline).
    static bool in_parallel_region();

private:
    // One region: chunk c covers [c * step, min(n, (c + 1) * step)) unless `bounds` is set.
    struct Region {
        const std::function<void(int64_t, int64_t)>* fn = nullptr;
        int64_t n = 0;
        int64_t step = 0;
        int64_t chunks = 0;
        const std::vector<int64_t>* bounds = nullptr;  // chunk c = [bounds[c], bounds[c+1])
    };

    void run_region(const Region& r);
    // Claims and runs chunks of the current region until none is left.
    void work_on(const Region& r);
    void worker_loop();

    // The calling thread's spin budget now: spin_ns_, or spin_contended_ns_ while it is being
    // preempted (see the header comment).
    int64_t spin_budget() const;

    std::vector<std::thread> workers_;
    int64_t spin_ns_ = 0;
    int64_t spin_contended_ns_ = 0;

    // Published region; read by workers after they observe a new generation.
    Region region_;
    alignas(64) std::atomic<uint32_t> generation_{0};  // odd while region_ is rewritten
    alignas(64) std::atomic<int64_t> next_chunk_{0};
    alignas(64) std::atomic<int64_t> unfinished_{0};  // chunks not yet completed (or skipped)
    alignas(64) std::atomic<int> active_workers_{0};  // workers inside the current region
    std::atomic<int> sleepers_{0};                     // workers blocked in generation_.wait
    std::atomic<bool> stop_{false};
    std::atomic<bool> caller_waiting_{false};         // caller sleeps on unfinished_
    std::atomic<bool> failed_{false};
    std::mutex error_mu_;
    std::exception_ptr error_;
    std::mutex call_mu_;  // serializes callers
};

}  // namespace deepshard
