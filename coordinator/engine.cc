#include "coordinator/engine.h"

#include <cmath>

#include <spdlog/spdlog.h>

#include "model/tokenizer/tokenizer.h"

namespace deepshard::coordinator {

namespace ctl = deepshard::control;
using std::chrono::milliseconds;

Engine::Engine(EngineOptions options, ModelInfo model, std::shared_ptr<const model::Tokenizer> tokenizer)
    : options_(std::move(options)), model_(std::move(model)), tokenizer_(std::move(tokenizer)),
      main_(this, "shard job", options_.scheduler) {
    if (!options_.prefill_listen.empty()) {
        // Prefill legs never retry on their own: a lost prefill job's legs go to the decode job.
        SchedulerOptions po = options_.scheduler;
        po.retry = false;
        po.draft_tokens = 0;
        prefill_ = std::make_unique<Job>(this, "prefill job", po);
        prefill_->unavailable_reason = "no prefill job has registered yet";
    }
}

StatusOr<std::unique_ptr<Engine>> Engine::start(EngineOptions options, ModelInfo model,
                                                std::shared_ptr<const model::Tokenizer> tokenizer) {
    options.scheduler.max_context = model.max_context;
    options.scheduler.eos_id = model.eos_id;
    options.scheduler.vocab_size = static_cast<int32_t>(model.vocab_size);
    options.control.model_fingerprint = model.fingerprint;
    std::unique_ptr<Engine> e(new Engine(std::move(options), std::move(model), std::move(tokenizer)));
    DS_ASSIGN_OR_RETURN(e->main_.control, ctl::ControlServer::start(e->options_.control, &e->main_));
    if (e->prefill_) {
        ctl::ControlServerOptions po = e->options_.control;
        po.listen = e->options_.prefill_listen;
        po.plan_json = e->options_.prefill_plan_json;
        DS_ASSIGN_OR_RETURN(e->prefill_->control, ctl::ControlServer::start(po, e->prefill_.get()));
    }
    e->thread_ = std::thread([raw = e.get()] { raw->loop(); });
    return e;
}

Engine::~Engine() {
    {
        std::lock_guard lock(inbox_mu_);
        stop_ = true;
    }
    inbox_cv_.notify_all();
    if (thread_.joinable()) thread_.join();
    main_.control.reset();  // tells the shard job to shut down
    if (prefill_) prefill_->control.reset();
    // Nothing accepted is silently lost: whatever is still pending ends with an error.
    std::lock_guard lock(mu_);
    if (prefill_) prefill_->scheduler.detach(unavailable("the coordinator is shutting down"));
    for (auto& [t, h] : handoffs_) {
        h.request->on_finish(FinishReason::kError, unavailable("the coordinator is shutting down"));
    }
    handoffs_.clear();
    legs_done_.clear();
    main_.scheduler.detach(unavailable("the coordinator is shutting down"));
}

void Engine::wake() {
    {
        std::lock_guard lock(inbox_mu_);
        work_ = true;
    }
    inbox_cv_.notify_all();
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
        if (draining_) {
            metrics_->requests_rejected++;
            return unavailable("the coordinator is shutting down");
        }
        if (!main_.scheduler.attached() && !options_.scheduler.retry) {
            metrics_->requests_rejected++;
            return unavailable("no shard job is serving the model (" + main_.unavailable_reason + ")");
        }
        if (disaggregate(spec)) {
            Status s = submit_prefill_leg(req, std::move(spec));
            if (!s.ok()) {
                metrics_->requests_rejected++;
                return s;
            }
            wake();
            return req;
        }
        auto id = main_.scheduler.submit(std::move(spec), Clock::now());
        if (!id.ok()) {
            metrics_->requests_rejected++;
            return id.status();
        }
        req->set_id(*id);
    }
    wake();
    return req;
}

void Engine::cancel(const std::shared_ptr<Request>& request) {
    {
        std::lock_guard lock(mu_);
        auto leg = leg_of_.find(request.get());
        if (leg != leg_of_.end()) {
            auto h = handoffs_.find(leg->second);
            if (h != handoffs_.end() && prefill_) prefill_->scheduler.cancel(h->second.prefill_seq);
        } else {
            main_.scheduler.cancel(request->id());
        }
    }
    wake();
}

