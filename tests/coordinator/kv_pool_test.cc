// The coordinator's KV mirror and prefix cache (coordinator/kv_pool.h), and the scheduler driving a
// simulated shard job whose pools are real model::KvBlockManagers executing the batches' KV
// operations through the job's own code (shard_node/kv_ops.h). The simulated job writes each
// position's token into its block slot and "samples" a token that is a hash of every slot the
// sequence's block table reaches, so a wrong cache hit, a lost block or a block overwritten while
// shared changes the output. Random workloads with shared prefixes, a pool small enough to force
// evictions and preemptions, cancellations and 1 or 2 batches in flight must give every request
// exactly its solo output, and the mirror must match the job after every batch.
#include "coordinator/kv_pool.h"

#include <gtest/gtest.h>

#include <map>
#include <random>

#include "coordinator/scheduler.h"
#include "model/kv_blocks.h"
#include "shard_node/kv_ops.h"

namespace deepshard::coordinator {
namespace {

namespace ctl = deepshard::control;

std::vector<int32_t> seq_tokens(int n, int first) {
    std::vector<int32_t> v;
    for (int i = 0; i < n; ++i) v.push_back(first + i);
    return v;
}

TEST(KvDomainTest, PublishMatchAndDuplicates) {
    uint64_t next = 1;
    KvDomain d(0, 16, 4, &next);
    const auto a = seq_tokens(10, 100);
    d.start(1, {});
    d.grow(1, 10);  // 3 blocks
    EXPECT_EQ(d.used_blocks(), 3u);
    std::vector<ctl::KvPublish> ops;
    d.publish(1, a, 10, &ops);  // two full blocks
    ASSERT_EQ(ops.size(), 2u);
    EXPECT_EQ(ops[0].block_index, 0u);
    EXPECT_EQ(ops[1].block_index, 1u);
    EXPECT_EQ(d.used_blocks(), 3u);  // publishing allocates nothing
    EXPECT_EQ(d.cached_blocks(), 2u);
    EXPECT_EQ(d.reclaimable_blocks(), 0u);  // pinned by sequence 1

    // A prompt sharing 9 tokens matches the first two blocks; max_blocks caps the match.
    auto b = a;
    b[9] = 7;
    EXPECT_EQ(d.match(b, 10), (std::vector<uint64_t>{ops[0].entry, ops[1].entry}));
    EXPECT_EQ(d.match(b, 1), (std::vector<uint64_t>{ops[0].entry}));
    b[5] = 7;  // differs inside the second block
    EXPECT_EQ(d.match(b, 10), (std::vector<uint64_t>{ops[0].entry}));
    b[0] = 7;
    EXPECT_TRUE(d.match(b, 10).empty());

    // Sequence 2 computed the same first block on its own: it pins the existing node (no publish)
    // and keeps its private block.
    d.start(2, {});
    d.grow(2, 8);
    std::vector<ctl::KvPublish> ops2;
    auto c = a;
    c[6] = 9;
    d.publish(2, c, 8, &ops2);
    ASSERT_EQ(ops2.size(), 1u);  // only its second block (a new child of the shared first)
    EXPECT_EQ(ops2[0].block_index, 1u);
    EXPECT_EQ(d.cached_blocks(), 3u);
    EXPECT_EQ(d.used_blocks(), 3u + 1u + 1u);  // three nodes + 1's tail + 2's private first block

    d.drop(1);
    d.drop(2);
    EXPECT_EQ(d.used_blocks(), 3u);
    EXPECT_EQ(d.reclaimable_blocks(), 3u);
    EXPECT_EQ(d.sequences(), 0u);
}

TEST(KvDomainTest, EvictsLeastRecentlyUsedLeavesFirst) {
    uint64_t next = 1;
    KvDomain d(3, 8, 2, &next);
    std::vector<ctl::KvPublish> ops;
    // Chain x: 2 blocks; chain y: 1 block. y is used after x.
    const auto x = seq_tokens(4, 10), y = seq_tokens(2, 50);
    d.start(1, {});
    d.grow(1, 4);
    d.publish(1, x, 4, &ops);
    d.drop(1);
    d.start(2, {});
    d.grow(2, 2);
    d.publish(2, y, 2, &ops);
    d.drop(2);
    ASSERT_EQ(ops.size(), 3u);
    // x's leaf (oldest leaf), then x's root (now a leaf, still older than y), then y.
    std::vector<ctl::KvEvict> ev;
    ASSERT_TRUE(d.evict_one(&ev));
    ASSERT_TRUE(d.evict_one(&ev));
    ASSERT_TRUE(d.evict_one(&ev));
    EXPECT_FALSE(d.evict_one(&ev));
    ASSERT_EQ(ev.size(), 3u);
    EXPECT_EQ(ev[0].entry, ops[1].entry);
    EXPECT_EQ(ev[1].entry, ops[0].entry);
    EXPECT_EQ(ev[2].entry, ops[2].entry);
    EXPECT_EQ(ev[0].domain, 3u);
    EXPECT_EQ(d.used_blocks(), 0u);

    // A pinned chain is never evicted; starting from it pins it.
    d.start(3, {});
    d.grow(3, 4);
    ops.clear();
    d.publish(3, x, 4, &ops);
    d.drop(3);
    const auto prefix = d.match(x, 2);
    ASSERT_EQ(prefix.size(), 2u);
    EXPECT_EQ(d.unpinned_in(prefix), 2u);
    d.start(4, prefix);
    EXPECT_EQ(d.reclaimable_blocks(), 0u);
    EXPECT_FALSE(d.evict_one(&ev));
    EXPECT_EQ(d.blocks_of(4), 2);
    EXPECT_EQ(d.growth(4, 5), 1);
}

// --- The scheduler against a simulated job -------------------------------------------------------

int32_t next_token(const std::vector<int32_t>& context) {
    uint64_t h = 1469598103934665603ull;
    for (int32_t t : context) h = (h ^ static_cast<uint32_t>(t)) * 1099511628211ull;
    return 100 + static_cast<int32_t>(h % 200);  // never EOS (1)
}

std::vector<int32_t> solo_output(std::vector<int32_t> context, int64_t n) {
    std::vector<int32_t> out;
    for (int64_t i = 0; i < n; ++i) {
        out.push_back(next_token(context));
        context.push_back(out.back());
    }
    return out;
}

class FakeJob {
public:
    FakeJob(uint32_t domains, int64_t blocks, int64_t bs) : bs_(bs) {
        for (uint32_t d = 0; d < domains; ++d) {
            pools_.push_back({*model::KvBlockManager::create(blocks, bs),
                              std::vector<int32_t>(static_cast<size_t>(blocks * bs), -1)});
        }
    }

