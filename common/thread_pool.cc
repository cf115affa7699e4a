#include "common/thread_pool.h"

#include <algorithm>
#include <chrono>

#if defined(__linux__)
#include <sys/resource.h>
#endif

#include "common/env.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define DS_CPU_RELAX() _mm_pause()
#else
#define DS_CPU_RELAX() std::atomic_signal_fence(std::memory_order_seq_cst)
#endif

namespace deepshard {

namespace {
// Set while a thread runs a chunk: a nested region then runs inline instead of deadlocking on the
// pool (kernels may be called from inside another parallel loop).
thread_local bool t_in_parallel_region = false;

struct RegionGuard {
    bool saved;
    RegionGuard() : saved(t_in_parallel_region) { t_in_parallel_region = true; }
    ~RegionGuard() { t_in_parallel_region = saved; }
};

int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// Spins until pred() holds or `budget_ns` passed; true when pred() held. Reads the clock only every
// 64 polls (a clock read costs as much as dozens of polls).
template <typename Pred>
bool spin_until(Pred&& pred, int64_t budget_ns) {
    if (pred()) return true;
    if (budget_ns <= 0) return false;
    const int64_t deadline = now_ns() + budget_ns;
    for (uint32_t i = 1;; ++i) {
        DS_CPU_RELAX();
        if (pred()) return true;
        if ((i & 63) == 0 && now_ns() > deadline) return false;
    }
}

// This thread's count of involuntary context switches (preemptions), or -1 where unknown.
long involuntary_switches() {
#if defined(__linux__) && defined(RUSAGE_THREAD)
    rusage ru{};
    if (getrusage(RUSAGE_THREAD, &ru) == 0) return ru.ru_nivcsw;
#endif
    return -1;
}
}  // namespace

int64_t ThreadPool::spin_budget() const {
    // Per thread: when it last looked at its preemption count and until when it keeps to the
    // contended budget. getrusage is a syscall, so it is asked at most every kCheckNs.
    constexpr int64_t kCheckNs = 2'000'000;     // 2 ms
    constexpr int64_t kHoldNs = 200'000'000;    // 200 ms after the last preemption seen
    struct State {
        int64_t next_check = 0, contended_until = 0;
        long switches = -1;
    };
    thread_local State st;
    if (spin_contended_ns_ >= spin_ns_) return spin_ns_;
    const int64_t now = now_ns();
    if (now >= st.next_check) {
        st.next_check = now + kCheckNs;
        const long sw = involuntary_switches();
        if (st.switches >= 0 && sw > st.switches) st.contended_until = now + kHoldNs;
        st.switches = sw;
    }
    return now < st.contended_until ? spin_contended_ns_ : spin_ns_;
}

ThreadPool::ThreadPool(int num_threads, int64_t spin_us) {
    if (num_threads <= 0) {
        num_threads = static_cast<int>(env_int("DS_NUM_THREADS"));
    }
    if (num_threads <= 0) {
        num_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    }
    if (spin_us < 0) {
        spin_us = env_int("DS_SPIN_US");
    }
    spin_ns_ = std::max<int64_t>(0, spin_us) * 1000;
    spin_contended_ns_ = std::max<int64_t>(0, env_int("DS_SPIN_CONTENDED_US")) * 1000;
    for (int i = 1; i < num_threads; ++i) {
        workers_.emplace_back([this] { worker_loop(); });
    }
}

ThreadPool::~ThreadPool() {
    stop_.store(true);
    generation_.fetch_add(2);
    generation_.notify_all();
    for (auto& t : workers_) {
        t.join();
    }
}

bool ThreadPool::in_parallel_region() { return t_in_parallel_region; }

void ThreadPool::work_on(const Region& r) {
    RegionGuard guard;
    for (;;) {
        const int64_t c = next_chunk_.fetch_add(1, std::memory_order_relaxed);
        if (c >= r.chunks) {
            return;
        }
        // After a failure the remaining chunks are claimed but not run (early exit).
        if (!failed_.load(std::memory_order_relaxed)) {
            const int64_t b = r.bounds != nullptr ? (*r.bounds)[c] : c * r.step;
            const int64_t e = r.bounds != nullptr ? (*r.bounds)[c + 1] : std::min(r.n, b + r.step);
            try {
                if (b < e) (*r.fn)(b, e);
            } catch (...) {
                std::lock_guard<std::mutex> lock(error_mu_);
                if (!error_) error_ = std::current_exception();
                failed_.store(true, std::memory_order_relaxed);
            }
        }
        if (unfinished_.fetch_sub(1, std::memory_order_acq_rel) == 1 && caller_waiting_.load()) {
            unfinished_.notify_all();
        }
    }
}

void ThreadPool::worker_loop() {
    // Generation 0 is the pool's state before any region (regions published before this thread got
    // to run are still fresh to it).
    uint32_t seen = 0;
    for (;;) {
        // A new region is an even generation different from the last one served; odd = the caller
        // is rewriting region_.
        auto fresh = [&] {
            const uint32_t g = generation_.load(std::memory_order_acquire);
            return g != seen && (g & 1u) == 0;
        };
        if (!spin_until(fresh, spin_budget())) {
            while (!fresh() && !stop_.load()) {
                sleepers_.fetch_add(1);
                const uint32_t g = generation_.load();
                if (g == seen || (g & 1u) != 0) {
                    generation_.wait(g);
                }
                sleepers_.fetch_sub(1);
            }
        }
        if (stop_.load()) {
            return;
        }
        // Announce ourselves before reading the region: the caller waits for active_workers_ to
        // drop to zero before it rewrites region_, so what we read below stays valid.
        active_workers_.fetch_add(1);
        const uint32_t g = generation_.load();
        if (g == seen || (g & 1u) != 0) {
            active_workers_.fetch_sub(1);
            continue;
        }
        seen = g;
        const Region r = region_;
        work_on(r);
        active_workers_.fetch_sub(1, std::memory_order_release);
    }
}

void ThreadPool::run_region(const Region& r) {
    if (r.chunks <= 0) {
        return;
    }
    if (workers_.empty() || r.chunks == 1 || t_in_parallel_region) {
        RegionGuard guard;
        for (int64_t c = 0; c < r.chunks; ++c) {
            const int64_t b = r.bounds != nullptr ? (*r.bounds)[c] : c * r.step;
            const int64_t e = r.bounds != nullptr ? (*r.bounds)[c + 1] : std::min(r.n, b + r.step);
            if (b < e) (*r.fn)(b, e);
        }
        return;
    }
    std::lock_guard<std::mutex> call_lock(call_mu_);
    // Odd generation: workers that wake now back off. Then wait for stragglers of the previous
    // region to leave before region_ is rewritten.
    generation_.fetch_add(1);
    while (!spin_until([&] { return active_workers_.load() == 0; }, spin_budget())) {
        std::this_thread::yield();
    }
    region_ = r;
    next_chunk_.store(0, std::memory_order_relaxed);
    unfinished_.store(r.chunks, std::memory_order_relaxed);
    failed_.store(false, std::memory_order_relaxed);
    error_ = nullptr;
    generation_.fetch_add(1);  // even: published
    if (sleepers_.load() > 0) {
        generation_.notify_all();
    }
    work_on(r);
    // Wait for the chunks other threads hold: spin first, then sleep on the counter.
    if (!spin_until([&] { return unfinished_.load(std::memory_order_acquire) == 0; }, spin_budget())) {
        caller_waiting_.store(true);
        for (int64_t v = unfinished_.load(); v != 0; v = unfinished_.load()) {
            unfinished_.wait(v);
        }
        caller_waiting_.store(false);
    }
    if (failed_.load()) {
        std::exception_ptr e;
        {
            std::lock_guard<std::mutex> lock(error_mu_);
            e = error_;
            error_ = nullptr;
        }
        std::rethrow_exception(e);
    }
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t grain) {
    if (n <= 0) {
        return;
    }
    grain = std::max<int64_t>(1, grain);
    const int64_t units = (n + grain - 1) / grain;
    const int64_t nt = std::min<int64_t>(size(), units);
    // nt contiguous chunks of whole grains, the first `extra` one grain longer.
    std::vector<int64_t> bounds(static_cast<size_t>(nt) + 1);
    const int64_t per = units / nt, extra = units % nt;
    int64_t u = 0;
    for (int64_t i = 0; i < nt; ++i) {
        bounds[i] = std::min(n, u * grain);
        u += per + (i < extra ? 1 : 0);
    }
    bounds[nt] = n;
    Region r;
    r.fn = &fn;
    r.n = n;
    r.chunks = nt;
    r.bounds = &bounds;
    run_region(r);
}

void ThreadPool::parallel_for_dynamic(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t chunk) {
    if (n <= 0) {
        return;
    }
    Region r;
    r.fn = &fn;
    r.n = n;
    r.step = std::max<int64_t>(1, chunk);
    r.chunks = (n + r.step - 1) / r.step;
    run_region(r);
}

void ThreadPool::parallel_tasks(int64_t num_tasks, const std::function<void(int64_t)>& fn) {
    const std::function<void(int64_t, int64_t)> each = [&](int64_t b, int64_t e) {
        for (int64_t t = b; t < e; ++t) fn(t);
    };
    parallel_for_dynamic(num_tasks, each, 1);
}

ThreadPool& ThreadPool::global() {
    static ThreadPool pool;
    return pool;
}

}  // namespace deepshard