size_t Engine::drain(milliseconds timeout) {
    {
        std::lock_guard lock(mu_);
        draining_ = true;
    }
    const auto until = Clock::now() + timeout;
    for (;;) {
        {
            std::lock_guard lock(mu_);
            const bool legs_idle = !prefill_ || prefill_->scheduler.idle();
            if (main_.scheduler.idle() && legs_idle && handoffs_.empty()) return 0;
            if (Clock::now() >= until) {
                const SchedulerStats st = main_.scheduler.stats();
                const size_t left = st.queued + st.running + handoffs_.size();
                spdlog::warn("shutdown: {} request(s) still running after {} ms; ending them with an error", left,
                             timeout.count());
                const Status why = unavailable("the coordinator is shutting down (the request did not finish within "
                                               "the " + std::to_string(timeout.count()) + " ms drain period)");
                main_.scheduler.fail_all(why);
                if (prefill_) prefill_->scheduler.fail_all(why);  // their legs end here, in finish_legs
                for (auto& [t, h] : handoffs_) h.request->on_finish(FinishReason::kError, why);
                handoffs_.clear();
                leg_of_.clear();
                legs_done_.clear();
                return left;
            }
        }
        std::this_thread::sleep_for(milliseconds(10));
    }
}

HealthInfo Engine::health() const {
    std::lock_guard lock(mu_);
    HealthInfo h;
    h.draining = draining_;
    h.available = main_.scheduler.attached() && !draining_;
    if (main_.leader) {
        h.shard_job = main_.leader->hello.job_id;
        h.session_id = main_.leader->session_id;
    }
    h.prefill_configured = prefill_ != nullptr;
    if (prefill_ && prefill_->leader) h.prefill_job = prefill_->leader->hello.job_id;
    if (!h.available) h.reason = draining_ ? "the coordinator is shutting down" : main_.unavailable_reason;
    return h;
}