    ctl::StepResult run(const ctl::StepBatch& b) {
        ctl::StepResult r;
        r.step_id = b.step_id;
        for (uint32_t d = 0; d < pools_.size(); ++d) {
            Pool& p = pools_[d];
            Status s = shard_node::apply_kv_ops(b, d, static_cast<uint32_t>(pools_.size()), p.blocks,
                                                [&](uint64_t id) { p.blocks.release(id); });
            EXPECT_TRUE(s.ok()) << s.to_string();
        }
        for (uint64_t id : b.release) {
            samplers_.erase(id);
            owners_.erase(id);
        }
        for (const auto& st : b.kv.start) owners_[st.seq_id] = st.domain;
        for (const ctl::SeqWork& w : b.seqs) {
            EXPECT_EQ(owners_.count(w.seq_id), 1u) << "sequence " << w.seq_id << " runs without a start";
            Pool& p = pools_.at(owners_[w.seq_id]);
            const int64_t n = static_cast<int64_t>(w.tokens.size());
            EXPECT_GE(p.blocks.capacity(w.seq_id), static_cast<int64_t>(w.start_pos)) << "no KV before the chunk";
            EXPECT_TRUE(p.blocks.writable(w.seq_id, w.start_pos)) << "would write a shared block";
            Status s = p.blocks.reserve(w.seq_id, w.start_pos + n);
            EXPECT_TRUE(s.ok()) << s.to_string();
            if (!s.ok()) continue;
            const auto& table = p.blocks.block_table(w.seq_id);
            for (int64_t k = 0; k < n; ++k) {
                const int64_t pos = w.start_pos + k;
                p.slots[static_cast<size_t>(table[pos / bs_] * bs_ + pos % bs_)] = w.tokens[k];
            }
            if (w.is_new) {
                EXPECT_EQ(samplers_.count(w.seq_id), 0u);
                samplers_[w.seq_id] = 0;
            } else {
                EXPECT_EQ(samplers_.count(w.seq_id), 1u) << "the sampler of " << w.seq_id << " was lost";
            }
            if (!w.sample) continue;
            // The context as the block table reaches it.
            std::vector<int32_t> ctx;
            for (int64_t pos = 0; pos < w.start_pos + n; ++pos) {
                ctx.push_back(p.slots[static_cast<size_t>(table[pos / bs_] * bs_ + pos % bs_)]);
            }
            ctl::SeqOutput o;
            o.seq_id = w.seq_id;
            o.token = next_token(ctx);
            ++samplers_[w.seq_id];
            r.outputs.push_back(o);
        }
        for (uint32_t d = 0; d < pools_.size(); ++d) {
            const auto& m = pools_[d].blocks;
            r.kv.push_back({.domain = d, .used_blocks = static_cast<uint64_t>(m.used_blocks()),
                            .cached_blocks = static_cast<uint64_t>(m.cached_blocks()),
                            .total_blocks = static_cast<uint64_t>(m.total_blocks())});
        }
        return r;
    }

