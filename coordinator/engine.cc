#include "coordinator/engine.h"

#include <cmath>

#include <spdlog/spdlog.h>

#include "model/tokenizer/tokenizer.h"

namespace deepshard::coordinator {

namespace ctl = deepshard::control;
using std::chrono::milliseconds;

Engine::Engine(EngineOptions options, ModelInfo model, std::shared_ptr<const model::Tokenizer> tokenizer)
    : options_(std::move(options)), model_(std::move(model)), tokenizer_(std::move(tokenizer)),
      scheduler_(options_.scheduler) {}

StatusOr<std::unique_ptr<Engine>> Engine::start(EngineOptions options, ModelInfo model,
                                                std::shared_ptr<const model::Tokenizer> tokenizer) {
    options.scheduler.max_context = model.max_context;
    options.scheduler.eos_id = model.eos_id;
    options.scheduler.vocab_size = static_cast<int32_t>(model.vocab_size);
    options.control.model_fingerprint = model.fingerprint;
    std::unique_ptr<Engine> e(new Engine(std::move(options), std::move(model), std::move(tokenizer)));
    DS_ASSIGN_OR_RETURN(e->control_, ctl::ControlServer::start(e->options_.control, e.get()));
    e->thread_ = std::thread([raw = e.get()] { raw->loop(); });
    return e;
}

Engine::~Engine() {
    {
        std::lock_guard lock(mu_);
        stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
    control_.reset();  // tells the shard job to shut down
    // Nothing accepted is silently lost: whatever is still pending ends with an error.
    std::lock_guard lock(mu_);
    scheduler_.detach(unavailable("the coordinator is shutting down"));
}

StatusOr<std::shared_ptr<Request>> Engine::submit(GenerateParams params, bool want_logprobs) {
    metrics_->requests_total++;
    Status v = validate_params(params, model_);
    if (!v.ok()) {
        metrics_->requests_rejected++;
        return v;
    }
    auto req = std::make_shared<Request>(tokenizer_, params.stop, static_cast<int64_t>(params.prompt.size()),
                                         want_logprobs);
    req->set_metrics(metrics_);
    SequenceSpec spec;
    spec.prompt = std::move(params.prompt);
    spec.sampling = params.sampling;
    spec.max_tokens = params.max_tokens;
    spec.stop_token_ids = params.stop_token_ids;
    spec.ignore_eos = params.ignore_eos;
    if (params.timeout) spec.deadline = Clock::now() + *params.timeout;
    spec.sink = req;
    {
        std::lock_guard lock(mu_);
        if (!scheduler_.attached() && !options_.scheduler.retry) {
            metrics_->requests_rejected++;
            return unavailable("no shard job is serving the model (" + unavailable_reason_ + ")");
        }
        auto id = scheduler_.submit(std::move(spec), Clock::now());
        if (!id.ok()) {
            metrics_->requests_rejected++;
            return id.status();
        }
        req->set_id(*id);
        work_ = true;
    }
    cv_.notify_all();
    return req;
}

void Engine::cancel(const std::shared_ptr<Request>& request) {
    {
        std::lock_guard lock(mu_);
        scheduler_.cancel(request->id());
        work_ = true;
    }
    cv_.notify_all();
}

HealthInfo Engine::health() const {
    std::lock_guard lock(mu_);
    HealthInfo h;
    h.available = scheduler_.attached();
    if (leader_) {
        h.shard_job = leader_->hello.job_id;
        h.session_id = leader_->session_id;
    }
    if (!h.available) h.reason = unavailable_reason_;
    return h;
}

EngineStats Engine::stats() const {
    EngineStats s;
    {
        std::lock_guard lock(mu_);
        s.scheduler = scheduler_.stats();
    }
    s.requests_total = metrics_->requests_total.load();
    s.steps_total = metrics_->steps_total.load();
    s.ttft_p50 = metrics_->ttft.quantile(0.5);
    s.ttft_p99 = metrics_->ttft.quantile(0.99);
    s.itl_p50 = metrics_->itl.quantile(0.5);
    s.itl_p99 = metrics_->itl.quantile(0.99);
    const auto n = metrics_->step_time.count();
    s.step_mean = n ? metrics_->step_time.sum() / static_cast<double>(n) : 0;
    const auto m = metrics_->overhead.count();
    s.overhead_mean = m ? metrics_->overhead.sum() / static_cast<double>(m) : 0;
    return s;
}

std::string Engine::metrics_text() const {
    SchedulerStats st;
    bool up = false;
    {
        std::lock_guard lock(mu_);
        st = scheduler_.stats();
        up = scheduler_.attached();
    }
    std::string out;
    // Names follow the Prometheus conventions: unit suffix (plural, e.g. _blocks, _tokens,
    // _seconds), _total only on counters, _ratio for fractions. observability/ reads them.
    render_gauge(&out, "deepshard_shard_job_up", "1 when a shard job is registered", up ? 1 : 0);
    render_gauge(&out, "deepshard_queued_requests", "Requests waiting for admission (new and preempted)",
                 static_cast<double>(st.queued));
    render_gauge(&out, "deepshard_running_sequences", "Sequences holding KV on the shard job",
                 static_cast<double>(st.running));
    render_gauge(&out, "deepshard_in_flight_batches", "Step batches sent and not yet answered",
                 static_cast<double>(st.in_flight_batches));
    render_gauge(&out, "deepshard_kv_capacity_blocks", "KV blocks of the shard job (all KV domains)",
                 static_cast<double>(st.kv_blocks_total));
    render_gauge(&out, "deepshard_kv_used_blocks", "KV blocks holding sequences' or the prefix cache's tokens",
                 static_cast<double>(st.kv_blocks_used));
    render_gauge(&out, "deepshard_kv_cached_blocks", "KV blocks held by the prefix cache",
                 static_cast<double>(st.kv_blocks_cached));
    render_gauge(&out, "deepshard_kv_usage_ratio", "Used / capacity KV blocks",
                 st.kv_blocks_total ? static_cast<double>(st.kv_blocks_used) / static_cast<double>(st.kv_blocks_total) : 0);
    render_counter(&out, "deepshard_prompt_tokens_total", "Prompt tokens prefilled (tokens in, recomputation included)",
                   static_cast<double>(st.prompt_tokens));
    render_counter(&out, "deepshard_generation_tokens_total", "Tokens generated (tokens out)",
                   static_cast<double>(st.generated_tokens));
    render_counter(&out, "deepshard_prefix_cache_query_tokens_total", "Prompt tokens of admitted requests",
                   static_cast<double>(st.prefix_query_tokens));
    render_counter(&out, "deepshard_prefix_cache_hit_tokens_total",
                   "Prompt tokens served from the prefix cache instead of prefilled",
                   static_cast<double>(st.prefix_hit_tokens));
    render_counter(&out, "deepshard_kv_evicted_blocks_total", "Prefix-cache blocks evicted to make room",
                   static_cast<double>(st.kv_evicted_blocks));
    render_counter(&out, "deepshard_preemptions_total", "Running sequences preempted for lack of KV blocks",
                   static_cast<double>(st.preemptions));
    render_counter(&out, "deepshard_recomputed_tokens_total", "Tokens recomputed by preempted sequences",
                   static_cast<double>(st.recomputed_tokens));
    render_counter(&out, "deepshard_kv_exhausted_sequences_total",
                   "Sequences ended (length) because a whole KV pool could not hold them",
                   static_cast<double>(st.kv_exhausted));
    render_counter(&out, "deepshard_kv_view_mismatches_total",
                   "Step results whose KV report differed from the coordinator's view (must stay 0)",
                   static_cast<double>(st.kv_view_mismatches));
    render_counter(&out, "deepshard_requests_total", "Requests received", static_cast<double>(metrics_->requests_total));
    render_counter(&out, "deepshard_requests_rejected_total", "Requests rejected at submission",
                   static_cast<double>(metrics_->requests_rejected));
    metrics_->render_finished(&out);
    render_counter(&out, "deepshard_steps_total", "Step batches completed", static_cast<double>(metrics_->steps_total));
    render_counter(&out, "deepshard_shard_registrations_total", "Shard job registrations",
                   static_cast<double>(metrics_->shard_registrations));
    render_counter(&out, "deepshard_shard_losses_total", "Shard jobs lost", static_cast<double>(metrics_->shard_losses));
    metrics_->ttft.render(&out);
    metrics_->itl.render(&out);
    metrics_->step_time.render(&out);
    metrics_->shard_step.render(&out);
    metrics_->overhead.render(&out);
    return out;
}

void Engine::on_registered(const ctl::LeaderInfo& leader) {
    {
        std::lock_guard lock(mu_);
        pending_leader_ = leader;
        work_ = true;
    }
    cv_.notify_all();
}

void Engine::on_result(uint64_t session_id, ctl::StepResult result) {
    {
        std::lock_guard lock(mu_);
        pending_results_.emplace_back(session_id, std::move(result));
        work_ = true;
    }
    cv_.notify_all();
}

void Engine::on_lost(uint64_t session_id, const Status& reason) {
    {
        std::lock_guard lock(mu_);
        pending_lost_.emplace_back(session_id, reason);
        work_ = true;
    }
    cv_.notify_all();
}

void Engine::loop() {
    std::unique_lock lock(mu_);
    while (!stop_) {
        // The timeout bounds how late a deadline is noticed.
        cv_.wait_for(lock, milliseconds(20), [&] { return stop_ || work_; });
        if (stop_) break;
        work_ = false;
        const auto t0 = Clock::now();
        // Order matters: a loss followed by a new registration in the same wake-up must detach
        // the old session before attaching the new one.
        for (auto& [session, reason] : pending_lost_) {
            if (leader_ && leader_->session_id == session) {
                metrics_->shard_losses++;
                unavailable_reason_ = "shard job lost: " + reason.message();
                spdlog::warn("{}; {} in-flight requests {}", unavailable_reason_, scheduler_.stats().running,
                             options_.scheduler.retry ? "re-queued (--retry)" : "failed");
                scheduler_.detach(reason);
                leader_.reset();
                step_sent_.clear();
                pending_results_.clear();
            }
        }
        pending_lost_.clear();
        if (pending_leader_) {
            const auto& h = pending_leader_->hello;
            Capacity cap;
            cap.session_id = pending_leader_->session_id;
            cap.kv_blocks = h.kv_blocks;
            cap.kv_block_size = h.kv_block_size;
            cap.pipeline_stages = h.pipeline_stages;
            cap.max_batch_tokens = h.max_batch_tokens;
            cap.max_sequences = h.max_sequences;
            cap.vocab_size = h.vocab_size;
            cap.kv_domains = h.kv_domains;
            if (leader_) scheduler_.detach(unavailable("replaced by a new shard job"));
            scheduler_.attach(cap);
            leader_ = std::move(pending_leader_);
            pending_leader_.reset();
            metrics_->shard_registrations++;
            step_sent_.clear();
        }
        std::vector<std::pair<uint64_t, ctl::StepResult>> results = std::move(pending_results_);
        pending_results_.clear();
        const auto now = Clock::now();
        int steps = 0;
        for (auto& [session, r] : results) {
            if (!leader_ || leader_->session_id != session) continue;  // from a lost job
            auto sent = step_sent_.find(r.step_id);
            if (sent != step_sent_.end()) {
                metrics_->step_time.observe(std::chrono::duration<double>(now - sent->second).count());
                step_sent_.erase(sent);
            }
            metrics_->shard_step.observe(r.step_seconds);
            metrics_->steps_total++;
            ++steps;
            Status s = scheduler_.on_result(r, now);
            if (!s.ok()) {
                spdlog::error("dropping the shard job: {}", s.message());
                control_->shutdown_leader("protocol violation: " + s.message());
            }
        }
        scheduler_.expire(now);
        while (leader_) {
            auto batch = scheduler_.next_batch(now);
            if (!batch) break;
            step_sent_[batch->step_id] = Clock::now();
            Status s = control_->send_batch(leader_->session_id, *batch);
            if (!s.ok()) break;  // the loss notification follows and fails/re-queues the work
        }
        if (steps > 0) {
            const double spent = std::chrono::duration<double>(Clock::now() - t0).count();
            for (int i = 0; i < steps; ++i) metrics_->overhead.observe(spent / steps);
        }
    }
}

}  // namespace deepshard::coordinator
