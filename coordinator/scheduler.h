// Continuous-batching scheduler (DESIGN §3 step 3). A pure state machine: no threads, no sockets,
// no clock of its own (callers pass `now`), so every policy is unit-testable. The Engine owns one
// and calls it from a single thread; it is not thread-safe.
//
// Policy:
//  - Each step batch holds one decode token for every running sequence that is ready, then prefill
//    chunks (at most `prefill_chunk` tokens each, so long prompts are chunked and never stall the
//    decodes of others), then newly admitted sequences, all within `token_budget` tokens.
//  - Admission is strictly first-come first-served: only the head of the queue may be admitted, so
//    a large request cannot be overtaken forever (no starvation); it waits until its prompt fits.
//  - KV on demand (coordinator/kv_pool.h mirrors the job's pools exactly): a sequence is admitted
//    when the blocks its prompt needs (less what the prefix cache already holds) are free or
//    reclaimable from the cache, and grows block by block as chunks and decodes are scheduled.
//    max_tokens reserves nothing, so a request may ask for the whole context.
//  - When a chunk needs a block and none is free: evict the least recently used unused cache block;
//    if none, preempt the newest running sequence of that KV domain that is newer than the one
//    growing (it loses its KV, keeps its tokens and its sampler on the job, and goes back to the
//    queue in arrival order; when re-admitted it recomputes prompt + generated tokens, mostly from
//    its own cached blocks, and continues: its output and its stream are unchanged). A prefill
//    chunk that still does not fit is shortened; a sequence that cannot grow waits for older ones
//    to finish, unless it is alone in its domain and the pool is exhausted, which ends it with
//    "length" (the KV pool, like the context, bounds a sequence).
//  - Prefix caching: full blocks are published into the cache as soon as their KV is computed; a
//    new sequence starts from the longest cached chain of its prompt's full blocks (the last
//    token is always computed). With data-parallel attention each domain (rank) caches its own
//    sequences' prefixes and a new sequence goes to the domain holding the longest match (ties:
//    the most available blocks), then stays there (its sampler lives on that rank).
//  - KV operations (cache publish/evict, preemption, starts) and releases of finished sequences
//    travel with the next batch, before its work. After each batch the scheduler records the
//    per-domain state it expects; the job reports its own with the result and any difference is
//    counted (kv_view_mismatches) and logged: the two views must never disagree.
//  - Up to `pipeline_stages` batches are in flight; a sequence is in at most one of them (the next
//    token depends on the previous result anyway). A sequence preempted while in flight keeps the
//    token that batch samples (the job's sampler took it) and recomputes its KV later.
//  - Stop conditions on ids live here (EOS unless ignore_eos, stop token ids, max_tokens, context
//    length); text-based ones (stop strings) in the SequenceSink.
//  - Speculative decoding (draft_tokens = k > 0, MTP): every chunk asks the last stage to run the MTP
//    module (SeqWork.propose = k) and a sampling chunk returns k drafts with its token. The next
//    decode chunk is [last token, drafts...] (SeqWork.num_draft); the job verifies them and returns
//    1..num_draft+1 tokens (shard_node/speculative.h: each is the token plain decoding would emit,
//    so outputs are unchanged). KV: a sampling chunk holds k - 1 positions past its tokens (the
//    drafts' MTP cache) and the blocks of rejected positions are dropped when the sequence's next
//    chunk is scheduled (KvDomain::shrink here, KvBlockManager::truncate on the job), so both views
//    stay equal. Under KV pressure the drafts go first.
//  - Losing the shard job: without retry every accepted sequence fails (kUnavailable); with retry
//    they are re-queued in arrival order and restart from their prompt; the new job's cache starts
//    empty and so does the mirror. So that a restarted sampled
//    sequence draws exactly the tokens it drew before (the sampler is a pure function of its seed),
//    a sequence submitted without a seed gets one at admission to the queue.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "control/protocol.h"
#include "common/status.h"
#include "coordinator/kv_pool.h"

