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

uint64_t Scheduler::prompt_blocks(size_t tokens) const {
    const uint64_t bs = capacity_ ? capacity_->kv_block_size : 1;
    return (static_cast<uint64_t>(tokens) + bs - 1) / bs;
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
    if (queue_.size() >= options_.max_queue && !spec.accepted) {
        return resource_exhausted("the request queue is full (" + std::to_string(options_.max_queue) + " waiting)");
    }
    if (capacity_ && prompt_blocks(spec.prompt.size()) > capacity_->kv_blocks) {
        return invalid_argument("the prompt needs " + std::to_string(prompt_blocks(spec.prompt.size())) +
                                " KV blocks but a KV pool of the shard job has " +
                                std::to_string(capacity_->kv_blocks) + "; shorten the prompt");
    }
    Seq s;
    s.id = next_seq_id_++;
    s.arrival = next_arrival_++;
    s.spec = std::move(spec);
    s.tokens = s.spec.prompt;
    if (!s.spec.sampling.has_seed) {
        s.spec.sampling.seed = seed_source_();
        s.spec.sampling.has_seed = 1;
    }
    const uint64_t id = s.id;
    seqs_.emplace(id, std::move(s));
    queue_.push_back(id);
    return id;
}

void Scheduler::cancel(uint64_t seq_id) {
    if (seqs_.count(seq_id) != 0) finish(seq_id, FinishReason::kCancelled, cancelled("cancelled by the client"));
}

void Scheduler::publish(Seq& s) {
    if (options_.prefix_cache && s.resident) {
        domain_of(s).publish(s.id, s.tokens, s.computed, &pending_ops_.publish);
    }
}

void Scheduler::finish(uint64_t id, FinishReason reason, const Status& error) {
    auto it = seqs_.find(id);
    if (it == seqs_.end()) return;
    Seq s = std::move(it->second);
    seqs_.erase(it);
    auto q = std::find(queue_.begin(), queue_.end(), id);
    if (q != queue_.end()) queue_.erase(q);
    auto r = std::find(running_.begin(), running_.end(), id);
    if (r != running_.end()) running_.erase(r);
    if (s.resident && capacity_) {
        // Its last full blocks stay cached (published before the release in the next batch).
        publish(s);
        domain_of(s).drop(id);
    }
    // Its KV and sampler on the shard job go away before the next batch's new work. A chunk of it
    // may still be in flight; that batch finishes at every stage before the next one starts, and
    // its output for this id is ignored. A start not sent yet is simply dropped.
    drop_pending_start(id);
    if ((s.started || s.resident) && capacity_) pending_release_.push_back(id);
    if (s.spec.sink) s.spec.sink->on_finish(reason, error);
}

void Scheduler::fail_all(const Status& error) {
    std::vector<uint64_t> ids;
    for (const auto& [id, s] : seqs_) ids.push_back(id);
    for (uint64_t id : ids) finish(id, FinishReason::kError, error);
}

void Scheduler::attach(const Capacity& capacity) {
    capacity_ = capacity;
    pending_release_.clear();
    pending_ops_ = {};
    in_flight_.clear();
    // A new job starts with empty pools: so does the mirror.
    domains_.clear();
    const uint32_t n = std::max<uint32_t>(1, capacity.kv_domains);
    for (uint32_t d = 0; d < n; ++d) domains_.emplace_back(d, capacity.kv_blocks, capacity.kv_block_size, &next_entry_);
    // Queued requests that can never fit this job fail now rather than block the queue forever.
    std::vector<uint64_t> too_big;
    for (uint64_t id : queue_) {
        if (prompt_blocks(seqs_.at(id).spec.prompt.size()) > capacity.kv_blocks) too_big.push_back(id);
    }
    for (uint64_t id : too_big) {
        finish(id, FinishReason::kError,
               invalid_argument("the prompt needs more KV blocks than a KV pool of the shard job has (" +
                                std::to_string(capacity.kv_blocks) + ")"));
    }
}

