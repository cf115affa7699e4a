// Scheduler policy for prefill/decode disaggregation (coordinator/engine.h): a prefill leg
// (kv_export) never samples and exports once; a decode-side import fetches the prefilled positions in
// one chunk and falls back to computing them; a hand-off is queued beyond the queue bound.
#include "coordinator/scheduler.h"

#include <gtest/gtest.h>

namespace deepshard::coordinator {
namespace {

namespace ctl = deepshard::control;

std::vector<int32_t> iota_prompt(int n, int first = 10) {
    std::vector<int32_t> p;
    for (int i = 0; i < n; ++i) p.push_back(first + i);
    return p;
}

// Prefill/decode disaggregation: the prefill leg (kv_export) and the decode side (kv_import).
struct LegSink : SequenceSink {
    int32_t domain = -2;
    FinishReason finished = FinishReason::kNone;
    int tokens = 0;
    FinishReason on_token(const ctl::SeqOutput&, FinishReason by_ids) override {
        ++tokens;
        return by_ids;
    }
    void on_prefilled(int32_t d) override { domain = d; }
    void on_finish(FinishReason reason, const Status&) override { finished = reason; }
    void on_restart() override {}
};

SchedulerOptions pd_opts() {
    SchedulerOptions o;
    o.token_budget = 8;
    o.prefill_chunk = 4;
    o.max_context = 64;
    o.vocab_size = 1000;
    return o;
}

Capacity pd_cap() {
    Capacity c;
    c.session_id = 1;
    c.kv_blocks = 100;
    c.kv_block_size = 4;
    c.vocab_size = 1000;
    return c;
}

TEST(SchedulerPdTest, APrefillLegNeverSamplesAndEndsWithItsExport) {
    Scheduler s(pd_opts());
    s.attach(pd_cap());
    auto sink = std::make_shared<LegSink>();
    SequenceSpec spec;
    spec.prompt = iota_prompt(10);
    spec.kv_export = ctl::KvExport{.transfer_id = 7, .key = {1, 2, 3}};
    spec.sink = sink;
    auto id = s.submit(std::move(spec), Clock::now());
    ASSERT_TRUE(id.ok());
    int exports = 0;
    for (int i = 0; i < 3; ++i) {
        auto b = s.next_batch(Clock::now());
        ASSERT_TRUE(b.has_value()) << i;
        ASSERT_EQ(b->seqs.size(), 1u);
        const ctl::SeqWork& w = b->seqs[0];
        EXPECT_EQ(w.sample, 0) << "a prefill leg never samples";
        EXPECT_EQ(w.has_import, 0);
        // Only the chunk that completes the prompt exports (after it, positions [0, 10) exist).
        EXPECT_EQ(w.has_export, w.start_pos + w.tokens.size() == 10u ? 1 : 0);
        if (w.has_export) {
            ++exports;
            EXPECT_EQ(w.kv_export.transfer_id, 7u);
            EXPECT_EQ(w.kv_export.key[2], 3);
        }
        EXPECT_EQ(sink->finished, FinishReason::kNone);
        ctl::StepResult r;
        r.step_id = b->step_id;
        ASSERT_TRUE(s.on_result(r, Clock::now()).ok());
    }
    EXPECT_EQ(exports, 1);
    EXPECT_EQ(sink->finished, FinishReason::kStop);
    EXPECT_EQ(sink->domain, 0);
    EXPECT_EQ(sink->tokens, 0);
    EXPECT_EQ(s.stats().kv_exports, 1u);
    // Its KV is released with the next batch (after the export was staged).
    EXPECT_TRUE(s.idle());
}

ctl::KvImport an_import() {
    ctl::KvImport imp;
    imp.transfer_id = 9;
    imp.sources.push_back({.layer_begin = 0, .layer_end = 4, .endpoint = "127.0.0.1:1"});
    return imp;
}

// A decode-side request of `prompt` tokens whose first prompt - 1 positions were prefilled elsewhere.
SequenceSpec import_spec(int prompt, int64_t max_tokens, std::shared_ptr<SequenceSink> sink) {
    SequenceSpec spec;
    spec.prompt = iota_prompt(prompt);
    spec.max_tokens = max_tokens;
    spec.kv_import = an_import();
    spec.import_positions = prompt - 1;
    spec.sink = std::move(sink);
    return spec;
}

TEST(SchedulerPdTest, AnImportFetchesThePrefilledPositionsInOneChunkThenSamples) {
    Scheduler s(pd_opts());
    s.attach(pd_cap());
    auto sink = std::make_shared<LegSink>();
    ASSERT_TRUE(s.submit(import_spec(19, 2, sink), Clock::now()).ok());
    auto b = s.next_batch(Clock::now());
    ASSERT_TRUE(b.has_value());
    ASSERT_EQ(b->seqs.size(), 1u);
    // 18 positions at once although the prefill chunk is 4 and the budget 8: nothing is computed.
    EXPECT_EQ(b->seqs[0].has_import, 1);
    EXPECT_EQ(b->seqs[0].tokens.size(), 18u);
    EXPECT_EQ(b->seqs[0].start_pos, 0u);
    EXPECT_EQ(b->seqs[0].sample, 0);
    EXPECT_EQ(b->seqs[0].is_new, 1) << "the decode job's sampler starts with the import";
    ctl::StepResult r;
    r.step_id = b->step_id;
    ASSERT_TRUE(s.on_result(r, Clock::now()).ok());
    EXPECT_EQ(s.stats().kv_imported_tokens, 18u);
    // Then the last prompt token is computed and samples.
    b = s.next_batch(Clock::now());
    ASSERT_TRUE(b.has_value());
    EXPECT_EQ(b->seqs[0].has_import, 0);
    EXPECT_EQ(b->seqs[0].start_pos, 18u);
    EXPECT_EQ(b->seqs[0].tokens.size(), 1u);
    EXPECT_EQ(b->seqs[0].sample, 1);
}

TEST(SchedulerPdTest, AFailedImportIsComputedInOrdinaryChunks) {
    Scheduler s(pd_opts());
    s.attach(pd_cap());
    auto sink = std::make_shared<LegSink>();
    auto id = s.submit(import_spec(10, 1, sink), Clock::now());
    ASSERT_TRUE(id.ok());
    auto b = s.next_batch(Clock::now());
    ASSERT_TRUE(b.has_value());
    ASSERT_EQ(b->seqs[0].has_import, 1);
    const uint64_t used = s.stats().kv_blocks_used;
    ctl::StepResult r;
    r.step_id = b->step_id;
    r.import_failed.push_back(*id);
    ASSERT_TRUE(s.on_result(r, Clock::now()).ok());
    EXPECT_EQ(s.stats().kv_import_failures, 1u);
    EXPECT_EQ(s.stats().kv_imported_tokens, 0u);
    // The reserved blocks stay (the job reserved them too) and the prompt is computed from 0 in
    // chunks of 4, without another import.
    EXPECT_EQ(s.stats().kv_blocks_used, used);
    std::vector<uint32_t> starts;
    for (;;) {
        b = s.next_batch(Clock::now());
        ASSERT_TRUE(b.has_value());
        const ctl::SeqWork& w = b->seqs[0];
        EXPECT_EQ(w.has_import, 0);
        starts.push_back(w.start_pos);
        ctl::StepResult rr;
        rr.step_id = b->step_id;
        if (w.sample) {
            rr.outputs.push_back({.seq_id = w.seq_id, .token = 5});
            ASSERT_TRUE(s.on_result(rr, Clock::now()).ok());
            break;
        }
        ASSERT_TRUE(s.on_result(rr, Clock::now()).ok());
    }
    EXPECT_EQ(starts, (std::vector<uint32_t>{0, 4, 8}));
    EXPECT_EQ(sink->finished, FinishReason::kLength);
}

// A hand-off from the prefill job was accepted when the request arrived: a full decode queue must
// not throw its computed prompt away.
TEST(SchedulerPdTest, AHandOffIsQueuedBeyondTheQueueBound) {
    SchedulerOptions o = pd_opts();
    o.max_queue = 1;
    Scheduler s(o);
    SequenceSpec a;
    a.prompt = iota_prompt(5);
    ASSERT_TRUE(s.submit(a, Clock::now()).ok());
    SequenceSpec b = import_spec(5, 1, nullptr);
    EXPECT_EQ(s.submit(b, Clock::now()).status().code(), StatusCode::kResourceExhausted);
    b.accepted = true;
    EXPECT_TRUE(s.submit(b, Clock::now()).ok());
    EXPECT_EQ(s.stats().queued, 2u);
}

}  // namespace
}  // namespace deepshard::coordinator