namespace deepshard::coordinator {

using Clock = std::chrono::steady_clock;

enum class FinishReason { kNone, kStop, kLength, kCancelled, kError };
const char* finish_reason_name(FinishReason r);  // "stop", "length", "cancelled", "error"

// Receives a sequence's tokens and its end. Called on the scheduler's thread.
class SequenceSink {
public:
    virtual ~SequenceSink() = default;
    // A sampled token. `by_ids` is the finish the scheduler decided from ids/counts (kNone: keep
    // going). Returns the final decision: by_ids, or kStop for a stop string, or kError (the sink
    // holds the reason, e.g. a retried sequence produced a different token).
    virtual FinishReason on_token(const control::SeqOutput& out, FinishReason by_ids) = 0;
    // The sequence ended; `error` is set for kError decided by the scheduler (else OK).
    virtual void on_finish(FinishReason reason, const Status& error) = 0;
    // The shard job was lost and the sequence restarts from its prompt (retry mode).
    virtual void on_restart() = 0;
    // Disaggregation: a prefill leg's prompt is computed and staged for export (called just before
    // on_finish(kStop)); `domain` is the KV domain that held it.
    virtual void on_prefilled(int32_t domain) { (void)domain; }
};

struct SequenceSpec {
    std::vector<int32_t> prompt;
    control::SamplingSpec sampling;
    int64_t max_tokens = 16;
    std::vector<int32_t> stop_token_ids;
    bool ignore_eos = false;
    std::optional<Clock::time_point> deadline;
    std::shared_ptr<SequenceSink> sink;
    // Prefill/decode disaggregation (coordinator/engine.h). kv_export: a prefill leg: its known
    // tokens are the prompt only; its chunks never sample, the last one carries the export, and it
    // ends (on_prefilled, then on_finish(kStop)) once that chunk is computed. kv_import: the KV of
    // positions [0, import_positions) is fetched from the prefill job (chunks with kv_import, no
    // compute); if a fetch fails the job says so and those positions are computed instead.
    std::optional<control::KvExport> kv_export;
    std::optional<control::KvImport> kv_import;
    int64_t import_positions = 0;
    // Already accepted elsewhere (a prefill leg's hand-off): the queue bound does not apply, since
    // refusing it now would throw away a computed prompt. The prefill scheduler's own bound still
    // limits how many such requests exist.
    bool accepted = false;
};

struct SchedulerOptions {
    size_t max_queue = 256;
    size_t max_running = 64;
    int64_t token_budget = 512;
    int64_t prefill_chunk = 256;
    int64_t max_context = 4096;
    int32_t eos_id = 1;
    int32_t vocab_size = 0;  // 0 = do not check returned ids
    bool retry = false;
    bool prefix_cache = true;
    int32_t draft_tokens = 0;  // speculative decoding (MTP): drafts per step, 0 = off (<= kMaxDraftTokens)
};

struct Capacity {
    uint64_t session_id = 0;
    uint64_t kv_blocks = 0;
    uint32_t kv_block_size = 16;
    uint32_t pipeline_stages = 1;
    uint32_t max_batch_tokens = 0;  // 0 = no limit from the job
    uint32_t max_sequences = 0;
    uint32_t vocab_size = 0;
    uint32_t kv_domains = 1;  // independent KV pools of kv_blocks each (Hello.kv_domains)
};

struct SchedulerStats {
    size_t queued = 0;
    size_t running = 0;
    size_t in_flight_batches = 0;
    uint64_t kv_blocks_total = 0;   // over all domains
    uint64_t kv_blocks_used = 0;    // blocks holding KV (sequences + cache)
    uint64_t kv_blocks_cached = 0;  // prefix-cache blocks (some also used by running sequences)
    uint64_t prompt_tokens = 0;     // prefill tokens sent, cumulative (recomputation included)
    uint64_t generated_tokens = 0;
    uint64_t prefix_query_tokens = 0;  // prompt tokens of admitted requests
    uint64_t prefix_hit_tokens = 0;    // of those, served from the prefix cache
    uint64_t kv_evicted_blocks = 0;
    uint64_t preemptions = 0;
    uint64_t recomputed_tokens = 0;    // tokens recomputed by preempted sequences
    uint64_t kv_exhausted = 0;         // sequences ended because the KV pool could not hold them
    uint64_t kv_view_mismatches = 0;   // results whose KV report differed from the mirror
    uint64_t spec_verify_steps = 0;    // speculative decoding: chunks that verified drafts
    uint64_t spec_draft_tokens = 0;    // drafts sent for verification
    uint64_t spec_accepted_tokens = 0; // of those, accepted
    uint64_t kv_imported_tokens = 0;   // disaggregation: positions whose KV was fetched, not computed
    uint64_t kv_import_failures = 0;   // imports the job could not complete (computed instead)
    uint64_t kv_exports = 0;           // prefill legs finished and staged
};

class Scheduler {
public:
    explicit Scheduler(SchedulerOptions options);

    // Queues a sequence; returns its id. kResourceExhausted when the queue is full;
    // kInvalidArgument when it could never fit (prompt beyond the context, or more KV than exists).
    StatusOr<uint64_t> submit(SequenceSpec spec, Clock::time_point now);
    // Ends a queued or running sequence with kCancelled. Unknown ids are ignored.
    void cancel(uint64_t seq_id);

