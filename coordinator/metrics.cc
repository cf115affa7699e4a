#include "coordinator/metrics.h"

#include <fmt/format.h>

namespace deepshard::coordinator {

namespace {
std::vector<double> latency_bounds() {
    return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
}
std::string fmt_num(double v) {
    return fmt::format("{}", v);
}
}  // namespace

Histogram::Histogram(std::string name, std::string help, std::vector<double> bounds)
    : name_(std::move(name)), help_(std::move(help)), bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double v) {
    std::lock_guard lock(mu_);
    size_t i = 0;
    while (i < bounds_.size() && v > bounds_[i]) ++i;
    ++counts_[i];
    sum_ += v;
    ++count_;
}

void Histogram::render(std::string* out) const {
    std::lock_guard lock(mu_);
    *out += "# HELP " + name_ + " " + help_ + "\n# TYPE " + name_ + " histogram\n";
    uint64_t cum = 0;
    for (size_t i = 0; i < bounds_.size(); ++i) {
        cum += counts_[i];
        *out += name_ + "_bucket{le=\"" + fmt_num(bounds_[i]) + "\"} " + std::to_string(cum) + "\n";
    }
    cum += counts_.back();
    *out += name_ + "_bucket{le=\"+Inf\"} " + std::to_string(cum) + "\n";
    *out += name_ + "_sum " + fmt_num(sum_) + "\n";
    *out += name_ + "_count " + std::to_string(count_) + "\n";
}

double Histogram::quantile(double q) const {
    std::lock_guard lock(mu_);
    if (count_ == 0) return 0;
    const double target = q * static_cast<double>(count_);
    uint64_t cum = 0;
    for (size_t i = 0; i < counts_.size(); ++i) {
        cum += counts_[i];
        if (static_cast<double>(cum) >= target) return i < bounds_.size() ? bounds_[i] : bounds_.back();
    }
    return bounds_.back();
}

uint64_t Histogram::count() const {
    std::lock_guard lock(mu_);
    return count_;
}

double Histogram::sum() const {
    std::lock_guard lock(mu_);
    return sum_;
}

Metrics::Metrics()
    : ttft("deepshard_time_to_first_token_seconds", "Time from request arrival to its first token", latency_bounds()),
      itl("deepshard_inter_token_latency_seconds", "Time between consecutive tokens of a request", latency_bounds()),
      step_time("deepshard_step_seconds", "Round trip of one step batch (coordinator send to result)",
                latency_bounds()),
      shard_step("deepshard_shard_step_seconds", "Time the shard job reports for one step batch", latency_bounds()),
      overhead("deepshard_coordinator_overhead_seconds",
               "Coordinator CPU time per step: scheduling, encoding and result handling",
               {1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2}) {}

void Metrics::render_finished(std::string* out) const {
    static const char* const kReasons[] = {"", "stop", "length", "cancelled", "error"};
    *out += "# HELP deepshard_requests_finished_total Accepted requests by how they ended\n"
            "# TYPE deepshard_requests_finished_total counter\n";
    for (int r = 1; r < 5; ++r) {
        *out += std::string("deepshard_requests_finished_total{reason=\"") + kReasons[r] + "\"} " +
                std::to_string(requests_finished[r].load()) + "\n";
    }
}

void render_gauge(std::string* out, const std::string& name, const std::string& help, double value) {
    *out += "# HELP " + name + " " + help + "\n# TYPE " + name + " gauge\n" + name + " " + fmt_num(value) + "\n";
}

void render_counter(std::string* out, const std::string& name, const std::string& help, double value) {
    *out += "# HELP " + name + " " + help + "\n# TYPE " + name + " counter\n" + name + " " + fmt_num(value) + "\n";
}

}  // namespace deepshard::coordinator
