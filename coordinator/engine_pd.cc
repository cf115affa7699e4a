// Prefill/decode disaggregation in the Engine (engine.h, "Disaggregation"): a request's prefill leg
// on the prefill job, its hand-off to the decode job, and every way a leg can end. Runs on the
// scheduling thread (or a front end's thread in submit/cancel) with the engine lock held.
#include <spdlog/spdlog.h>

#include "control/auth.h"
#include "coordinator/engine.h"

namespace deepshard::coordinator {

namespace ctl = deepshard::control;

// The prefill scheduler's sink for a leg: it never samples, so only its end matters. Callbacks run
// with the engine lock held (Scheduler's contract), so they only record.
class Engine::PrefillLeg final : public SequenceSink {
public:
    PrefillLeg(Engine* engine, uint64_t transfer) : engine_(engine), transfer_(transfer) {}
    FinishReason on_token(const ctl::SeqOutput&, FinishReason by_ids) override { return by_ids; }
    void on_prefilled(int32_t domain) override {
        auto h = engine_->handoffs_.find(transfer_);
        if (h != engine_->handoffs_.end()) h->second.domain = domain;
    }
    void on_finish(FinishReason reason, const Status& error) override {
        engine_->legs_done_.emplace_back(transfer_, reason, error);
    }
    void on_restart() override {}  // the prefill scheduler never retries (engine.cc)

private:
    Engine* engine_;
    uint64_t transfer_;
};

bool Engine::disaggregate(const SequenceSpec& spec) const {
    // The leg computes prompt[0, n-1): there must be something to compute, and enough to be worth
    // a transfer. Speculative decoding's MTP cache is not exported: those requests stay on one job.
    return prefill_ && prefill_->scheduler.attached() && main_.scheduler.attached() &&
           options_.scheduler.draft_tokens == 0 && static_cast<int64_t>(spec.prompt.size()) >= 2 &&
           static_cast<int64_t>(spec.prompt.size()) >= options_.pd_min_prompt_tokens;
}

Status Engine::submit_prefill_leg(const std::shared_ptr<Request>& req, SequenceSpec spec) {
    Handoff h;
    h.request = req;
    h.exp.transfer_id = next_transfer_++;
    const ctl::Nonce random = ctl::random_nonce();
    std::copy_n(random.begin(), h.exp.key.size(), h.exp.key.begin());
    SequenceSpec leg;
    leg.prompt.assign(spec.prompt.begin(), spec.prompt.end() - 1);
    leg.sampling = spec.sampling;
    leg.max_tokens = 1;
    leg.deadline = spec.deadline;
    leg.kv_export = h.exp;
    leg.sink = std::make_shared<PrefillLeg>(this, h.exp.transfer_id);
    DS_ASSIGN_OR_RETURN(h.prefill_seq, prefill_->scheduler.submit(std::move(leg), Clock::now()));
    h.spec = std::move(spec);
    leg_of_[req.get()] = h.exp.transfer_id;
    handoffs_.emplace(h.exp.transfer_id, std::move(h));
    return ok_status();
}

void Engine::finish_legs() {
    std::vector<std::tuple<uint64_t, FinishReason, Status>> done;
    done.swap(legs_done_);
    for (auto& [transfer, reason, error] : done) {
        auto it = handoffs_.find(transfer);
        if (it == handoffs_.end()) continue;
        Handoff h = std::move(it->second);
        handoffs_.erase(it);
        leg_of_.erase(h.request.get());
        if (reason == FinishReason::kCancelled) {
            h.request->on_finish(FinishReason::kCancelled, error);
            continue;
        }
        if (reason == FinishReason::kError && error.code() == StatusCode::kDeadlineExceeded) {
            h.request->on_finish(FinishReason::kError, error);
            continue;
        }
        if (!main_.scheduler.attached() && !options_.scheduler.retry) {
            // No decode job (and no retry): like a request submitted now, it cannot be served.
            h.request->on_finish(FinishReason::kError,
                                 unavailable("no shard job is serving the model (" + main_.unavailable_reason + ")"));
            continue;
        }
        SequenceSpec spec = std::move(h.spec);
        spec.sink = h.request;
        spec.accepted = true;
        const std::vector<ctl::KvSource>* sources = nullptr;
        if (reason == FinishReason::kStop && error.ok() && prefill_->leader) {
            // The exporting ranks of the leg's KV domain (Hello.kv_exports, grouped by domain).
            const auto& all = prefill_->leader->hello.kv_exports;
            const size_t domains = std::max<uint32_t>(1, prefill_->leader->hello.kv_domains);
            const size_t per = all.size() / domains;
            const size_t d = static_cast<size_t>(std::max(0, h.domain));
            if (per > 0 && d < domains) {
                spec.kv_import = ctl::KvImport{};
                spec.kv_import->transfer_id = h.exp.transfer_id;
                spec.kv_import->key = h.exp.key;
                spec.kv_import->sources.assign(all.begin() + static_cast<std::ptrdiff_t>(d * per),
                                               all.begin() + static_cast<std::ptrdiff_t>((d + 1) * per));
                spec.import_positions = static_cast<int64_t>(spec.prompt.size()) - 1;
                sources = &spec.kv_import->sources;
            }
        }
        if (sources != nullptr) {
            ++pd_handoffs_;
        } else {
            // The prefill job was lost or refused the leg: the decode job computes the prompt.
            ++pd_fallbacks_;
            spdlog::warn("request {}: its prefill leg ended without an export ({}); the decode job computes the "
                         "prompt",
                         transfer, error.ok() ? finish_reason_name(reason) : error.message());
        }
        auto id = main_.scheduler.submit(std::move(spec), Clock::now());
        if (!id.ok()) {
            h.request->on_finish(FinishReason::kError, id.status());
            continue;
        }
        h.request->set_id(*id);
    }
}

bool Engine::validate_prefill_job(const ctl::LeaderInfo& leader, std::string* why) const {
    const ctl::Hello& h = leader.hello;
    if (h.kv_exports.empty()) {
        *why = "a prefill job must export its KV (start deepshard-shard with --kv-listen IP)";
        return false;
    }
    return true;
}

void Engine::render_pd_metrics(std::string* out) const {
    const SchedulerStats p = prefill_->scheduler.stats();
    const SchedulerStats d = main_.scheduler.stats();
    render_gauge(out, "deepshard_prefill_job_up", "1 when a prefill job is registered (disaggregation)",
                 prefill_->scheduler.attached() ? 1 : 0);
    render_gauge(out, "deepshard_prefill_queued_requests", "Prefill legs waiting for the prefill job",
                 static_cast<double>(p.queued));
    render_gauge(out, "deepshard_prefill_running_sequences", "Prefill legs holding KV on the prefill job",
                 static_cast<double>(p.running));
    render_counter(out, "deepshard_prefill_prompt_tokens_total", "Prompt tokens prefilled by the prefill job",
                   static_cast<double>(p.prompt_tokens));
    render_counter(out, "deepshard_pd_handoffs_total", "Requests handed from the prefill job to the decode job",
                   static_cast<double>(pd_handoffs_));
    render_counter(out, "deepshard_pd_fallbacks_total",
                   "Prefill legs that ended without an export (the decode job computed the prompt)",
                   static_cast<double>(pd_fallbacks_));
    render_counter(out, "deepshard_kv_imported_tokens_total",
                   "Positions whose KV the decode job fetched from the prefill job instead of computing",
                   static_cast<double>(d.kv_imported_tokens));
    render_counter(out, "deepshard_kv_import_failures_total",
                   "KV fetches the decode job could not complete (those positions were computed)",
                   static_cast<double>(d.kv_import_failures));
}

}  // namespace deepshard::coordinator
