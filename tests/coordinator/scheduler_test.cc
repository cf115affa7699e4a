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

std::vector<int32_t> iota_prompt(int n, int first = 10) {
    std::vector<int32_t> p;
    for (int i = 0; i < n; ++i) p.push_back(first + i);
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
    // Prompts of different requests differ (unless `first` says otherwise): no accidental cache hits.
    uint64_t add(Scheduler& s, int prompt, int64_t max_tokens, std::shared_ptr<Sink>* sink_out = nullptr,
                 int first = -1) {
        auto sink = std::make_shared<Sink>();
        SequenceSpec spec;
        spec.prompt = iota_prompt(prompt, first >= 0 ? first : 10 + 100 * next_prompt_++);
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
    int next_prompt_ = 0;
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
    SchedulerOptions o = opts();
    o.token_budget = 64;
    o.prefill_chunk = 64;
    Scheduler s(o);
    s.attach(cap(10));  // 10 blocks of 4 tokens
    auto first = add(s, 12, 20);            // 3 blocks for its prompt
    std::shared_ptr<Sink> big_sink;
    auto big = add(s, 32, 2, &big_sink);    // 8 blocks: does not fit beside the first
    auto small = add(s, 2, 2);              // 1 block: would fit, but must not overtake
    auto b = s.next_batch(now_);
    ASSERT_TRUE(b.has_value());
    ASSERT_EQ(b->seqs.size(), 1u);
    EXPECT_EQ(b->seqs[0].seq_id, first);
    EXPECT_EQ(s.stats().queued, 2u);
    EXPECT_EQ(s.stats().kv_blocks_used, 3u);  // the prompt's blocks only, not max_tokens'
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

// A running prefill's remaining prompt blocks are spoken for: the next request is not admitted into
// them (it would only be preempted again before the prefill ends).
TEST_F(SchedulerTest, AdmissionLeavesRoomForRunningPrefills) {
    Scheduler s(opts());  // prefill chunks of 4 tokens, 8 tokens per batch
    s.attach(cap(5));
    auto a = add(s, 16, 1);  // 4 blocks, prefilled over 4 steps
    auto b = add(s, 8, 2);   // 2 blocks: the pool has room for them only once a is done
    for (int i = 0; i < 4; ++i) {
        auto batch = s.next_batch(now_);
        ASSERT_TRUE(batch.has_value());
        ASSERT_EQ(batch->seqs.size(), 1u) << "batch " << i;
        EXPECT_EQ(batch->seqs[0].seq_id, a);
        ASSERT_TRUE(s.on_result(answer(*batch, 5), now_).ok());
    }
    auto batch = s.next_batch(now_);
    ASSERT_TRUE(batch.has_value());
    ASSERT_EQ(batch->seqs.size(), 1u);
    EXPECT_EQ(batch->seqs[0].seq_id, b);
    EXPECT_EQ(s.stats().preemptions, 0u);
}

TEST_F(SchedulerTest, RejectsWhatCanNeverFit) {
    Scheduler s(opts());
    s.attach(cap(2));
    // max_tokens reserves nothing: a long generation is admitted...
    SequenceSpec fits;
    fits.prompt = iota_prompt(4);
    fits.max_tokens = 1000;
    EXPECT_TRUE(s.submit(std::move(fits), now_).ok());
    // ...but a prompt larger than the whole pool can never run.
    SequenceSpec spec;
    spec.prompt = iota_prompt(9);
    auto r = s.submit(std::move(spec), now_);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("KV blocks"), std::string::npos) << r.status().message();
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
    // The new job's cache is empty, and so is the mirror: no start from a cached prefix.
    ASSERT_EQ(again->kv.start.size(), 1u);
    EXPECT_TRUE(again->kv.start[0].prefix.empty());
    EXPECT_TRUE(again->kv.publish.empty());
    EXPECT_EQ(s.stats().kv_blocks_cached, 0u);
}

// Finishes a batch whose every sampled sequence gets `token`, then builds the next.
std::optional<ctl::StepBatch> step(Scheduler& s, const ctl::StepBatch& b, int32_t token, Clock::time_point now) {
    ctl::StepResult r;
    r.step_id = b.step_id;
    for (const auto& w : b.seqs) {
        if (w.sample) r.outputs.push_back({.seq_id = w.seq_id, .token = token});
    }
    EXPECT_TRUE(s.on_result(r, now).ok());
    return s.next_batch(now);
}

TEST_F(SchedulerTest, PrefixHitStartsPastTheCachedBlocksButComputesTheLastToken) {
    Scheduler s(opts());
    s.attach(cap(100));
    const auto prompt = iota_prompt(8, 500);  // two full blocks of 4
    auto a = add(s, 8, 1, nullptr, 500);
    auto b1 = s.next_batch(now_);
    ASSERT_TRUE(b1.has_value());
    EXPECT_EQ(b1->kv.start.size(), 1u);
    EXPECT_TRUE(b1->kv.start[0].prefix.empty());
    ASSERT_EQ(b1->seqs[0].tokens.size(), 4u);
    auto b2 = step(s, *b1, 7, now_);
    ASSERT_TRUE(b2.has_value());
    ASSERT_EQ(b2->kv.publish.size(), 1u);  // the first block is cached as soon as it is computed
    EXPECT_EQ(b2->kv.publish[0].seq_id, a);
    // The same prompt again: only the first block comes from the cache (the last token of the
    // prompt must be computed to sample), and the new sequence starts there with is_new.
    auto same = add(s, 8, 1, nullptr, 500);
    std::vector<int32_t> longer = prompt;
    longer.insert(longer.end(), {1, 2, 3});
    auto sink = std::make_shared<Sink>();
    SequenceSpec spec;
    spec.prompt = longer;
    spec.max_tokens = 1;
    spec.sink = sink;
    auto ext = s.submit(std::move(spec), now_);
    ASSERT_TRUE(ext.ok());
    auto b3 = step(s, *b2, 9, now_);  // a's second block computed: published in b3; a finishes
    ASSERT_TRUE(b3.has_value());
    EXPECT_EQ(b3->release, (std::vector<uint64_t>{a}));
    ASSERT_EQ(b3->kv.publish.size(), 1u);
    EXPECT_EQ(b3->kv.publish[0].block_index, 1u);
    ASSERT_EQ(b3->kv.start.size(), 2u);
    EXPECT_EQ(b3->kv.start[0].seq_id, same);
    EXPECT_EQ(b3->kv.start[0].prefix, (std::vector<uint64_t>{b2->kv.publish[0].entry}));
    EXPECT_EQ(b3->kv.start[1].seq_id, *ext);
    EXPECT_EQ(b3->kv.start[1].prefix,
              (std::vector<uint64_t>{b2->kv.publish[0].entry, b3->kv.publish[0].entry}));
    ASSERT_EQ(b3->seqs.size(), 2u);
    EXPECT_EQ(b3->seqs[0].start_pos, 4u);
    EXPECT_EQ(b3->seqs[0].tokens, std::vector<int32_t>(prompt.begin() + 4, prompt.end()));
    EXPECT_EQ(b3->seqs[0].is_new, 1);
    EXPECT_EQ(b3->seqs[0].prompt, prompt);  // the sampler still sees the whole prompt
    EXPECT_EQ(b3->seqs[1].start_pos, 8u);
    EXPECT_EQ(b3->seqs[1].tokens, (std::vector<int32_t>{1, 2, 3}));
    const SchedulerStats st = s.stats();
    EXPECT_EQ(st.prefix_query_tokens, 8u + 8u + 11u);
    EXPECT_EQ(st.prefix_hit_tokens, 4u + 8u);
    EXPECT_EQ(st.prompt_tokens, 8u + 4u + 3u);
}

TEST_F(SchedulerTest, PreemptsTheNewestSequenceAndResumesItWithoutLosingTokens) {
    SchedulerOptions o = opts();
    o.prefill_chunk = 8;
    Scheduler s(o);
    s.attach(cap(6));  // 24 token positions for two sequences that want up to 24 each
    std::shared_ptr<Sink> a_sink, b_sink;
    auto a = add(s, 4, 20, &a_sink);
    auto b = add(s, 4, 20, &b_sink);
    auto batch = s.next_batch(now_);
    ASSERT_TRUE(batch.has_value());
    bool preempted = false, resumed = false;
    int32_t token = 100;
    for (int i = 0; i < 200 && batch; ++i) {
        if (!batch->kv.preempt.empty()) {
            EXPECT_EQ(batch->kv.preempt, (std::vector<uint64_t>{b}));  // the newer one
            preempted = true;
        }
        for (const auto& st : batch->kv.start) {
            if (st.seq_id == b && preempted) resumed = true;
        }
        for (const auto& w : batch->seqs) {
            if (w.seq_id == b && preempted && resumed) {
                EXPECT_EQ(w.is_new, 0);  // its sampler is kept
            }
        }
        batch = step(s, *batch, token++, now_);
    }
    EXPECT_TRUE(preempted);
    EXPECT_TRUE(resumed);
    EXPECT_EQ(a_sink->finished, FinishReason::kLength);
    EXPECT_EQ(b_sink->finished, FinishReason::kLength);
    EXPECT_EQ(a_sink->tokens.size(), 20u);
    EXPECT_EQ(b_sink->tokens.size(), 20u);  // nothing lost, nothing repeated by the recomputation
    EXPECT_GE(s.stats().preemptions, 1u);
    EXPECT_GT(s.stats().recomputed_tokens, 0u);
    EXPECT_EQ(s.stats().kv_exhausted, 0u);
    (void)a;
}

TEST_F(SchedulerTest, ASequenceLargerThanThePoolEndsWithLength) {
    Scheduler s(opts());
    s.attach(cap(2));  // 8 positions
    std::shared_ptr<Sink> sink;
    add(s, 4, 100, &sink);
    auto batch = s.next_batch(now_);
    for (int i = 0; i < 50 && batch; ++i) batch = step(s, *batch, 50, now_);
    EXPECT_EQ(sink->finished, FinishReason::kLength);
    EXPECT_EQ(sink->tokens.size(), 5u);  // positions 0..7 computed, the 9th token sampled
    EXPECT_EQ(s.stats().kv_exhausted, 1u);
    EXPECT_TRUE(s.idle());
}

TEST_F(SchedulerTest, DataParallelRoutesToTheDomainHoldingThePrefix) {
    Scheduler s(opts());
    Capacity c = cap(20);
    c.kv_domains = 2;
    s.attach(c);
    add(s, 8, 1, nullptr, 300);
    auto b1 = s.next_batch(now_);
    ASSERT_TRUE(b1.has_value());
    ASSERT_EQ(b1->kv.start.size(), 1u);
    const uint32_t home = b1->kv.start[0].domain;
    auto b2 = step(s, *b1, 5, now_);
    ASSERT_TRUE(b2.has_value());
    auto b3 = step(s, *b2, 5, now_);  // the first sequence is done, its blocks cached in `home`
    EXPECT_FALSE(b3.has_value());
    // The same prefix goes home although the other domain is emptier (it holds no cache)...
    add(s, 6, 1, nullptr, 300);
    // ...and an unrelated prompt goes to the domain with the most room.
    add(s, 6, 1, nullptr, 900);
    auto b4 = s.next_batch(now_);
    ASSERT_TRUE(b4.has_value());
    ASSERT_EQ(b4->kv.start.size(), 2u);
    EXPECT_EQ(b4->kv.start[0].domain, home);
    EXPECT_EQ(b4->kv.start[0].prefix.size(), 1u);
    EXPECT_EQ(b4->kv.start[1].domain, 1 - home);
    EXPECT_TRUE(b4->kv.start[1].prefix.empty());
}

TEST_F(SchedulerTest, EvictsCachedBlocksOnlyWhenNoneIsFree) {
    Scheduler s(opts());
    s.attach(cap(4));
    add(s, 8, 1, nullptr, 100);  // leaves 2 cached blocks
    auto b = s.next_batch(now_);
    for (int i = 0; i < 10 && b; ++i) b = step(s, *b, 5, now_);
    EXPECT_EQ(s.stats().kv_blocks_cached, 2u);
    add(s, 8, 1, nullptr, 200);  // needs 2 blocks: the 2 free ones, no eviction
    b = s.next_batch(now_);
    ASSERT_TRUE(b.has_value());
    EXPECT_TRUE(b->kv.evict.empty());
    for (int i = 0; i < 10 && b; ++i) b = step(s, *b, 5, now_);
    EXPECT_EQ(s.stats().kv_evicted_blocks, 0u);
    EXPECT_EQ(s.stats().kv_blocks_cached, 4u);
    add(s, 4, 1, nullptr, 300);  // one block, none free: the least recently used leaf goes
    b = s.next_batch(now_);
    ASSERT_TRUE(b.has_value());
    EXPECT_EQ(b->kv.evict.size(), 1u);
    EXPECT_EQ(s.stats().kv_evicted_blocks, 1u);
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

TEST_F(SchedulerTest, SpeculativeDraftsAreVerifiedAndRejectedPositionsReleased) {
    SchedulerOptions o = opts();
    o.draft_tokens = 3;
    o.token_budget = 16;
    o.prefill_chunk = 16;
    Scheduler s(o);
    s.attach(cap(100));  // blocks of 4 tokens
    std::shared_ptr<Sink> sink;
    const uint64_t a = add(s, 6, 20, &sink);
    // The prompt: sampled, the MTP module asked for 3 drafts; 6 tokens + 2 draft positions = 2 blocks.
    auto b1 = s.next_batch(now_);
    ASSERT_TRUE(b1.has_value());
    ASSERT_EQ(b1->seqs.size(), 1u);
    EXPECT_EQ(b1->seqs[0].tokens.size(), 6u);
    EXPECT_EQ(b1->seqs[0].num_draft, 0);
    EXPECT_EQ(b1->seqs[0].propose, 3);
    EXPECT_EQ(s.stats().kv_blocks_used, 2u);
    ctl::StepResult r1;
    r1.step_id = b1->step_id;
    ctl::SeqOutput out;
    out.seq_id = a;
    out.token = 50;
    out.drafts = {51, 52, 53};
    r1.outputs = {out};
    ASSERT_TRUE(s.on_result(r1, now_).ok());
    // The decode chunk carries the drafts: [50, 51, 52, 53] at position 6; 6 + 4 + 2 positions = 3 blocks.
    auto b2 = s.next_batch(now_);
    ASSERT_TRUE(b2.has_value());
    ASSERT_EQ(b2->seqs.size(), 1u);
    EXPECT_EQ(b2->seqs[0].start_pos, 6u);
    EXPECT_EQ(b2->seqs[0].tokens, (std::vector<int32_t>{50, 51, 52, 53}));
    EXPECT_EQ(b2->seqs[0].num_draft, 3);
    EXPECT_EQ(b2->seqs[0].sample, 1);
    EXPECT_EQ(s.stats().kv_blocks_used, 3u);
    // The job accepts 51, then emits 60 where the draft said 52.
    ctl::StepResult r2;
    r2.step_id = b2->step_id;
    ctl::SeqOutput o1, o2;
    o1.seq_id = o2.seq_id = a;
    o1.token = 51;
    o2.token = 60;
    o2.drafts = {61, 62, 63};
    r2.outputs = {o1, o2};
    ASSERT_TRUE(s.on_result(r2, now_).ok());
    EXPECT_EQ(sink->tokens, (std::vector<int32_t>{50, 51, 60}));
    EXPECT_EQ(s.stats().spec_draft_tokens, 3u);
    EXPECT_EQ(s.stats().spec_accepted_tokens, 1u);
    // Positions 0..7 are computed (prompt, 50, 51): the next chunk starts at 8 with the new drafts;
    // the rejected positions' blocks went first: 8 + 4 + 2 = 14 positions = 4 blocks, not 5.
    auto b3 = s.next_batch(now_);
    ASSERT_TRUE(b3.has_value());
    EXPECT_EQ(b3->seqs[0].start_pos, 8u);
    EXPECT_EQ(b3->seqs[0].tokens, (std::vector<int32_t>{60, 61, 62, 63}));
    EXPECT_EQ(s.stats().kv_blocks_used, 4u);
    // More outputs than drafts + 1 is a protocol error that ends the sequence.
    ctl::StepResult r3;
    r3.step_id = b3->step_id;
    for (int i = 0; i < 5; ++i) {
        ctl::SeqOutput x;
        x.seq_id = a;
        x.token = 70 + i;
        r3.outputs.push_back(x);
    }
    EXPECT_FALSE(s.on_result(r3, now_).ok());
    EXPECT_EQ(sink->finished, FinishReason::kError);
}

}  // namespace
}  // namespace deepshard::coordinator
