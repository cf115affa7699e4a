// Helpers shared by the benchmarks: the STREAM-triad reference figure every bandwidth number is
// quoted against (measured in the same process, on the same thread pool, right before the run),
// medians, and the process's peak resident memory.
#pragma once

#include <cstdint>
#include <vector>

namespace deepshard::bench {

double now_seconds();
// CPU time of the whole process (all threads), seconds.
double process_cpu_seconds();
double median(std::vector<double> v);
// STREAM triad a = b + s*c over three arrays of `mb` MiB each, on ThreadPool::global(); returns
// the median GB/s of `reps` runs (STREAM's byte count: 3 arrays, no write-allocate).
double stream_triad_gbs(int64_t mb, int reps);
// Peak resident set size of this process in bytes (getrusage).
int64_t peak_rss_bytes();
// Current resident set size in bytes (/proc/self/statm).
int64_t current_rss_bytes();

}  // namespace deepshard::bench
