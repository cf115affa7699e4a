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
//
// Disaggregation (prefill/decode, DESIGN §3): with `prefill_listen` set, a second shard job (its own
// plan, started with --kv-listen) may register on that port as the prefill job; the job on the main
// control port is then the decode job. A request whose prompt has at least pd_min_prompt_tokens
// tokens goes through both: the prefill job computes the KV of prompt[0, n-1) (a "prefill leg", its
// own scheduler and KV mirror) and stages it under a transfer id with a random capability key; the
// request then joins the decode job's scheduler, whose first chunk fetches those positions from the
// prefill ranks over UCX (comm/ucx/kv_transfer.h) instead of computing them, and whose next chunk
// computes the last prompt token and samples: the decode job's sampler is the only one, so greedy and
// seeded outputs are those of a single job. Whatever fails on the way (the prefill job lost, a fetch
// that fails or times out) falls back to computing on the decode job, so nothing is lost; without a
// prefill job, or for short prompts, the decode job serves requests alone, as without disaggregation.
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
    // Disaggregation: the prefill job's control port ("" = none). It shares the secret, TLS and
    // timeouts of `control`; prefill_plan_json is what its Hello must carry (unchecked when unset).
    std::string prefill_listen;
    std::optional<std::string> prefill_plan_json;
    int64_t pd_min_prompt_tokens = 16;  // shorter prompts are served by the decode job alone
    std::chrono::milliseconds step_timeout_min{60000};
    double step_timeout_factor = 10;
};

struct HealthInfo {
    bool available = false;     // a shard job is registered (and the coordinator is not draining)
    bool draining = false;      // shutting down: finishing accepted requests, taking no new ones
    std::string reason;         // why not, when unavailable
    std::string shard_job;      // job_id of the registered job
    uint64_t session_id = 0;
    bool prefill_configured = false;  // disaggregation: a prefill port is open
    std::string prefill_job;          // job_id of the registered prefill job ("" = none)
};

struct EngineStats {
    SchedulerStats scheduler;
    SchedulerStats prefill;     // the prefill job's legs (disaggregation)
    uint64_t pd_handoffs = 0;   // requests handed from the prefill job to the decode job
    uint64_t pd_fallbacks = 0;  // prefill legs that failed: the decode job computed the prompt
    uint64_t requests_total = 0;
    uint64_t steps_total = 0;
    double ttft_p50 = 0, ttft_p99 = 0, itl_p50 = 0, itl_p99 = 0, step_mean = 0, overhead_mean = 0;
};

class Engine {
public:
    static StatusOr<std::unique_ptr<Engine>> start(EngineOptions options, ModelInfo model,
                                                   std::shared_ptr<const model::Tokenizer> tokenizer);
    ~Engine();

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
    uint16_t control_port() const { return main_.control->port(); }
    uint16_t prefill_control_port() const { return prefill_ ? prefill_->control->port() : 0; }

private:
    struct InFlightStep {
        Clock::time_point sent;
        int64_t tokens = 0;
    };
    // What the control I/O thread handed over since the last wake-up.
    struct Inbox {
        std::optional<control::LeaderInfo> registered;
        std::vector<std::pair<uint64_t, Status>> lost;
        std::vector<std::pair<uint64_t, control::StepResult>> results;
        std::vector<std::tuple<uint64_t, bool, Status>> links;
    };
    // One registered shard job: its control port, scheduler (KV mirror) and step clocks. The
    // decode (or only) job is main_, the prefill job prefill_.
    struct Job final : control::ControlListener {
        Job(Engine* e, const char* n, SchedulerOptions o) : engine(e), name(n), scheduler(std::move(o)) {}
        // ControlListener (control I/O thread): only fill the inbox.
        void on_registered(const control::LeaderInfo& leader) override;
        void on_result(uint64_t session_id, control::StepResult result) override;
        void on_lost(uint64_t session_id, const Status& reason) override;
        void on_link(uint64_t session_id, bool connected, const Status& why) override;

        Engine* engine;
        const char* name;  // "shard job" / "prefill job"
        Inbox inbox;       // engine->inbox_mu_
        // engine->mu_:
        Scheduler scheduler;
        std::optional<control::LeaderInfo> leader;
        std::string unavailable_reason = "no shard job has registered yet";
        std::map<uint64_t, InFlightStep> step_sent;
        bool link_up = true;
        double est_step_s = 0;   // measured round trip per batch (moving average)
        double est_token_s = 0;  // and per token of a batch
        std::unique_ptr<control::ControlServer> control;
    };
    // A request on its way through the prefill job (by transfer id).
    struct Handoff {
        std::shared_ptr<Request> request;
        SequenceSpec spec;  // for the decode job (sink = request)
        control::KvExport exp;
        uint64_t prefill_seq = 0;
        int32_t domain = 0;
    };
    class PrefillLeg;

    Engine(EngineOptions options, ModelInfo model, std::shared_ptr<const model::Tokenizer> tokenizer);
    void loop();
    void wake();
    // The loop's work for one job (mu_ held): losses, links, a registration, results. Returns the
    // number of results applied.
    int apply_inbox(Job& job, Inbox& in, Clock::time_point t0);
    void send_batches(Job& job);
    // Deadline of a batch of `tokens` tokens from the round trips measured so far.
    std::chrono::milliseconds step_deadline(const Job& job, int64_t tokens) const;
    void check_step_deadlines(Job& job, Clock::time_point now);
    // Disaggregation (coordinator/engine_pd.cc, mu_ held).
    bool disaggregate(const SequenceSpec& spec) const;
    Status submit_prefill_leg(const std::shared_ptr<Request>& req, SequenceSpec spec);
    void finish_legs();
    bool validate_prefill_job(const control::LeaderInfo& leader, std::string* why) const;
    void render_pd_metrics(std::string* out) const;

    EngineOptions options_;
    ModelInfo model_;
    std::shared_ptr<const model::Tokenizer> tokenizer_;
    std::shared_ptr<Metrics> metrics_ = std::make_shared<Metrics>();

    // Wake-ups (never held with mu_ taken after it); also guards the jobs' inboxes.
    std::mutex inbox_mu_;
    std::condition_variable inbox_cv_;
    bool stop_ = false;
    bool work_ = false;

    // Engine state (mu_).
    mutable std::mutex mu_;
    bool draining_ = false;
    Job main_;
    std::unique_ptr<Job> prefill_;
    uint64_t next_transfer_ = 1;
    std::map<uint64_t, Handoff> handoffs_;
    std::map<const Request*, uint64_t> leg_of_;  // request -> its transfer while in the prefill job
    std::vector<std::tuple<uint64_t, FinishReason, Status>> legs_done_;
    uint64_t pd_handoffs_ = 0;
    uint64_t pd_fallbacks_ = 0;

    std::thread thread_;
};

}  // namespace deepshard::coordinator