void Scheduler::detach(const Status& reason) {
    capacity_.reset();
    in_flight_.clear();
    pending_release_.clear();
    pending_ops_ = {};
    domains_.clear();
    std::vector<uint64_t> running = std::move(running_);
    running_.clear();
    // Preempted sequences wait in the queue but were started on the lost job: they restart too.
    std::vector<uint64_t> restart = running;
    for (uint64_t id : queue_) {
        if (seqs_.at(id).started) restart.push_back(id);
    }
    for (auto& [id, s] : seqs_) {
        s.resident = false;
        s.in_flight = false;
    }
    if (!options_.retry) {
        std::vector<uint64_t> all = running;
        all.insert(all.end(), queue_.begin(), queue_.end());
        for (uint64_t id : all) {
            // No job any more: nothing to release (capacity_ is reset).
            finish(id, FinishReason::kError, Status(StatusCode::kUnavailable, "shard job lost: " + reason.message()));
        }
        return;
    }
    for (uint64_t id : restart) {
        Seq& s = seqs_.at(id);
        s.tokens.resize(s.plen());
        s.computed = 0;
        s.started = false;
        s.domain = -1;
        s.drafts.clear();
        ++s.epoch;
        if (s.spec.sink) s.spec.sink->on_restart();
    }
    // Running sequences arrived before anything still queued (admission is FCFS; preempted ones
    // are queued in arrival order), so the merged queue stays in arrival order.
    for (uint64_t id : running) requeue(id);
}

void Scheduler::insert_running(uint64_t id) {
    const uint64_t a = seqs_.at(id).arrival;
    auto at = std::find_if(running_.begin(), running_.end(), [&](uint64_t o) { return seqs_.at(o).arrival > a; });
    running_.insert(at, id);
}

void Scheduler::requeue(uint64_t id) {
    const uint64_t a = seqs_.at(id).arrival;
    auto at = std::find_if(queue_.begin(), queue_.end(), [&](uint64_t o) { return seqs_.at(o).arrival > a; });
    queue_.insert(at, id);
}

void Scheduler::drop_pending_start(uint64_t id) {
    auto& st = pending_ops_.start;
    st.erase(std::remove_if(st.begin(), st.end(), [&](const ctl::KvStart& k) { return k.seq_id == id; }), st.end());
}

void Scheduler::preempt(Seq& v) {
    // Publishing first keeps its computed blocks in the cache: the recomputation mostly hits.
    publish(v);
    domain_of(v).drop(v.id);
    drop_pending_start(v.id);
    pending_ops_.preempt.push_back(v.id);
    v.resident = false;
    v.computed = 0;
    ++v.epoch;
    ++counters_.preemptions;
    running_.erase(std::find(running_.begin(), running_.end(), v.id));
    requeue(v.id);
}

bool Scheduler::admit(Seq& s) {
    if (s.in_flight) return false;  // preempted with a chunk still in flight: wait for its result
    const int64_t bs = capacity_->kv_block_size;
    const int64_t known = s.known();
    // At most known - 1 tokens from the cache: the last one is computed to sample the next.
    const int64_t max_hit = options_.prefix_cache ? (known - 1) / bs : 0;
    std::vector<uint64_t> prefix;
    if (s.domain < 0) {
        // New: the domain holding the longest cached prefix, then the one with the most room.
        int32_t best = 0;
        uint64_t best_room = 0;
        for (size_t d = 0; d < domains_.size(); ++d) {
            auto m = domains_[d].match(s.tokens, max_hit);
            const uint64_t room = domains_[d].free_blocks() + domains_[d].reclaimable_blocks();
            if (d == 0 || m.size() > prefix.size() || (m.size() == prefix.size() && room > best_room)) {
                best = static_cast<int32_t>(d);
                best_room = room;
                prefix = std::move(m);
            }
        }
        s.domain = best;
    } else {
        prefix = domain_of(s).match(s.tokens, max_hit);
    }
    KvDomain& d = domain_of(s);
    const uint64_t need = prompt_blocks(static_cast<size_t>(known)) - prefix.size();
    // Blocks that running prefills of this domain still need are spoken for: admitting into them
    // would only get this sequence preempted again.
    uint64_t promised = 0;
    for (uint64_t id : running_) {
        const Seq& o = seqs_.at(id);
        if (o.domain != s.domain || o.known() - o.computed <= 1) continue;
        const int64_t more = static_cast<int64_t>(prompt_blocks(static_cast<size_t>(o.known()))) - d.blocks_of(id);
        promised += static_cast<uint64_t>(std::max<int64_t>(0, more));
    }
    const uint64_t room = d.free_blocks() + d.reclaimable_blocks() - d.unpinned_in(prefix);
    if (need + promised > room) {
        if (!s.started) s.domain = -1;  // choose again when it fits
        return false;
    }
    d.start(s.id, prefix);
    pending_ops_.start.push_back({.seq_id = s.id, .domain = static_cast<uint32_t>(s.domain), .prefix = prefix});
    const int64_t hit = static_cast<int64_t>(prefix.size()) * bs;
    if (!s.started) {
        counters_.prefix_query_tokens += static_cast<uint64_t>(known);
        counters_.prefix_hit_tokens += static_cast<uint64_t>(hit);
    } else {
        counters_.recomputed_tokens += static_cast<uint64_t>(known - hit);
    }
    s.computed = hit;
    s.resident = true;
    queue_.pop_front();
    insert_running(s.id);
    return true;
}

