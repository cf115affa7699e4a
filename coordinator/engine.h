// The coordinator's core: owns the control port (ControlServer), the Scheduler and the metrics,
// and runs the scheduling loop on its own thread. Front ends (HTTP, Thrift) only talk to this.
//
// Threading: submit/cancel/health/stats/metrics_text are thread-safe. The control server's I/O
// thread hands registrations, results and losses to the scheduling thread through an inbox with its
// own small lock, never the engine lock: however long the scheduling thread holds the engine lock
// (a big batch, a slow consumer), heartbeats and result reception go on. SequenceSink callbacks
// (Request) run on the scheduling thread with the engine lock held, so they must not call back
// into the Engine (Request only records and notifies).
//
// Step deadline: a step batch that has not come back within max(step_timeout_min,
// step_timeout_factor x the measured round trip for a batch of its size) means the shard job is
// lost, not slow: it is dropped and its requests fail (or are re-queued with --retry). The clock
// pauses while the control link is down and the session may still resume.
#pragma once

#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "control/control_server.h"
#include "coordinator/metrics.h"
#include "coordinator/params.h"
#include "coordinator/request.h"
#include "coordinator/scheduler.h"
#include "model/tokenizer/tokenizer.h"

namespace deepshard::coordinator {

struct EngineOptions {
    SchedulerOptions scheduler;  // max_context / eos / vocab are filled from ModelInfo
    control::ControlServerOptions control;
    std::chrono::milliseconds step_timeout_min{60000};
    double step_timeout_factor = 10;
};

struct HealthInfo {
    bool available = false;     // a shard job is registered (and the coordinator is not draining)
    bool draining = false;      // shutting down: finishing accepted requests, taking no new ones
    std::string reason;         // why not, when unavailable
    std::string shard_job;      // job_id of the registered job
    uint64_t session_id = 0;
};

struct EngineStats {
    SchedulerStats scheduler;
    uint64_t requests_total = 0;
    uint64_t steps_total = 0;
    double ttft_p50 = 0, ttft_p99 = 0, itl_p50 = 0, itl_p99 = 0, step_mean = 0, overhead_mean = 0;
};

class Engine : public control::ControlListener {
public:
    static StatusOr<std::unique_ptr<Engine>> start(EngineOptions options, ModelInfo model,
                                                   std::shared_ptr<const model::Tokenizer> tokenizer);
    ~Engine() override;

    // Validates and queues. kInvalidArgument (bad request), kResourceExhausted (queue full),
    // kUnavailable (no shard job and retry is off).
    StatusOr<std::shared_ptr<Request>> submit(GenerateParams params, bool want_logprobs);
    void cancel(const std::shared_ptr<Request>& request);
    // Shutdown: stops admitting (submit() answers kUnavailable "shutting down"), waits until every
    // accepted request has finished or `timeout` passed, then fails the rest with kUnavailable.
    // Returns how many had to be failed.
    size_t drain(std::chrono::milliseconds timeout);

    HealthInfo health() const;
    EngineStats stats() const;
    std::string metrics_text() const;
    const ModelInfo& model() const { return model_; }
    const std::shared_ptr<const model::Tokenizer>& tokenizer() const { return tokenizer_; }
    uint16_t control_port() const { return control_->port(); }

    // ControlListener (control I/O thread).
    void on_registered(const control::LeaderInfo& leader) override;
    void on_result(uint64_t session_id, control::StepResult result) override;
    void on_lost(uint64_t session_id, const Status& reason) override;
    void on_link(uint64_t session_id, bool connected, const Status& why) override;

private:
    struct InFlightStep {
        Clock::time_point sent;
        int64_t tokens = 0;
    };

    Engine(EngineOptions options, ModelInfo model, std::shared_ptr<const model::Tokenizer> tokenizer);
    void loop();
    void wake();
    // Deadline of a batch of `tokens` tokens from the round trips measured so far.
    std::chrono::milliseconds step_deadline(int64_t tokens) const;
    void check_step_deadlines(Clock::time_point now);

    EngineOptions options_;
    ModelInfo model_;
    std::shared_ptr<const model::Tokenizer> tokenizer_;
    std::shared_ptr<Metrics> metrics_ = std::make_shared<Metrics>();

    // Inbox from the control I/O thread and wake-ups (never held with mu_ taken after it).
    std::mutex inbox_mu_;
    std::condition_variable inbox_cv_;
    bool stop_ = false;
    bool work_ = false;
    std::optional<control::LeaderInfo> pending_leader_;
    std::vector<std::pair<uint64_t, Status>> pending_lost_;
    std::vector<std::pair<uint64_t, control::StepResult>> pending_results_;
    std::vector<std::tuple<uint64_t, bool, Status>> pending_link_;

    // Engine state (mu_).
    mutable std::mutex mu_;
    Scheduler scheduler_;
    std::optional<control::LeaderInfo> leader_;
    std::string unavailable_reason_ = "no shard job has registered yet";
    bool draining_ = false;
    std::map<uint64_t, InFlightStep> step_sent_;
    bool link_up_ = true;
    double est_step_s_ = 0;       // measured round trip per batch (moving average)
    double est_token_s_ = 0;      // and per token of a batch

    std::unique_ptr<control::ControlServer> control_;  // after the state it calls into
    std::thread thread_;
};

}  // namespace deepshard::coordinator