    const model::KvBlockManager& pool(uint32_t d) const { return pools_[d].blocks; }

private:
    struct Pool {
        model::KvBlockManager blocks;
        std::vector<int32_t> slots;  // token written at each (block, offset)
    };
    int64_t bs_;
    std::vector<Pool> pools_;
    std::map<uint64_t, uint32_t> owners_;
    std::map<uint64_t, int> samplers_;
};

struct Sink : SequenceSink {
    std::vector<int32_t> tokens;
    FinishReason finished = FinishReason::kNone;
    FinishReason on_token(const ctl::SeqOutput& out, FinishReason by_ids) override {
        tokens.push_back(out.token);
        return by_ids;
    }
    void on_finish(FinishReason reason, const Status&) override { finished = reason; }
    void on_restart() override { ADD_FAILURE() << "no restart expected"; }
};

struct Workload {
    uint32_t domains;
    uint32_t stages;
    uint64_t blocks;
    bool prefix_cache;
    uint32_t seed;
};

void PrintTo(const Workload& w, std::ostream* os) {
    *os << w.domains << " domains, " << w.stages << " stages, " << w.blocks << " blocks, cache "
        << (w.prefix_cache ? "on" : "off") << ", seed " << w.seed;
}

class SimulatedJobTest : public ::testing::TestWithParam<Workload> {};

TEST_P(SimulatedJobTest, EveryOutputEqualsItsSoloRunAndTheViewsAgree) {
    const Workload wl = GetParam();
    constexpr int64_t kBs = 4;
    std::mt19937 rng(wl.seed);
    SchedulerOptions o;
    o.max_queue = 1000;
    o.max_running = 16;
    o.token_budget = 24;
    o.prefill_chunk = 8;
    o.max_context = 4096;
    o.eos_id = 1;
    o.vocab_size = 1000;
    o.prefix_cache = wl.prefix_cache;
    Scheduler s(o);
    Capacity c;
    c.session_id = 1;
    c.kv_blocks = wl.blocks;
    c.kv_block_size = kBs;
    c.pipeline_stages = wl.stages;
    c.vocab_size = 1000;
    c.kv_domains = wl.domains;
    s.attach(c);
    FakeJob job(wl.domains, static_cast<int64_t>(wl.blocks), kBs);
    const auto now = Clock::now();

    // Prompts: one of three shared "system prompts" (0..22 tokens) + a random tail.
    std::vector<std::vector<int32_t>> systems = {{}, seq_tokens(13, 500), seq_tokens(22, 700)};
    struct Req {
        uint64_t id;
        std::vector<int32_t> prompt;
        int64_t max_tokens;
        std::shared_ptr<Sink> sink;
        bool cancelled = false;
    };
    std::vector<Req> reqs;
    std::deque<ctl::StepResult> in_flight;
    int submitted = 0;
    const int total = 40;
    for (int iter = 0; iter < 20000 && (submitted < total || !s.idle() || !in_flight.empty()); ++iter) {
        if (submitted < total && rng() % 3 == 0) {
            Req r;
            r.prompt = systems[rng() % systems.size()];
            const int tail = 1 + static_cast<int>(rng() % 9);
            for (int i = 0; i < tail; ++i) r.prompt.push_back(static_cast<int32_t>(10 + rng() % 40));
            r.max_tokens = 1 + static_cast<int64_t>(rng() % 30);
            r.sink = std::make_shared<Sink>();
            SequenceSpec spec;
            spec.prompt = r.prompt;
            spec.max_tokens = r.max_tokens;
            spec.sink = r.sink;
            auto id = s.submit(std::move(spec), now);
            ASSERT_TRUE(id.ok()) << id.status().to_string();
            r.id = *id;
            reqs.push_back(std::move(r));
            ++submitted;
        }
        if (!reqs.empty() && rng() % 40 == 0) {
            Req& victim = reqs[rng() % reqs.size()];
            if (victim.sink->finished == FinishReason::kNone) {
                s.cancel(victim.id);
                victim.cancelled = true;
            }
        }
        while (auto b = s.next_batch(now)) in_flight.push_back(job.run(*b));
        if (!in_flight.empty() && (in_flight.size() >= wl.stages || rng() % 2 == 0)) {
            ASSERT_TRUE(s.on_result(in_flight.front(), now).ok());
            in_flight.pop_front();
        }
    }
    ASSERT_EQ(submitted, total);
    ASSERT_TRUE(s.idle()) << "the workload did not finish";
    const SchedulerStats st = s.stats();
    EXPECT_EQ(st.kv_view_mismatches, 0u);
    EXPECT_EQ(st.kv_exhausted, 0u);
    for (const Req& r : reqs) {
        if (r.cancelled) {
            EXPECT_EQ(r.sink->finished, FinishReason::kCancelled);
            continue;
        }
        EXPECT_EQ(r.sink->finished, FinishReason::kLength) << "request " << r.id;
        EXPECT_EQ(r.sink->tokens, solo_output(r.prompt, r.max_tokens)) << "request " << r.id;
    }
    // Once everything finished only the cache holds blocks (the job frees the finished sequences'
    // blocks with the next batch; the mirror already counts them free).
    EXPECT_EQ(st.kv_blocks_used, st.kv_blocks_cached);
    if (wl.prefix_cache) {
        EXPECT_GT(st.prefix_hit_tokens, 0u);
    } else {
        EXPECT_EQ(st.prefix_hit_tokens, 0u);
        EXPECT_EQ(st.kv_blocks_cached, 0u);
    }
    // The small pools force the interesting paths.
    if (wl.blocks <= 24) {
        EXPECT_GT(st.preemptions, 0u);
        if (wl.prefix_cache) {
            EXPECT_GT(st.kv_evicted_blocks, 0u);
        }
    }
    std::printf("domains %u stages %u blocks %lu cache %d: hit %lu/%lu tokens, %lu preemptions, %lu evictions\n",
                wl.domains, wl.stages, static_cast<unsigned long>(wl.blocks), wl.prefix_cache,
                static_cast<unsigned long>(st.prefix_hit_tokens), static_cast<unsigned long>(st.prefix_query_tokens),
                static_cast<unsigned long>(st.preemptions), static_cast<unsigned long>(st.kv_evicted_blocks));
}

INSTANTIATE_TEST_SUITE_P(Workloads, SimulatedJobTest,
                         ::testing::Values(Workload{1, 1, 24, true, 1}, Workload{1, 2, 24, true, 2},
                                           Workload{2, 1, 20, true, 3}, Workload{2, 2, 16, true, 4},
                                           Workload{1, 1, 20, false, 5}, Workload{1, 2, 200, true, 6}));

}  // namespace
}  // namespace deepshard::coordinator