bool Scheduler::schedule_chunk(Seq& s, int64_t want, Building& b) {
    KvDomain& d = domain_of(s);
    const int64_t bs = capacity_->kv_block_size;
    int64_t n = want;
    // Speculative decoding: drafts to verify after the last known token, and what the chunk asks
    // the MTP module for. Positions held = tokens + drafts + (propose - 1 when it samples).
    const bool transfer = s.spec.kv_export.has_value() || s.spec.kv_import.has_value();
    const int64_t k = transfer ? 0 : options_.draft_tokens;
    int64_t drafts = 0, propose = k;
    // Disaggregation: positions the prefill job computed are fetched in one chunk (no compute, so
    // neither the token budget nor the prefill chunk bounds it; only the KV blocks).
    const bool importing = s.spec.kv_import && !s.import_failed && s.computed < s.spec.import_positions;
    if (importing) n = s.spec.import_positions - s.computed;
    if (k > 0 && s.computed + n == s.known()) {
        const int64_t room_ctx = options_.max_context - s.known() - (k - 1);
        const int64_t room_gen = s.spec.max_tokens - static_cast<int64_t>(s.generated()) - 1;
        drafts = std::max<int64_t>(0, std::min({static_cast<int64_t>(s.drafts.size()), b.left - n, room_ctx, room_gen}));
    }
    auto span = [&]() {
        const bool samples = s.computed + n == s.known();
        return n + drafts + (samples && propose > 0 ? propose - 1 : 0);
    };
    // Blocks of rejected drafts of its last chunk go first (the job truncates the same way).
    const int64_t held = d.blocks_of(s.id);
    d.shrink(s.id, s.computed);
    auto wait = [&]() {
        if (d.has(s.id) && d.blocks_of(s.id) < held) d.grow(s.id, held * bs);  // not scheduled: as before
        return false;
    };
    auto in_batch = [&](uint64_t id) {
        return std::any_of(b.batch.seqs.begin(), b.batch.seqs.end(), [&](const ctl::SeqWork& w) { return w.seq_id == id; });
    };
    while (static_cast<uint64_t>(d.growth(s.id, s.computed + span())) > d.free_blocks()) {
        if (d.evict_one(&pending_ops_.evict)) {
            ++counters_.kv_evicted_blocks;
            continue;
        }
        // The newest resident sequence of this domain, newer than s and not in this batch.
        Seq* victim = nullptr;
        for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
            Seq& o = seqs_.at(*it);
            if (o.arrival <= s.arrival) break;
            if (o.domain == s.domain && !in_batch(o.id)) {
                victim = &o;
                break;
            }
        }
        if (victim == nullptr) break;
        preempt(*victim);
    }
    if (static_cast<uint64_t>(d.growth(s.id, s.computed + span())) > d.free_blocks() && k > 0) {
        drafts = 0;  // under KV pressure speculation goes first
        propose = 1;
    }
    if (static_cast<uint64_t>(d.growth(s.id, s.computed + span())) > d.free_blocks()) {
        // Tokens that fit in its blocks plus the free ones: a prefill chunk can be shorter (it then
        // samples only if it still reaches the last known token).
        const int64_t fit = (d.blocks_of(s.id) + static_cast<int64_t>(d.free_blocks())) * bs - s.computed;
        if (fit >= 1) {
            n = std::min(n, fit);
        } else {
            // It waits for older sequences to finish or shrink the pool's use, unless nothing else
            // in its domain holds KV: then the pool itself is too small for it.
            bool alone = true;
            for (uint64_t id : running_) alone &= id == s.id || seqs_.at(id).domain != s.domain;
            if (alone) {
                ++counters_.kv_exhausted;
                spdlog::warn("sequence {} needs more KV than its pool of {} blocks holds; ending it (length)", s.id,
                             d.total_blocks());
                finish(s.id, FinishReason::kLength, ok_status());
                return false;
            }
            return wait();
        }
    }
    const bool sample = s.computed + n == s.known() && !s.spec.kv_export;
    if (!sample) drafts = 0;
    d.grow(s.id, s.computed + span());
    ctl::SeqWork w;
    w.seq_id = s.id;
    w.start_pos = static_cast<uint32_t>(s.computed);
    w.tokens.assign(s.tokens.begin() + s.computed, s.tokens.begin() + s.computed + n);
    w.tokens.insert(w.tokens.end(), s.drafts.begin(), s.drafts.begin() + drafts);
    w.sample = sample ? 1 : 0;
    w.num_draft = static_cast<uint8_t>(drafts);
    w.propose = static_cast<uint8_t>(propose);
    if (s.spec.kv_export && s.computed + n == s.known()) {
        w.has_export = 1;
        w.kv_export = *s.spec.kv_export;
    }
    if (importing) {
        w.has_import = 1;
        w.kv_import = *s.spec.kv_import;
    }
    if (!s.started) {
        w.is_new = 1;
        w.sampling = s.spec.sampling;
        w.prompt = s.spec.prompt;
        s.started = true;
    }
    b.batch.seqs.push_back(std::move(w));
    b.members.push_back({s.id, n, sample, s.epoch, drafts, importing});
    s.in_flight = true;
    if (importing) {
        b.left -= 1;  // a fetch, not a computation
        return true;
    }
    b.left -= n + drafts;
    if (n > 1 || s.computed < static_cast<int64_t>(s.plen())) counters_.prompt_tokens += static_cast<uint64_t>(n);
    return true;
}

