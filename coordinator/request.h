// One client request as the front ends see it: the tokens and text produced so far, as a list of
// events that HTTP streaming and Thrift Poll read from an offset, and the final outcome.
//
// Request is the scheduler's SequenceSink: on_token/on_finish/on_restart run on the engine thread;
// everything else is thread-safe for any number of readers. Text is produced with the tokenizer's
// IncrementalDecoder (never splitting a UTF-8 character). Stop strings are matched on the text;
// text that could still turn out to be the start of a stop string is held back until it cannot.
//
// Retry: after a restart the regenerated tokens are compared with the ones already recorded (and
// possibly streamed); they are not emitted again. A difference fails the request loudly.
#pragma once

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "coordinator/metrics.h"
#include "coordinator/scheduler.h"
#include "model/tokenizer/tokenizer.h"

namespace deepshard::coordinator {

struct TokenLogprob {
    int32_t token = -1;
    float logprob = 0;
    std::vector<int32_t> top_ids;
    std::vector<float> top_logprobs;
};

// What one update added: released text and the tokens sampled since the previous event.
struct RequestEvent {
    std::string text;
    std::vector<TokenLogprob> tokens;
};

struct RequestSnapshot {
    std::vector<RequestEvent> events;  // from the asked offset
    size_t next_offset = 0;
    bool finished = false;
    FinishReason finish_reason = FinishReason::kNone;
    Status error;  // set when finish_reason == kError or kCancelled
    int64_t prompt_tokens = 0;
    int64_t completion_tokens = 0;
};

class Request : public SequenceSink {
public:
    // `tokenizer` may be null (token-only model): text is then empty and stop strings unsupported.
    Request(std::shared_ptr<const model::Tokenizer> tokenizer, std::vector<std::string> stop, int64_t prompt_tokens,
            bool want_logprobs);

    uint64_t id() const { return id_; }
    void set_id(uint64_t id) { id_ = id; }
    // TTFT / inter-token latency go here (set before submission).
    void set_metrics(std::shared_ptr<Metrics> metrics) { metrics_ = std::move(metrics); }
    Clock::time_point created() const { return created_; }

    // Front-end side.
    RequestSnapshot snapshot(size_t offset) const;
    // Blocks until there are events past `offset`, the request finished, or `deadline`.
    RequestSnapshot wait(size_t offset, Clock::time_point deadline) const;
    // Called (on the engine thread, without locks held) after every change. One subscriber.
    void subscribe(std::function<void()> on_change);
    bool finished() const;

    // Latencies for metrics: time of the first token and of every token (seconds since creation).
    std::vector<double> token_times() const;

    // SequenceSink (engine thread).
    FinishReason on_token(const control::SeqOutput& out, FinishReason by_ids) override;
    void on_finish(FinishReason reason, const Status& error) override;
    void on_restart() override;

private:
    void notify();
    // Emits text that can no longer be part of a stop string; returns true when a stop string hit.
    bool release_text(bool final);

    std::shared_ptr<const model::Tokenizer> tokenizer_;
    std::vector<std::string> stop_;
    int64_t prompt_tokens_;
    bool want_logprobs_;
    uint64_t id_ = 0;
    std::shared_ptr<Metrics> metrics_;
    Clock::time_point created_ = Clock::now();

    // Engine-thread state.
    std::optional<model::IncrementalDecoder> decoder_;
    std::string held_;          // decoded text not yet released (possible stop-string prefix)
    size_t replay_ = 0;         // after a restart: tokens regenerated so far
    bool replaying_ = false;
    bool text_done_ = false;  // final text released (stop string or last token)
    Status replay_error_;
    std::vector<TokenLogprob> unflushed_;  // tokens not yet attached to an event

    mutable std::mutex mu_;
    mutable std::condition_variable cv_;
    std::vector<RequestEvent> events_;
    std::vector<int32_t> tokens_;  // every token recorded (for retry comparison)
    std::vector<double> token_times_;
    bool finished_ = false;
    FinishReason reason_ = FinishReason::kNone;
    Status error_;
    std::function<void()> on_change_;
};

}  // namespace deepshard::coordinator
