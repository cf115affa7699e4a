// Continuous-batching scheduler (DESIGN §3 step 3). A pure state machine: no threads, no sockets,
// no clock of its own (callers pass `now`), so every policy is unit-testable. The Engine owns one
// and calls it from a single thread; it is not thread-safe.
//
// Policy:
//  - Each step batch holds one decode token for every running sequence that is ready, then prefill
//    chunks (at most `prefill_chunk` tokens each, so long prompts are chunked and never stall the
//    decodes of others), then newly admitted sequences, all within `token_budget` tokens.
//  - Admission is strictly first-come first-served: only the head of the queue may be admitted, so
//    a large request cannot be overtaken forever (no starvation); it waits until enough KV frees up.
//  - KV: a sequence needs ceil(tokens / kv_block_size) blocks. On admission it reserves the blocks
//    for its whole possible length, min(prompt + max_tokens, context). Reserving up front means a
//    running sequence can never run out of KV mid-generation, so no preemption is needed; the price
//    is lower concurrency for requests with large max_tokens. Blocks are freed when it finishes and
//    the shard job is told (`release`) in the next batch, before that batch's new work.
//  - Up to `pipeline_stages` batches are in flight; a sequence is in at most one of them (the next
//    token depends on the previous result anyway).
//  - Stop conditions on ids live here (EOS unless ignore_eos, stop token ids, max_tokens, context
//    length); text-based ones (stop strings) in the SequenceSink.
//  - Losing the shard job: without retry every accepted sequence fails (kUnavailable); with retry
//    they are re-queued in arrival order and restart from their prompt.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "control/protocol.h"
#include "common/status.h"

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
};

struct SequenceSpec {
    std::vector<int32_t> prompt;
    control::SamplingSpec sampling;
    int64_t max_tokens = 16;
    std::vector<int32_t> stop_token_ids;
    bool ignore_eos = false;
    std::optional<Clock::time_point> deadline;
    std::shared_ptr<SequenceSink> sink;
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
};

struct Capacity {
    uint64_t session_id = 0;
    uint64_t kv_blocks = 0;
    uint32_t kv_block_size = 16;
    uint32_t pipeline_stages = 1;
    uint32_t max_batch_tokens = 0;  // 0 = no limit from the job
    uint32_t max_sequences = 0;
    uint32_t vocab_size = 0;
};

struct SchedulerStats {
    size_t queued = 0;
    size_t running = 0;
    size_t in_flight_batches = 0;
    uint64_t kv_blocks_total = 0;
    uint64_t kv_blocks_reserved = 0;
    uint64_t kv_blocks_used = 0;  // blocks holding tokens right now
    uint64_t prompt_tokens = 0;   // prefill tokens sent, cumulative
    uint64_t generated_tokens = 0;
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
        std::vector<int32_t> generated;
        int64_t computed = 0;  // positions whose KV exists on the shard job
        uint64_t blocks = 0;   // reserved
        bool in_flight = false;
        bool started = false;  // got its is_new chunk in the current job
    };
    struct InFlightSeq {
        uint64_t seq_id;
        int64_t num_tokens;
        bool sample;
    };

    uint64_t blocks_needed(const Seq& s) const;
    void finish(uint64_t id, FinishReason reason, const Status& error);
    int64_t budget() const;

    SchedulerOptions options_;
    std::optional<Capacity> capacity_;
    uint64_t next_seq_id_ = 1;
    uint64_t next_arrival_ = 1;
    uint64_t next_step_id_ = 1;
    uint64_t free_blocks_ = 0;
    std::deque<uint64_t> queue_;              // FCFS
    std::map<uint64_t, Seq> seqs_;            // queued and running, by id (ids grow with arrival)
    std::vector<uint64_t> running_;           // admitted, in admission order
    std::map<uint64_t, std::vector<InFlightSeq>> in_flight_;
    std::vector<uint64_t> pending_release_;
    uint64_t prompt_tokens_ = 0;
    uint64_t generated_tokens_ = 0;
};

}  // namespace deepshard::coordinator