std::optional<ctl::StepBatch> Scheduler::next_batch(Clock::time_point) {
    if (!capacity_ || in_flight_.size() >= capacity_->pipeline_stages) return std::nullopt;
    Building b;
    b.left = budget();
    b.max_seqs = capacity_->max_sequences > 0 ? capacity_->max_sequences : SIZE_MAX;

    // 1. One decode token per ready running sequence, then 2. prefill (or recompute) chunks,
    // oldest first. Preemption may remove newer sequences from running_ as we go: iterate a copy.
    for (int pass = 0; pass < 2; ++pass) {
        const std::vector<uint64_t> order = running_;
        for (uint64_t id : order) {
            if (b.full()) break;
            auto it = seqs_.find(id);
            if (it == seqs_.end()) continue;
            Seq& s = it->second;
            if (!s.resident || s.in_flight) continue;
            const int64_t todo = s.known() - s.computed;
            if (pass == 0 && todo == 1) schedule_chunk(s, 1, b);
            if (pass == 1 && todo > 1) schedule_chunk(s, std::min({todo, b.left, options_.prefill_chunk}), b);
        }
    }
    // 3. Admissions from the head of the queue (new or preempted sequences).
    while (!b.full() && !queue_.empty() && running_.size() < options_.max_running) {
        Seq& s = seqs_.at(queue_.front());
        if (!admit(s)) break;  // head-of-line waits: FCFS, no starvation
        const int64_t todo = s.known() - s.computed;
        if (!schedule_chunk(s, std::min({todo, b.left, options_.prefill_chunk}), b)) break;
    }
    if (b.batch.seqs.empty()) return std::nullopt;
    b.batch.step_id = next_step_id_++;
    b.batch.release = std::move(pending_release_);
    pending_release_.clear();
    b.batch.kv = std::move(pending_ops_);
    pending_ops_ = {};
    InFlightBatch f;
    f.members = std::move(b.members);
    for (const KvDomain& d : domains_) {
        f.expected.push_back({.domain = d.id(), .used_blocks = d.used_blocks(), .cached_blocks = d.cached_blocks(),
                              .total_blocks = d.total_blocks()});
    }
    in_flight_.emplace(b.batch.step_id, std::move(f));
    return std::move(b.batch);
}