    // A shard job registered / was lost.
    void attach(const Capacity& capacity);
    void detach(const Status& reason);
    bool attached() const { return capacity_.has_value(); }
    const std::optional<Capacity>& capacity() const { return capacity_; }

    // The next batch to send, or nullopt (nothing to do, no job, or P batches in flight).
    std::optional<control::StepBatch> next_batch(Clock::time_point now);
    // Applies a result; unknown step ids are a kProtocol error (the caller drops the job).
    Status on_result(const control::StepResult& result, Clock::time_point now);
    // Fails every sequence whose deadline has passed.
    void expire(Clock::time_point now);
    // Ends every queued and running sequence with kError(`error`), retry or not (shutdown).
    void fail_all(const Status& error);

    SchedulerStats stats() const;
    bool idle() const { return queue_.empty() && running_.empty(); }

private:
    struct Seq {
        uint64_t id = 0;
        uint64_t arrival = 0;
        SequenceSpec spec;
        std::vector<int32_t> tokens;  // prompt, then the generated tokens
        int64_t computed = 0;         // positions whose KV exists on the shard job
        int32_t domain = -1;          // KV domain, fixed once started (its sampler lives there)
        bool in_flight = false;
        bool started = false;         // the job has its sampler (sent is_new in this session)
        bool resident = false;        // holds KV on the job (admitted and not preempted)
        uint64_t epoch = 0;           // bumps on preemption: older in-flight chunks left no KV
        std::vector<int32_t> drafts;  // speculative decoding: MTP drafts for the next decode chunk
        bool import_failed = false;   // disaggregation: compute the rest instead of fetching it
        size_t plen() const { return spec.prompt.size(); }
        size_t generated() const { return tokens.size() - plen(); }
        int64_t known() const { return static_cast<int64_t>(tokens.size()); }
    };
    struct InFlightSeq {
        uint64_t seq_id;
        int64_t num_tokens;  // known tokens of the chunk (drafts not counted)
        bool sample;
        uint64_t epoch;
        int64_t num_draft = 0;
        bool import = false;  // a kv_import chunk
    };
    struct InFlightBatch {
        std::vector<InFlightSeq> members;
        std::vector<deepshard::control::KvReport> expected;  // per domain, after this batch
    };
    // What the batch being built holds so far.
    struct Building {
        deepshard::control::StepBatch batch;
        std::vector<InFlightSeq> members;
        int64_t left = 0;
        size_t max_seqs = 0;
        bool full() const { return left <= 0 || batch.seqs.size() >= max_seqs; }
    };

    void finish(uint64_t id, FinishReason reason, const Status& error);
    int64_t budget() const;
    uint64_t prompt_blocks(size_t tokens) const;
    KvDomain& domain_of(const Seq& s) { return domains_.at(static_cast<size_t>(s.domain)); }
    // Admits the queue's head if its tokens fit; false when it must wait.
    bool admit(Seq& s);
    // Schedules the next chunk of a resident sequence (up to `want` tokens), making room in its
    // domain (evict, preempt newer sequences, shorten a prefill). False when it cannot run now.
    bool schedule_chunk(Seq& s, int64_t want, Building& b);
    // Applies one sequence's outputs of a result (speculative decoding: several), in order.
    void apply_outputs(Seq& s, const InFlightSeq& m, const control::SeqOutput* outs, size_t count, uint64_t step_id);
    void preempt(Seq& victim);
    void drop_pending_start(uint64_t id);
    void insert_running(uint64_t id);
    void requeue(uint64_t id);
    void publish(Seq& s);
    void check_kv_report(uint64_t step_id, const std::vector<deepshard::control::KvReport>& expected,
                         const std::vector<deepshard::control::KvReport>& got);

    SchedulerOptions options_;
    std::mt19937_64 seed_source_{std::random_device{}()};  // seeds for requests that bring none
    std::optional<Capacity> capacity_;
    uint64_t next_seq_id_ = 1;
    uint64_t next_arrival_ = 1;
    uint64_t next_step_id_ = 1;
    uint64_t next_entry_ = 1;
    std::vector<KvDomain> domains_;
    std::deque<uint64_t> queue_;              // waiting (new and preempted), in arrival order
    std::map<uint64_t, Seq> seqs_;            // queued and running, by id (ids grow with arrival)
    std::vector<uint64_t> running_;           // resident, in arrival order
    std::map<uint64_t, InFlightBatch> in_flight_;
    std::vector<uint64_t> pending_release_;
    deepshard::control::KvOps pending_ops_;        // decided, sent with the next batch
    SchedulerStats counters_;                 // the cumulative fields
};

}  // namespace deepshard::coordinator
