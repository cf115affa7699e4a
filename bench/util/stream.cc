#include "bench/util/stream.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>

#include "common/thread_pool.h"

namespace deepshard::bench {

double now_seconds() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double process_cpu_seconds() {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

double median(std::vector<double> v) {
    if (v.empty()) {
        return 0;
    }
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double stream_triad_gbs(int64_t mb, int reps) {
    const int64_t n = mb * (1 << 20) / 4;
    std::vector<float> a(static_cast<size_t>(n)), b(static_cast<size_t>(n)), c(static_cast<size_t>(n));
    auto& pool = ThreadPool::global();
    // First touch from the workers, as the triad itself will run (NUMA placement).
    pool.parallel_for(n, [&](int64_t s, int64_t e) {
        for (int64_t i = s; i < e; ++i) {
            a[i] = 0.0f;
            b[i] = 1.0f;
            c[i] = 2.0f;
        }
    });
    std::vector<double> gbs;
    for (int r = 0; r < reps + 1; ++r) {
        const double t0 = now_seconds();
        pool.parallel_for(
            n,
            [&](int64_t s, int64_t e) {
                float* __restrict pa = a.data();
                const float* __restrict pb = b.data();
                const float* __restrict pc = c.data();
                for (int64_t i = s; i < e; ++i) {
                    pa[i] = pb[i] + 3.0f * pc[i];
                }
            },
            4096);
        const double dt = now_seconds() - t0;
        if (r > 0) {  // the first pass warms up
            gbs.push_back(3.0 * static_cast<double>(n) * 4 / dt / 1e9);
        }
    }
    if (a[static_cast<size_t>(n / 2)] != 7.0f) {
        std::fprintf(stderr, "STREAM triad produced a wrong result\n");
        std::exit(1);
    }
    return median(gbs);
}

int64_t peak_rss_bytes() {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return static_cast<int64_t>(u.ru_maxrss) * 1024;
}

int64_t current_rss_bytes() {
    FILE* f = std::fopen("/proc/self/statm", "r");
    if (f == nullptr) {
        return 0;
    }
    long pages = 0, resident = 0;
    const int got = std::fscanf(f, "%ld %ld", &pages, &resident);
    std::fclose(f);
    return got == 2 ? static_cast<int64_t>(resident) * sysconf(_SC_PAGESIZE) : 0;
}

}  // namespace deepshard::bench