void Scheduler::check_kv_report(uint64_t step_id, const std::vector<ctl::KvReport>& expected,
                                const std::vector<ctl::KvReport>& got) {
    if (got.size() != expected.size()) {
        ++counters_.kv_view_mismatches;
        spdlog::error("step {}: the shard job reported {} KV domains, the scheduler has {}", step_id, got.size(),
                      expected.size());
    }
    for (const ctl::KvReport& r : got) {
        if (r.domain >= expected.size()) {
            ++counters_.kv_view_mismatches;
            spdlog::error("step {}: the shard job reported KV domain {} of {}", step_id, r.domain, expected.size());
            continue;
        }
        const ctl::KvReport& e = expected[r.domain];
        if (r.used_blocks != e.used_blocks || r.cached_blocks != e.cached_blocks) {
            ++counters_.kv_view_mismatches;
            spdlog::error("step {}: KV domain {} holds {} used / {} cached blocks on the shard job, the scheduler "
                          "expects {} / {}",
                          step_id, r.domain, r.used_blocks, r.cached_blocks, e.used_blocks, e.cached_blocks);
        }
    }
}

Status Scheduler::on_result(const ctl::StepResult& result, Clock::time_point) {
    auto it = in_flight_.find(result.step_id);
    if (it == in_flight_.end()) {
        return protocol_error("result for unknown step " + std::to_string(result.step_id));
    }
    InFlightBatch batch = std::move(it->second);
    in_flight_.erase(it);
    // Outputs per sampled member: 1..num_draft+1 consecutive ones with its id (speculative decoding).
    std::vector<std::pair<size_t, size_t>> ranges(batch.members.size(), {0, 0});
    Status bad;
    if (!result.ok) {
        bad = internal_error("the shard job failed step " + std::to_string(result.step_id) + ": " + result.error);
    } else {
        size_t at = 0, sampled = 0;
        for (size_t i = 0; i < batch.members.size() && bad.ok(); ++i) {
            const InFlightSeq& m = batch.members[i];
            if (!m.sample) continue;
            ++sampled;
            size_t c = 0;
            while (at + c < result.outputs.size() && c < static_cast<size_t>(m.num_draft) + 1 &&
                   result.outputs[at + c].seq_id == m.seq_id) {
                ++c;
            }
            if (c == 0 && at < result.outputs.size()) c = 1;  // a wrong id: that sequence fails below
            if (c == 0) {
                bad = protocol_error("step " + std::to_string(result.step_id) + " returned " +
                                     std::to_string(result.outputs.size()) + " outputs for " +
                                     std::to_string(sampled) + "+ sampled sequences");
            }
            ranges[i] = {at, c};
            at += c;
        }
        if (bad.ok() && at != result.outputs.size()) {
            bad = protocol_error("step " + std::to_string(result.step_id) + " returned " +
                                 std::to_string(result.outputs.size()) + " outputs for " + std::to_string(sampled) +
                                 " sampled sequences");
        }
    }
    if (!bad.ok()) {
        // The sequences' state on the job is unknown now: end them (their KV is released).
        for (const auto& m : batch.members) finish(m.seq_id, FinishReason::kError, bad);
        return result.ok ? bad : ok_status();
    }
    check_kv_report(result.step_id, batch.expected, result.kv);
    for (size_t i = 0; i < batch.members.size(); ++i) {
        const InFlightSeq& m = batch.members[i];
        auto sit = seqs_.find(m.seq_id);
        if (sit == seqs_.end()) continue;  // cancelled or expired while in flight
        Seq& s = sit->second;
        s.in_flight = false;
        if (!m.sample) {
            if (m.epoch != s.epoch) continue;
            if (m.import && std::find(result.import_failed.begin(), result.import_failed.end(), s.id) !=
                                result.import_failed.end()) {
                // Its blocks are reserved on both sides but hold nothing valid: compute them.
                s.import_failed = true;
                ++counters_.kv_import_failures;
                spdlog::warn("sequence {}: the decode job could not fetch its KV from the prefill job; computing "
                             "its prompt instead",
                             s.id);
                continue;
            }
            s.computed += m.num_tokens;
            if (m.import) counters_.kv_imported_tokens += static_cast<uint64_t>(m.num_tokens);
            publish(s);
            if (s.spec.kv_export && s.computed >= s.known()) {
                ++counters_.kv_exports;
                if (s.spec.sink) s.spec.sink->on_prefilled(s.domain);
                finish(s.id, FinishReason::kStop, ok_status());
            }
            continue;
        }
        apply_outputs(s, m, result.outputs.data() + ranges[i].first, ranges[i].second, result.step_id);
    }
    return ok_status();
}

