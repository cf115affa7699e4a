#include "coordinator/scheduler.h"

#include <algorithm>

#include <spdlog/spdlog.h>

namespace deepshard::coordinator {

namespace ctl = deepshard::control;

const char* finish_reason_name(FinishReason r) {
    switch (r) {
        case FinishReason::kNone: return "";
        case FinishReason::kStop: return "stop";
        case FinishReason::kLength: return "length";
        case FinishReason::kCancelled: return "cancelled";
        case FinishReason::kError: return "error";
    }
    return "";
}

Scheduler::Scheduler(SchedulerOptions options) : options_(std::move(options)) {}

uint64_t Scheduler::blocks_needed(const Seq& s) const {
    const uint64_t bs = capacity_ ? capacity_->kv_block_size : 1;
    const int64_t len = std::min<int64_t>(static_cast<int64_t>(s.spec.prompt.size()) + s.spec.max_tokens,
                                          options_.max_context);
    return (static_cast<uint64_t>(len) + bs - 1) / bs;
}

int64_t Scheduler::budget() const {
    int64_t b = options_.token_budget;
    if (capacity_ && capacity_->max_batch_tokens > 0) b = std::min<int64_t>(b, capacity_->max_batch_tokens);
    return std::max<int64_t>(b, 1);
}

StatusOr<uint64_t> Scheduler::submit(SequenceSpec spec, Clock::time_point) {
    if (spec.prompt.empty()) return invalid_argument("the prompt is empty");
    if (static_cast<int64_t>(spec.prompt.size()) >= options_.max_context) {
        return invalid_argument("the prompt has " + std::to_string(spec.prompt.size()) +
                                " tokens; the model's context is " + std::to_string(options_.max_context) +
                                " (prompt + at least one generated token)");
    }
    if (spec.max_tokens < 1) return invalid_argument("max_tokens must be at least 1");
    if (queue_.size() >= options_.max_queue) {
        return resource_exhausted("the request queue is full (" + std::to_string(options_.max_queue) + " waiting)");
    }
    Seq s;
    s.id = next_seq_id_++;
    s.arrival = next_arrival_++;
    s.spec = std::move(spec);
    if (capacity_ && blocks_needed(s) > capacity_->kv_blocks) {
        return invalid_argument("the request needs " + std::to_string(blocks_needed(s)) +
                                " KV blocks but the shard job has " + std::to_string(capacity_->kv_blocks) +
                                "; lower max_tokens or the prompt");
    }
    const uint64_t id = s.id;
    seqs_.emplace(id, std::move(s));
    queue_.push_back(id);
    return id;
}

void Scheduler::cancel(uint64_t seq_id) {
    if (seqs_.count(seq_id) != 0) finish(seq_id, FinishReason::kCancelled, cancelled("cancelled by the client"));
}

void Scheduler::finish(uint64_t id, FinishReason reason, const Status& error) {
    auto it = seqs_.find(id);
    if (it == seqs_.end()) return;
    Seq s = std::move(it->second);
    seqs_.erase(it);
    auto q = std::find(queue_.begin(), queue_.end(), id);
    if (q != queue_.end()) queue_.erase(q);
    auto r = std::find(running_.begin(), running_.end(), id);
    if (r != running_.end()) {
        running_.erase(r);
        free_blocks_ += s.blocks;
        // Its KV on the shard job goes away before the next batch's new work. A chunk of it may
        // still be in flight; that batch finishes at every stage before the next one starts, and
        // its output for this id is ignored.
        if (s.started && capacity_) pending_release_.push_back(id);
    }
    if (s.spec.sink) s.spec.sink->on_finish(reason, error);
}

void Scheduler::fail_all(const Status& error) {
    std::vector<uint64_t> ids;
    for (const auto& [id, s] : seqs_) ids.push_back(id);
    for (uint64_t id : ids) finish(id, FinishReason::kError, error);
}

void Scheduler::attach(const Capacity& capacity) {
    capacity_ = capacity;
    free_blocks_ = capacity.kv_blocks;
    pending_release_.clear();
    in_flight_.clear();
    // Queued requests that can never fit this job fail now rather than block the queue forever.
    std::vector<uint64_t> too_big;
    for (uint64_t id : queue_) {
        if (blocks_needed(seqs_.at(id)) > capacity.kv_blocks) too_big.push_back(id);
    }
    for (uint64_t id : too_big) {
        finish(id, FinishReason::kError,
               invalid_argument("the request needs more KV blocks than the shard job has (" +
                                std::to_string(capacity.kv_blocks) + ")"));
    }
}

void Scheduler::detach(const Status& reason) {
    capacity_.reset();
    in_flight_.clear();
    pending_release_.clear();
    free_blocks_ = 0;
    std::vector<uint64_t> running = std::move(running_);
    running_.clear();
    if (!options_.retry) {
        std::vector<uint64_t> all = running;
        all.insert(all.end(), queue_.begin(), queue_.end());
        for (uint64_t id : all) {
            // finish() looks in running_/queue_; running_ is already empty so no release is queued.
            finish(id, FinishReason::kError, Status(StatusCode::kUnavailable, "shard job lost: " + reason.message()));
        }
        return;
    }
    // Running sequences arrived before anything still queued (admission is FCFS), so putting them
    // back at the front in arrival order keeps the queue in arrival order.
    std::sort(running.begin(), running.end(),
              [&](uint64_t a, uint64_t b) { return seqs_.at(a).arrival < seqs_.at(b).arrival; });
    for (auto it = running.rbegin(); it != running.rend(); ++it) {
        Seq& s = seqs_.at(*it);
        s.generated.clear();
        s.computed = 0;
        s.blocks = 0;
        s.in_flight = false;
        s.started = false;
        if (s.spec.sink) s.spec.sink->on_restart();
        queue_.push_front(*it);
    }
}

std::optional<ctl::StepBatch> Scheduler::next_batch(Clock::time_point) {
    if (!capacity_ || in_flight_.size() >= capacity_->pipeline_stages) return std::nullopt;
    const size_t max_seqs = capacity_->max_sequences > 0 ? capacity_->max_sequences : SIZE_MAX;
    int64_t left = budget();
    ctl::StepBatch batch;
    std::vector<InFlightSeq> members;

    // 1. One decode token per ready running sequence (oldest first).
    for (uint64_t id : running_) {
        if (left <= 0 || batch.seqs.size() >= max_seqs) break;
        Seq& s = seqs_.at(id);
        const int64_t plen = static_cast<int64_t>(s.spec.prompt.size());
        if (s.in_flight || s.computed < plen || s.generated.empty()) continue;
        ctl::SeqWork w;
        w.seq_id = id;
        w.start_pos = static_cast<uint32_t>(s.computed);
        w.tokens = {s.generated.back()};
        w.sample = 1;
        batch.seqs.push_back(std::move(w));
        members.push_back({id, 1, true});
        s.in_flight = true;
        --left;
    }
    // 2. Prefill chunks of running sequences (and 3. new admissions), oldest first.
    auto add_prefill = [&](Seq& s) {
        const int64_t plen = static_cast<int64_t>(s.spec.prompt.size());
        const int64_t n = std::min({plen - s.computed, left, options_.prefill_chunk});
        ctl::SeqWork w;
        w.seq_id = s.id;
        w.start_pos = static_cast<uint32_t>(s.computed);
        w.tokens.assign(s.spec.prompt.begin() + s.computed, s.spec.prompt.begin() + s.computed + n);
        w.sample = (s.computed + n == plen) ? 1 : 0;
        if (!s.started) {
            w.is_new = 1;
            w.sampling = s.spec.sampling;
            w.prompt = s.spec.prompt;
            s.started = true;
        }
        batch.seqs.push_back(std::move(w));
        members.push_back({s.id, n, (s.computed + n == plen)});
        s.in_flight = true;
        left -= n;
        prompt_tokens_ += static_cast<uint64_t>(n);
    };
    for (uint64_t id : running_) {
        if (left <= 0 || batch.seqs.size() >= max_seqs) break;
        Seq& s = seqs_.at(id);
        if (s.in_flight || s.computed >= static_cast<int64_t>(s.spec.prompt.size())) continue;
        add_prefill(s);
    }
    while (left > 0 && batch.seqs.size() < max_seqs && !queue_.empty() && running_.size() < options_.max_running) {
        Seq& s = seqs_.at(queue_.front());
        const uint64_t need = blocks_needed(s);
        if (need > free_blocks_) break;  // head-of-line waits: FCFS, no starvation
        queue_.pop_front();
        s.blocks = need;
        free_blocks_ -= need;
        running_.push_back(s.id);
        add_prefill(s);
    }
    if (batch.seqs.empty()) return std::nullopt;
    batch.step_id = next_step_id_++;
    batch.release = std::move(pending_release_);
    pending_release_.clear();
    in_flight_.emplace(batch.step_id, std::move(members));
    return batch;
}

Status Scheduler::on_result(const ctl::StepResult& result, Clock::time_point) {
    auto it = in_flight_.find(result.step_id);
    if (it == in_flight_.end()) {
        return protocol_error("result for unknown step " + std::to_string(result.step_id));
    }
    std::vector<InFlightSeq> members = std::move(it->second);
    in_flight_.erase(it);
    size_t expected = 0;
    for (const auto& m : members) expected += m.sample ? 1 : 0;
    Status bad;
    if (!result.ok) {
        bad = internal_error("the shard job failed step " + std::to_string(result.step_id) + ": " + result.error);
    } else if (result.outputs.size() != expected) {
        bad = protocol_error("step " + std::to_string(result.step_id) + " returned " +
                             std::to_string(result.outputs.size()) + " outputs for " + std::to_string(expected) +
                             " sampled sequences");
    }
    if (!bad.ok()) {
        // The sequences' state on the job is unknown now: end them (their KV is released).
        for (const auto& m : members) finish(m.seq_id, FinishReason::kError, bad);
        return result.ok ? bad : ok_status();
    }
    const int32_t vocab = capacity_ && capacity_->vocab_size > 0 ? static_cast<int32_t>(capacity_->vocab_size)
                                                                 : options_.vocab_size;
    size_t out_index = 0;
    for (const auto& m : members) {
        const ctl::SeqOutput* out = m.sample ? &result.outputs[out_index++] : nullptr;
        auto sit = seqs_.find(m.seq_id);
        if (sit == seqs_.end()) continue;  // cancelled or expired while in flight
        Seq& s = sit->second;
        s.in_flight = false;
        s.computed += m.num_tokens;
        if (out == nullptr) continue;
        if (out->seq_id != s.id || out->token < 0 || (vocab > 0 && out->token >= vocab)) {
            finish(s.id, FinishReason::kError,
                   protocol_error("step " + std::to_string(result.step_id) + " returned token " +
                                  std::to_string(out->token) + " for sequence " + std::to_string(out->seq_id) +
                                  " where sequence " + std::to_string(s.id) + " was expected"));
            continue;
        }
        s.generated.push_back(out->token);
        ++generated_tokens_;
        FinishReason by_ids = FinishReason::kNone;
        const int32_t t = out->token;
        if ((!s.spec.ignore_eos && t == options_.eos_id) ||
            std::find(s.spec.stop_token_ids.begin(), s.spec.stop_token_ids.end(), t) != s.spec.stop_token_ids.end()) {
            by_ids = FinishReason::kStop;
        } else if (static_cast<int64_t>(s.generated.size()) >= s.spec.max_tokens ||
                   static_cast<int64_t>(s.spec.prompt.size() + s.generated.size()) >= options_.max_context) {
            by_ids = FinishReason::kLength;
        }
        FinishReason decided = s.spec.sink ? s.spec.sink->on_token(*out, by_ids) : by_ids;
        if (decided != FinishReason::kNone) finish(s.id, decided, ok_status());
    }
    return ok_status();
}

void Scheduler::expire(Clock::time_point now) {
    std::vector<uint64_t> late;
    for (const auto& [id, s] : seqs_) {
        if (s.spec.deadline && *s.spec.deadline <= now) late.push_back(id);
    }
    for (uint64_t id : late) {
        finish(id, FinishReason::kError, deadline_exceeded("the request's deadline passed before it finished"));
    }
}

SchedulerStats Scheduler::stats() const {
    SchedulerStats st;
    st.queued = queue_.size();
    st.running = running_.size();
    st.in_flight_batches = in_flight_.size();
    if (capacity_) {
        st.kv_blocks_total = capacity_->kv_blocks;
        st.kv_blocks_reserved = capacity_->kv_blocks - free_blocks_;
        for (uint64_t id : running_) {
            const Seq& s = seqs_.at(id);
            st.kv_blocks_used += (static_cast<uint64_t>(s.computed) + capacity_->kv_block_size - 1) /
                                 capacity_->kv_block_size;
        }
    }
    st.prompt_tokens = prompt_tokens_;
    st.generated_tokens = generated_tokens_;
    return st;
}

}  // namespace deepshard::coordinator
