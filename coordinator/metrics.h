// Prometheus metrics of the coordinator: counters, gauges (filled at scrape time by the Engine)
// and fixed-bucket histograms. All methods are thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace deepshard::coordinator {

class Histogram {
public:
    Histogram(std::string name, std::string help, std::vector<double> bounds);
    void observe(double v);
    // Text exposition lines (HELP, TYPE, buckets, sum, count).
    void render(std::string* out) const;
    // Quantile estimate from the buckets (upper bound of the bucket holding it); for Stats.
    double quantile(double q) const;
    uint64_t count() const;
    double sum() const;

private:
    std::string name_;
    std::string help_;
    std::vector<double> bounds_;
    mutable std::mutex mu_;
    std::vector<uint64_t> counts_;  // per bucket (not cumulative), last = +Inf
    double sum_ = 0;
    uint64_t count_ = 0;
};

struct Metrics {
    Metrics();
    Histogram ttft;           // seconds from request arrival to its first token
    Histogram itl;            // seconds between consecutive tokens of a request
    Histogram step_time;      // coordinator send -> result, per step batch
    Histogram shard_step;     // the shard job's own time per step
    Histogram overhead;       // coordinator CPU time per step (scheduling, encoding, result handling)
    std::atomic<uint64_t> requests_total{0};
    std::atomic<uint64_t> requests_rejected{0};  // 4xx/overloaded at admission
    // Accepted requests by how they ended, indexed by FinishReason (kNone unused).
    std::atomic<uint64_t> requests_finished[5] = {};
    std::atomic<uint64_t> steps_total{0};
    std::atomic<uint64_t> shard_registrations{0};
    std::atomic<uint64_t> shard_losses{0};
    std::atomic<uint64_t> step_timeouts{0};    // steps that did not come back by their deadline

    // deepshard_requests_finished_total{reason="stop|length|cancelled|error"}.
    void render_finished(std::string* out) const;
};

// Appends one metric in text format.
void render_gauge(std::string* out, const std::string& name, const std::string& help, double value);
void render_counter(std::string* out, const std::string& name, const std::string& help, double value);

}  // namespace deepshard::coordinator