void Scheduler::apply_outputs(Seq& s, const InFlightSeq& m, const ctl::SeqOutput* outs, size_t count,
                              uint64_t step_id) {
    const int32_t vocab = capacity_ && capacity_->vocab_size > 0 ? static_cast<int32_t>(capacity_->vocab_size)
                                                                 : options_.vocab_size;
    const bool current = m.epoch == s.epoch;
    if (current) s.computed += m.num_tokens;
    if (m.num_draft > 0) {
        ++counters_.spec_verify_steps;
        counters_.spec_draft_tokens += static_cast<uint64_t>(m.num_draft);
        counters_.spec_accepted_tokens += count - 1;
    }
    const uint64_t id = s.id;
    s.drafts.clear();
    for (size_t e = 0; e < count; ++e) {
        const ctl::SeqOutput& out = outs[e];
        if (out.seq_id != id || out.token < 0 || (vocab > 0 && out.token >= vocab)) {
            finish(id, FinishReason::kError,
                   protocol_error("step " + std::to_string(step_id) + " returned token " +
                                  std::to_string(out.token) + " for sequence " + std::to_string(out.seq_id) +
                                  " where sequence " + std::to_string(id) + " was expected"));
            return;
        }
        // Also for a sequence preempted while this chunk was in flight: the job's sampler took
        // this token, so it is part of the output (and of the recomputation).
        s.tokens.push_back(out.token);
        // An accepted draft's KV was computed in this step (the last emitted token's is not).
        if (current && e + 1 < count) ++s.computed;
        ++counters_.generated_tokens;
        FinishReason by_ids = FinishReason::kNone;
        const int32_t t = out.token;
        if ((!s.spec.ignore_eos && t == options_.eos_id) ||
            std::find(s.spec.stop_token_ids.begin(), s.spec.stop_token_ids.end(), t) != s.spec.stop_token_ids.end()) {
            by_ids = FinishReason::kStop;
        } else if (static_cast<int64_t>(s.generated()) >= s.spec.max_tokens || s.known() >= options_.max_context) {
            by_ids = FinishReason::kLength;
        }
        FinishReason decided = s.spec.sink ? s.spec.sink->on_token(out, by_ids) : by_ids;
        if (decided != FinishReason::kNone) {
            finish(id, decided, ok_status());  // publishes its computed blocks
            return;
        }
    }
    if (current) {
        publish(s);
        const std::vector<int32_t>& d = outs[count - 1].drafts;
        const size_t keep = std::min(d.size(), static_cast<size_t>(std::max(0, options_.draft_tokens)));
        s.drafts.assign(d.begin(), d.begin() + static_cast<int64_t>(keep));
    }
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
    SchedulerStats st = counters_;
    st.queued = queue_.size();
    st.running = running_.size();
    st.in_flight_batches = in_flight_.size();
    st.kv_blocks_total = st.kv_blocks_used = st.kv_blocks_cached = 0;
    for (const KvDomain& d : domains_) {
        st.kv_blocks_total += d.total_blocks();
        st.kv_blocks_used += d.used_blocks();
        st.kv_blocks_cached += d.cached_blocks();
    }
    return st;
}

}  // namespace deepshard::coordinator
