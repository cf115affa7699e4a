// Scheduler policy: token budget, chunked prefill, decode after prefill, FCFS admission under KV
// limits, pipeline depth, cancellation and release, bounded queue, deadlines, shard loss.
#include "coordinator/scheduler.h"

#include <gtest/gtest.h>

namespace deepshard::coordinator {
namespace {

namespace ctl = deepshard::control;

struct Sink : SequenceSink {
    std::vector<int32_t> tokens;
    FinishReason finished = FinishReason::kNone;
    Status error;
    int restarts = 0;
    FinishReason on_token(const ctl::SeqOutput& out, FinishReason by_ids) override {
        tokens.push_back(out.token);
        return by_ids;
    }
    void on_finish(FinishReason reason, const Status& e) override {
        finished = reason;
        error = e;
    }
    void on_restart() override { ++restarts; }
};

std::vector<int32_t> iota_prompt(int n) {
    std::vector<int32_t> p;
    for (int i = 0; i < n; ++i) p.push_back(10 + i);
    return p;
}

Capacity cap(uint64_t blocks, uint32_t stages = 1) {
    Capacity c;
    c.session_id = 1;
    c.kv_blocks = blocks;
    c.kv_block_size = 4;
    c.pipeline_stages = stages;
    c.vocab_size = 1000;
    return c;
}

class SchedulerTest : public ::testing::Test {
protected:
    SchedulerOptions opts() {
        SchedulerOptions o;
        o.max_queue = 4;
        o.token_budget = 8;
        o.prefill_chunk = 4;
        o.max_context = 64;
        o.eos_id = 1;
        o.vocab_size = 1000;
        return o;
    }
    uint64_t add(Scheduler& s, int prompt, int64_t max_tokens, std::shared_ptr<Sink>* sink_out = nullptr) {
        auto sink = std::make_shared<Sink>();
        SequenceSpec spec;
        spec.prompt = iota_prompt(prompt);
        spec.max_tokens = max_tokens;
        spec.sink = sink;
        auto id = s.submit(std::move(spec), now_);
        EXPECT_TRUE(id.ok()) << id.status().to_string();
        if (sink_out) *sink_out = sink;
        return id.ok() ? *id : 0;
    }
    // Answers a batch: every sampled sequence gets `token`.
    ctl::StepResult answer(const ctl::StepBatch& b, int32_t token) {
        ctl::StepResult r;
        r.step_id = b.step_id;
        for (const auto& w : b.seqs) {
            if (!w.sample) continue;
            ctl::SeqOutput o;
            o.seq_id = w.seq_id;
            o.token = token;
            r.outputs.push_back(o);
        }
        return r;
    }
    static int64_t tokens_in(const ctl::StepBatch& b) {
        int64_t n = 0;
        for (const auto& w : b.seqs) n += static_cast<int64_t>(w.tokens.size());
        return n;
    }
    Clock::time_point now_ = Clock::now();
};

TEST_F(SchedulerTest, NothingWithoutAShardJob) {
    Scheduler s(opts());
    add(s, 3, 2);
    EXPECT_FALSE(s.next_batch(now_).has_value());
}

TEST_F(SchedulerTest, ChunkedPrefillThenDecode) {
    Scheduler s(opts());
    s.attach(cap(100));
    auto a = add(s, 10, 2);
    // Chunks of at most prefill_chunk = 4: positions 0, 4, 8; only the last samples.
    std::vector<uint32_t> starts;
    for (int i = 0; i < 3; ++i) {
        auto b = s.next_batch(now_);
        ASSERT_TRUE(b.has_value());
        ASSERT_EQ(b->seqs.size(), 1u);
        const auto& w = b->seqs[0];
        EXPECT_EQ(w.seq_id, a);
        EXPECT_EQ(w.is_new, i == 0 ? 1 : 0);
        EXPECT_EQ(w.sample, i == 2 ? 1 : 0);
        EXPECT_EQ(w.tokens.size(), i == 2 ? 2u : 4u);
        starts.push_back(w.start_pos);
        // The sequence is in flight: nothing more until the result comes back (one stage).
        EXPECT_FALSE(s.next_batch(now_).has_value());
        ASSERT_TRUE(s.on_result(answer(*b, 500), now_).ok());
    }
    EXPECT_EQ(starts, (std::vector<uint32_t>{0, 4, 8}));
    auto d = s.next_batch(now_);
    ASSERT_TRUE(d.has_value());
    ASSERT_EQ(d->seqs.size(), 1u);
    EXPECT_EQ(d->seqs[0].start_pos, 10u);
    EXPECT_EQ(d->seqs[0].tokens, (std::vector<int32_t>{500}));
    EXPECT_EQ(d->seqs[0].sample, 1);
}

TEST_F(SchedulerTest, TokenBudgetAndPipelineDepth) {
    SchedulerOptions o = opts();
    o.max_queue = 16;
    Scheduler s(o);
    s.attach(cap(100, 2));
    for (int i = 0; i < 8; ++i) add(s, 4, 3);
    int batches = 0;
    while (auto b = s.next_batch(now_)) {
        EXPECT_EQ(tokens_in(*b), 8);  // two 4-token prompts fill the 8-token budget
        ++batches;
    }
    // At most P = 2 batches in flight, although work is still queued.
    EXPECT_EQ(batches, 2);
    EXPECT_EQ(s.stats().in_flight_batches, 2u);
    EXPECT_EQ(s.stats().queued, 4u);
}

TEST_F(SchedulerTest, SequenceNeverInTwoBatchesInFlight) {
    Scheduler s(opts());
    s.attach(cap(100, 3));
    add(s, 2, 5);
    auto b1 = s.next_batch(now_);
    ASSERT_TRUE(b1.has_value());
    EXPECT_FALSE(s.next_batch(now_).has_value());  // its only sequence is busy
}

TEST_F(SchedulerTest, FcfsHeadOfLineWaitsForKv) {
    Scheduler s(opts());
    s.attach(cap(10));  // 10 blocks of 4 tokens
    std::shared_ptr<Sink> big_sink;
    auto first = add(s, 4, 20);             // 24 tokens -> 6 blocks
    auto big = add(s, 4, 20, &big_sink);    // 6 blocks: does not fit beside the first
    auto small = add(s, 2, 2);              // 1 block: would fit, but must not overtake
    auto b = s.next_batch(now_);
    ASSERT_TRUE(b.has_value());
    ASSERT_EQ(b->seqs.size(), 1u);
    EXPECT_EQ(b->seqs[0].seq_id, first);
    EXPECT_EQ(s.stats().queued, 2u);
    ASSERT_TRUE(s.on_result(answer(*b, 1), now_).ok());  // EOS: first finishes, frees its blocks
    auto b2 = s.next_batch(now_);
    ASSERT_TRUE(b2.has_value());
    ASSERT_GE(b2->seqs.size(), 1u);
    EXPECT_EQ(b2->seqs[0].seq_id, big);
    EXPECT_EQ(b2->release, (std::vector<uint64_t>{first}));
    bool small_in = false;
    for (const auto& w : b2->seqs) small_in |= w.seq_id == small;
    EXPECT_TRUE(small_in);  // admitted after the big one, in arrival order
}

TEST_F(SchedulerTest, RejectsWhatCanNeverFit) {
    Scheduler s(opts());
    s.attach(cap(2));
    SequenceSpec spec;
    spec.prompt = iota_prompt(4);
    spec.max_tokens = 20;
    auto r = s.submit(std::move(spec), now_);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    SequenceSpec long_prompt;
    long_prompt.prompt = iota_prompt(64);
    auto r2 = s.submit(std::move(long_prompt), now_);
    ASSERT_FALSE(r2.ok());
    EXPECT_EQ(r2.status().code(), StatusCode::kInvalidArgument);
}

TEST_F(SchedulerTest, BoundedQueueIsOverloaded) {
    Scheduler s(opts());
    for (int i = 0; i < 4; ++i) add(s, 2, 2);
    SequenceSpec spec;
    spec.prompt = iota_prompt(2);
    auto r = s.submit(std::move(spec), now_);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
}

TEST_F(SchedulerTest, CancelQueuedAndRunning) {
    Scheduler s(opts());
    s.attach(cap(100));
    std::shared_ptr<Sink> a_sink, b_sink;
    auto a = add(s, 2, 5, &a_sink);
    auto batch = s.next_batch(now_);
    ASSERT_TRUE(batch.has_value());
    auto b = add(s, 2, 5, &b_sink);
    s.cancel(b);  // queued
    EXPECT_EQ(b_sink->finished, FinishReason::kCancelled);
    s.cancel(a);  // running, in flight
    EXPECT_EQ(a_sink->finished, FinishReason::kCancelled);
    // The in-flight result for the cancelled sequence is ignored.
    ASSERT_TRUE(s.on_result(answer(*batch, 7), now_).ok());
    EXPECT_TRUE(a_sink->tokens.empty());
    // Its KV is released with the next batch.
    add(s, 2, 2);
    auto next = s.next_batch(now_);
    ASSERT_TRUE(next.has_value());
    EXPECT_EQ(next->release, (std::vector<uint64_t>{a}));
    EXPECT_EQ(s.stats().running, 1u);
}

TEST_F(SchedulerTest, StopsOnEosAndMaxTokens) {
    Scheduler s(opts());
    s.attach(cap(100));
    std::shared_ptr<Sink> eos_sink, len_sink;
    add(s, 2, 10, &eos_sink);
    add(s, 2, 2, &len_sink);
    auto b = s.next_batch(now_);
    ASSERT_TRUE(b.has_value());
    ctl::StepResult r = answer(*b, 5);
    r.outputs[0].token = 1;  // EOS for the first
    ASSERT_TRUE(s.on_result(r, now_).ok());
    EXPECT_EQ(eos_sink->finished, FinishReason::kStop);
    auto b2 = s.next_batch(now_);
    ASSERT_TRUE(b2.has_value());
    ASSERT_TRUE(s.on_result(answer(*b2, 6), now_).ok());
    EXPECT_EQ(len_sink->finished, FinishReason::kLength);
    EXPECT_EQ(len_sink->tokens, (std::vector<int32_t>{5, 6}));
    EXPECT_TRUE(s.idle());
}

TEST_F(SchedulerTest, UnknownStepIsProtocolError) {
    Scheduler s(opts());
    s.attach(cap(100));
    ctl::StepResult r;
    r.step_id = 99;
    EXPECT_EQ(s.on_result(r, now_).code(), StatusCode::kProtocol);
}

TEST_F(SchedulerTest, DeadlineExpires) {
    Scheduler s(opts());
    auto sink = std::make_shared<Sink>();
    SequenceSpec spec;
    spec.prompt = iota_prompt(2);
    spec.deadline = now_ + std::chrono::seconds(1);
    spec.sink = sink;
    ASSERT_TRUE(s.submit(std::move(spec), now_).ok());
    s.expire(now_);
    EXPECT_EQ(sink->finished, FinishReason::kNone);
    s.expire(now_ + std::chrono::seconds(2));
    EXPECT_EQ(sink->finished, FinishReason::kError);
    EXPECT_EQ(sink->error.code(), StatusCode::kDeadlineExceeded);
}

TEST_F(SchedulerTest, ShardLossFailsEverythingWithoutRetry) {
    Scheduler s(opts());
    s.attach(cap(100));
    std::shared_ptr<Sink> a, b;
    add(s, 2, 5, &a);
    ASSERT_TRUE(s.next_batch(now_).has_value());
    add(s, 2, 5, &b);
    s.detach(unavailable("rank 3 died"));
    EXPECT_EQ(a->finished, FinishReason::kError);
    EXPECT_EQ(a->error.code(), StatusCode::kUnavailable);
    EXPECT_EQ(b->finished, FinishReason::kError);
    EXPECT_TRUE(s.idle());
}

TEST_F(SchedulerTest, ShardLossRequeuesWithRetry) {
    SchedulerOptions o = opts();
    o.retry = true;
    Scheduler s(o);
    s.attach(cap(100));
    std::shared_ptr<Sink> a;
    auto id = add(s, 2, 5, &a);
    auto b = s.next_batch(now_);
    ASSERT_TRUE(b.has_value());
    ASSERT_TRUE(s.on_result(answer(*b, 9), now_).ok());
    s.detach(unavailable("lost"));
    EXPECT_EQ(a->finished, FinishReason::kNone);
    EXPECT_EQ(a->restarts, 1);
    EXPECT_EQ(s.stats().queued, 1u);
    s.attach(cap(100));
    auto again = s.next_batch(now_);
    ASSERT_TRUE(again.has_value());
    ASSERT_EQ(again->seqs.size(), 1u);
    EXPECT_EQ(again->seqs[0].seq_id, id);
    EXPECT_EQ(again->seqs[0].is_new, 1);  // restarts from its prompt
    EXPECT_EQ(again->seqs[0].start_pos, 0u);
}

// A sampled request without a seed gets one at admission, and a restart after losing the shard job
// sends the very same seed, so the replay draws the tokens already streamed (the sampler is a pure
// function of its seed). Without it every restart would sample afresh and the retry would fail with
// "produced token X where Y was already streamed".
TEST_F(SchedulerTest, UnseededRequestGetsASeedThatSurvivesRetry) {
    SchedulerOptions o = opts();
    o.retry = true;
    Scheduler s(o);
    s.attach(cap(100));
    auto submit = [&](bool seeded) {
        SequenceSpec spec;
        spec.prompt = iota_prompt(2);
        spec.max_tokens = 5;
        spec.sampling.temperature = 1.0f;
        if (seeded) {
            spec.sampling.has_seed = 1;
            spec.sampling.seed = 1234;
        }
        spec.sink = std::make_shared<Sink>();
        auto id = s.submit(std::move(spec), now_);
        EXPECT_TRUE(id.ok());
        return id.ok() ? *id : 0;
    };
    const uint64_t unseeded = submit(false);
    const uint64_t seeded = submit(true);
    const uint64_t unseeded2 = submit(false);
    std::map<uint64_t, ctl::SamplingSpec> first;
    auto b = s.next_batch(now_);
    ASSERT_TRUE(b.has_value());
    for (const auto& w : b->seqs) first[w.seq_id] = w.sampling;
    ASSERT_EQ(first.size(), 3u);
    EXPECT_EQ(first[unseeded].has_seed, 1);
    EXPECT_NE(first[unseeded].seed, first[unseeded2].seed);  // each request draws its own
    EXPECT_EQ(first[seeded].has_seed, 1);
    EXPECT_EQ(first[seeded].seed, 1234u);  // a client's seed is kept as is
    ASSERT_TRUE(s.on_result(answer(*b, 9), now_).ok());
    s.detach(unavailable("lost"));
    s.attach(cap(100));
    auto again = s.next_batch(now_);
    ASSERT_TRUE(again.has_value());
    ASSERT_EQ(again->seqs.size(), 3u);
    for (const auto& w : again->seqs) {
        EXPECT_EQ(w.is_new, 1);
        EXPECT_EQ(w.sampling.has_seed, 1);
        EXPECT_EQ(w.sampling.seed, first[w.seq_id].seed) << "sequence " << w.seq_id;
    }
}

}  // namespace
}  // namespace deepshard::coordinator