EngineStats Engine::stats() const {
    EngineStats s;
    {
        std::lock_guard lock(mu_);
        s.scheduler = main_.scheduler.stats();
        if (prefill_) s.prefill = prefill_->scheduler.stats();
        s.pd_handoffs = pd_handoffs_;
        s.pd_fallbacks = pd_fallbacks_;
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
    bool link = false;
    std::string out, pd;
    {
        std::lock_guard lock(mu_);
        st = main_.scheduler.stats();
        up = main_.scheduler.attached();
        link = up && main_.link_up;
        if (prefill_) render_pd_metrics(&pd);
    }
    const ctl::ControlServerStats cs = main_.control->stats();
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
    if (options_.scheduler.draft_tokens > 0) {
        // Speculative decoding (--speculative mtp): acceptance = accepted / draft tokens; tokens per
        // verify step = 1 + accepted / verify steps.
        render_counter(&out, "deepshard_spec_draft_tokens_total", "MTP draft tokens sent for verification",
                       static_cast<double>(st.spec_draft_tokens));
        render_counter(&out, "deepshard_spec_accepted_tokens_total", "MTP draft tokens accepted by the main model",
                       static_cast<double>(st.spec_accepted_tokens));
        render_counter(&out, "deepshard_spec_verify_steps_total", "Decode chunks that verified MTP drafts",
                       static_cast<double>(st.spec_verify_steps));
        render_gauge(&out, "deepshard_spec_acceptance_ratio", "Accepted / draft tokens since start",
                     st.spec_draft_tokens ? static_cast<double>(st.spec_accepted_tokens) /
                                                static_cast<double>(st.spec_draft_tokens)
                                          : 0);
        render_gauge(&out, "deepshard_spec_tokens_per_step", "Tokens emitted per verify step since start",
                     st.spec_verify_steps ? 1.0 + static_cast<double>(st.spec_accepted_tokens) /
                                                      static_cast<double>(st.spec_verify_steps)
                                          : 0);
    }
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
    render_counter(&out, "deepshard_step_timeouts_total", "Step batches that missed their deadline (job dropped)",
                   static_cast<double>(metrics_->step_timeouts));
    render_gauge(&out, "deepshard_control_link_up", "1 when the registered shard job's control link is connected",
                 link ? 1 : 0);
    render_counter(&out, "deepshard_control_resumes_total", "Control sessions resumed after a broken link",
                   static_cast<double>(cs.resumes));
    render_gauge(&out, "deepshard_control_pending_connections", "Control connections not (yet) authenticated",
                 static_cast<double>(cs.pending_connections));
    render_counter(&out, "deepshard_control_auth_failures_total", "Control connections with a wrong proof",
                   static_cast<double>(cs.auth_failures));
    render_counter(&out, "deepshard_control_evicted_total",
                   "Unauthenticated control connections pushed out by newer ones (cap reached)",
                   static_cast<double>(cs.pending_evicted));
    render_counter(&out, "deepshard_control_handshake_timeouts_total", "Control handshakes not finished in time",
                   static_cast<double>(cs.handshake_timeouts));
    metrics_->ttft.render(&out);
    metrics_->itl.render(&out);
    metrics_->step_time.render(&out);
    metrics_->shard_step.render(&out);
    metrics_->overhead.render(&out);
    out += pd;
    return out;
}

// The ControlListener methods run on the control I/O thread: they only fill the inbox.
void Engine::Job::on_registered(const ctl::LeaderInfo& leader) {
    {
        std::lock_guard lock(engine->inbox_mu_);
        inbox.registered = leader;
        engine->work_ = true;
    }
    engine->inbox_cv_.notify_all();
}

void Engine::Job::on_result(uint64_t session_id, ctl::StepResult result) {
    {
        std::lock_guard lock(engine->inbox_mu_);
        inbox.results.emplace_back(session_id, std::move(result));
        engine->work_ = true;
    }
    engine->inbox_cv_.notify_all();
}

void Engine::Job::on_lost(uint64_t session_id, const Status& reason) {
    {
        std::lock_guard lock(engine->inbox_mu_);
        inbox.lost.emplace_back(session_id, reason);
        engine->work_ = true;
    }
    engine->inbox_cv_.notify_all();
}

void Engine::Job::on_link(uint64_t session_id, bool connected, const Status& why) {
    {
        std::lock_guard lock(engine->inbox_mu_);
        inbox.links.emplace_back(session_id, connected, why);
        engine->work_ = true;
    }
    engine->inbox_cv_.notify_all();
}

milliseconds Engine::step_deadline(const Job& job, int64_t tokens) const {
    const double expected =
        std::max(job.est_step_s, job.est_token_s * static_cast<double>(std::max<int64_t>(tokens, 1)));
    const auto derived = milliseconds(static_cast<int64_t>(options_.step_timeout_factor * expected * 1000.0));
    return std::max(options_.step_timeout_min, derived);
}

void Engine::check_step_deadlines(Job& job, Clock::time_point now) {
    if (!job.leader || !job.link_up) return;
    for (const auto& [step_id, st] : job.step_sent) {
        const milliseconds limit = step_deadline(job, st.tokens);
        if (now - st.sent <= limit) continue;
        const uint64_t session = job.leader->session_id;
        char buf[256];
        std::snprintf(buf, sizeof(buf),
                      "step %llu (%lld tokens) did not come back within %lld ms (measured step time %.0f ms); "
                      "the %s is treated as lost",
                      static_cast<unsigned long long>(step_id), static_cast<long long>(st.tokens),
                      static_cast<long long>(limit.count()), job.est_step_s * 1000.0, job.name);
        const Status why = deadline_exceeded(buf);
        metrics_->shard_losses++;
        metrics_->step_timeouts++;
        job.unavailable_reason = std::string(job.name) + " lost: " + why.message();
        spdlog::error("{}; {} in-flight requests {}", why.message(), job.scheduler.stats().running,
                      &job == &main_ ? (options_.scheduler.retry ? "re-queued (--retry)" : "failed")
                                     : "handed to the decode job");
        job.scheduler.detach(why);
        job.leader.reset();
        job.step_sent.clear();
        job.control->drop_leader(session, why.message());
        return;
    }
}

int Engine::apply_inbox(Job& job, Inbox& in, Clock::time_point t0) {
    const bool is_main = &job == &main_;
    const char* fate = !is_main ? "handed to the decode job" : options_.scheduler.retry ? "re-queued (--retry)" : "failed";
    // Order matters: a loss followed by a new registration in the same wake-up must detach the old
    // session before attaching the new one.
    for (auto& [session, reason] : in.lost) {
        if (!job.leader || job.leader->session_id != session) continue;
        // kCancelled: the job left on purpose (its leader sent Shutdown, e.g. on SIGTERM).
        const bool left = reason.code() == StatusCode::kCancelled;
        const size_t running = job.scheduler.stats().running;
        if (left) {
            job.unavailable_reason = std::string(job.name) + " left: " + reason.message();
            spdlog::info("{}; {} in-flight requests {}", job.unavailable_reason, running, fate);
        } else {
            metrics_->shard_losses++;
            job.unavailable_reason = std::string(job.name) + " lost: " + reason.message();
            spdlog::warn("{}; {} in-flight requests {}", job.unavailable_reason, running, fate);
        }
        job.scheduler.detach(left ? unavailable(job.unavailable_reason) : reason);
        job.leader.reset();
        job.step_sent.clear();
        in.results.clear();
    }
    for (auto& [session, connected, why] : in.links) {
        if (!job.leader || job.leader->session_id != session) continue;
        job.link_up = connected;
        // Steps in flight could not come back while the link was down: their clocks restart.
        if (connected) {
            for (auto& [id, st] : job.step_sent) st.sent = t0;
        }
    }
    if (in.registered) {
        std::string why;
        if (!is_main && !validate_prefill_job(*in.registered, &why)) {
            spdlog::error("refusing the prefill job {}: {}", in.registered->hello.job_id, why);
            job.control->drop_leader(in.registered->session_id, why);
        } else {
            const auto& h = in.registered->hello;
            Capacity cap;
            cap.session_id = in.registered->session_id;
            cap.kv_blocks = h.kv_blocks;
            cap.kv_block_size = h.kv_block_size;
            cap.pipeline_stages = h.pipeline_stages;
            cap.max_batch_tokens = h.max_batch_tokens;
            cap.max_sequences = h.max_sequences;
            cap.vocab_size = h.vocab_size;
            cap.kv_domains = h.kv_domains;
            if (job.leader) job.scheduler.detach(unavailable("replaced by a new " + std::string(job.name)));
            job.scheduler.attach(cap);
            job.leader = std::move(in.registered);
            metrics_->shard_registrations++;
            job.step_sent.clear();
            job.link_up = true;
        }
    }
    const auto now = Clock::now();
    int steps = 0;
    for (auto& [session, r] : in.results) {
        if (!job.leader || job.leader->session_id != session) continue;  // from a lost job
        auto sent = job.step_sent.find(r.step_id);
        if (sent != job.step_sent.end()) {
            const double rt = std::chrono::duration<double>(now - sent->second.sent).count();
            if (is_main) metrics_->step_time.observe(rt);
            const double per_token = rt / static_cast<double>(std::max<int64_t>(sent->second.tokens, 1));
            // A moving average that follows slow steps at once and fast ones gradually, so that
            // one quick step after a slow one does not shrink the deadline below what is normal.
            job.est_step_s = rt > job.est_step_s ? rt : 0.9 * job.est_step_s + 0.1 * rt;
            job.est_token_s = per_token > job.est_token_s ? per_token : 0.9 * job.est_token_s + 0.1 * per_token;
            job.step_sent.erase(sent);
        }
        if (is_main) {
            metrics_->shard_step.observe(r.step_seconds);
            metrics_->steps_total++;
        }
        ++steps;
        Status s = job.scheduler.on_result(r, now);
        if (!s.ok()) {
            spdlog::error("dropping the {}: {}", job.name, s.message());
            job.control->shutdown_leader("protocol violation: " + s.message());
        }
    }
    return steps;
}

void Engine::send_batches(Job& job) {
    while (job.leader) {
        auto batch = job.scheduler.next_batch(Clock::now());
        if (!batch) break;
        int64_t tokens = 0;
        for (const auto& w : batch->seqs) tokens += static_cast<int64_t>(w.tokens.size());
        job.step_sent[batch->step_id] = InFlightStep{Clock::now(), tokens};
        Status s = job.control->send_batch(job.leader->session_id, *batch);
        if (!s.ok()) break;  // the loss notification follows and fails/re-queues the work
    }
}

void Engine::loop() {
    for (;;) {
        Inbox main_in, prefill_in;
        {
            std::unique_lock il(inbox_mu_);
            // The timeout bounds how late a deadline is noticed.
            inbox_cv_.wait_for(il, milliseconds(20), [&] { return stop_ || work_; });
            if (stop_) break;
            work_ = false;
            std::swap(main_in, main_.inbox);
            if (prefill_) std::swap(prefill_in, prefill_->inbox);
        }
        std::lock_guard lock(mu_);
        const auto t0 = Clock::now();
        const int steps = apply_inbox(main_, main_in, t0);
        if (prefill_) {
            apply_inbox(*prefill_, prefill_in, t0);
            // Prefill legs that ended (computed, lost, cancelled) move on before the decode job's
            // next batch is built, so a handed-off request can join it at once.
            finish_legs();
        }
        const auto now = Clock::now();
        main_.scheduler.expire(now);
        check_step_deadlines(main_, now);
        if (prefill_) {
            prefill_->scheduler.expire(now);
            check_step_deadlines(*prefill_, now);
            finish_legs();
            send_batches(*prefill_);
        }
        send_batches(main_);
        if (steps > 0) {
            const double spent = std::chrono::duration<double>(Clock::now() - t0).count();
            for (int i = 0; i < steps; ++i) metrics_->overhead.observe(spent / steps);
        }
    }
}

}  // namespace deepshard::coordinator
