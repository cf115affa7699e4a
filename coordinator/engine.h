// The coordinator's core: owns the control port (ControlServer), the Scheduler and the metrics,
// and runs the scheduling loop on its own thread. Front ends (HTTP, Thrift) only talk to this.
//
// Threading: submit/cancel/health/stats/metrics_text are thread-safe. The scheduling thread and
// the control server's I/O thread feed each other through a mutex-protected state; SequenceSink
// callbacks (Request) run on the scheduling thread with the engine lock held, so they must not
// call back into the Engine (Request only records and notifies).
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
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
};

struct HealthInfo {
    bool available = false;     // a shard job is registered
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

private:
    Engine(EngineOptions options, ModelInfo model, std::shared_ptr<const model::Tokenizer> tokenizer);
    void loop();

    EngineOptions options_;
    ModelInfo model_;
    std::shared_ptr<const model::Tokenizer> tokenizer_;
    std::shared_ptr<Metrics> metrics_ = std::make_shared<Metrics>();

    mutable std::mutex mu_;
    std::condition_variable cv_;
    Scheduler scheduler_;
    bool stop_ = false;
    bool work_ = false;
    std::optional<control::LeaderInfo> pending_leader_;
    std::vector<std::pair<uint64_t, Status>> pending_lost_;
    std::vector<std::pair<uint64_t, control::StepResult>> pending_results_;
    std::optional<control::LeaderInfo> leader_;
    std::string unavailable_reason_ = "no shard job has registered yet";
    std::map<uint64_t, Clock::time_point> step_sent_;

    std::unique_ptr<control::ControlServer> control_;  // after the state it calls into
    std::thread thread_;
};

}  // namespace deepshard::coordinator
