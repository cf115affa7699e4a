// The speculative-decoding acceptance rule (shard_node/speculative.h): greedy verification takes
// the longest matching prefix plus the model's own next token; seeded sampling emits exactly the
// tokens plain decoding would; the general min(1, p/q) rule with residual resampling reproduces the
// target distribution; and the KV bookkeeping drops rejected positions on both sides.
#include <cmath>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "coordinator/kv_pool.h"
#include "model/kv_blocks.h"
#include "shard_node/speculative.h"

namespace deepshard::shard_node {
namespace {

constexpr int64_t kVocab = 32;

// Rows of logits whose argmax is `top[i]` (a clear margin), other entries a fixed ramp.
std::vector<float> rows_with_argmax(const std::vector<int32_t>& top) {
    std::vector<float> rows(top.size() * kVocab);
    for (size_t i = 0; i < top.size(); ++i) {
        for (int64_t v = 0; v < kVocab; ++v) rows[i * kVocab + v] = 0.01f * static_cast<float>((v * 7 + i) % kVocab);
        rows[i * kVocab + top[i]] = 5.0f;
    }
    return rows;
}

model::SamplingParams greedy() {
    model::SamplingParams p;
    p.temperature = 0;
    p.has_seed = true;
    p.seed = 1;
    return p;
}

std::vector<int32_t> tokens_of(const std::vector<model::SampleResult>& r) {
    std::vector<int32_t> t;
    for (const auto& x : r) t.push_back(x.token);
    return t;
}

TEST(SpeculativeVerify, GreedyAcceptsTheLongestMatchingPrefixPlusTheNextToken) {
    // The model's greedy tokens at the 4 positions: 5, 9, 3, 11.
    const auto rows = rows_with_argmax({5, 9, 3, 11});
    {
        model::Sampler s(greedy(), {});
        // Drafts 5, 9, 3 all match: 3 accepted + the bonus token 11.
        EXPECT_EQ(tokens_of(verify_drafts(s, rows, kVocab, std::vector<int32_t>{5, 9, 3})),
                  (std::vector<int32_t>{5, 9, 3, 11}));
        EXPECT_EQ(s.generated().size(), 4u) << "every emitted token enters the sampler's history";
    }
    {
        model::Sampler s(greedy(), {});
        // The second draft is wrong: 5 accepted, then the model's 9 replaces it; nothing after.
        EXPECT_EQ(tokens_of(verify_drafts(s, rows, kVocab, std::vector<int32_t>{5, 8, 3})),
                  (std::vector<int32_t>{5, 9}));
        EXPECT_EQ(s.generated().size(), 2u);
    }
    {
        model::Sampler s(greedy(), {});
        // The first draft is wrong: only the model's own token.
        EXPECT_EQ(tokens_of(verify_drafts(s, rows, kVocab, std::vector<int32_t>{4, 9, 3})),
                  (std::vector<int32_t>{5}));
    }
    {
        model::Sampler s(greedy(), {});
        // No drafts: plain decoding of one token.
        EXPECT_EQ(tokens_of(verify_drafts(s, std::span<const float>(rows).first(kVocab), kVocab, {})),
                  (std::vector<int32_t>{5}));
    }
}

TEST(SpeculativeVerify, PenaltiesSeeTheAcceptedDraftsLikePlainDecoding) {
    // A repetition penalty makes the second position's choice depend on the first emitted token:
    // logits favour 7 slightly over 2 at both positions; after emitting 7 the penalty flips it to 2.
    std::vector<float> rows(2 * kVocab, 0.0f);
    for (int i = 0; i < 2; ++i) {
        rows[i * kVocab + 7] = 1.0f;
        rows[i * kVocab + 2] = 0.9f;
    }
    model::SamplingParams p = greedy();
    p.repetition_penalty = 2.0f;
    model::Sampler plain(p, {}), spec(p, {});
    std::vector<int32_t> want;
    for (int i = 0; i < 2; ++i) {
        auto r = plain.sample(std::span<const float>(rows).subspan(i * kVocab, kVocab));
        plain.accept(r.token);
        want.push_back(r.token);
    }
    ASSERT_EQ(want, (std::vector<int32_t>{7, 2}));
    EXPECT_EQ(tokens_of(verify_drafts(spec, rows, kVocab, std::vector<int32_t>{7})), want);
}

TEST(SpeculativeVerify, SeededSamplingEmitsExactlyThePlainDecodingTokens) {
    std::mt19937 gen(3);
    std::normal_distribution<float> noise(0.0f, 1.5f);
    model::SamplingParams p;
    p.temperature = 0.9f;
    p.top_p = 0.95f;
    p.seed = 1234;
    p.has_seed = true;
    for (int trial = 0; trial < 50; ++trial) {
        const int k = 1 + trial % 3;
        std::vector<float> rows((k + 1) * kVocab);
        for (float& x : rows) x = noise(gen);
        // Plain decoding of k + 1 tokens from the same rows.
        model::Sampler plain(p, {});
        std::vector<int32_t> plain_tokens;
        for (int i = 0; i <= k; ++i) {
            auto r = plain.sample(std::span<const float>(rows).subspan(i * kVocab, kVocab));
            plain.accept(r.token);
            plain_tokens.push_back(r.token);
        }
        // Drafts that agree with plain decoding for a while, then (sometimes) disagree.
        std::vector<int32_t> drafts(plain_tokens.begin(), plain_tokens.begin() + k);
        const int wrong = trial % (k + 1);  // == k: all drafts right
        if (wrong < k) drafts[wrong] = (drafts[wrong] + 1) % kVocab;
        model::Sampler spec(p, {});
        const auto emitted = tokens_of(verify_drafts(spec, rows, kVocab, drafts));
        const size_t n = static_cast<size_t>(std::min(wrong, k) + 1);
        ASSERT_EQ(emitted.size(), n) << "trial " << trial;
        EXPECT_EQ(emitted, std::vector<int32_t>(plain_tokens.begin(), plain_tokens.begin() + n)) << "trial " << trial;
    }
}

TEST(SpeculativeAccept, TheRejectionRuleKeepsTheTargetDistribution) {
    // Target p and a different draft distribution q over 5 tokens; draft d ~ q, then the rule.
    const std::vector<float> p = {0.1f, 0.4f, 0.2f, 0.25f, 0.05f};
    const std::vector<float> q = {0.3f, 0.1f, 0.4f, 0.1f, 0.1f};
    std::mt19937_64 rng(42);
    std::discrete_distribution<int> draft_of(q.begin(), q.end());
    std::vector<int> count(p.size(), 0);
    int accepted = 0;
    const int kTrials = 200000;
    for (int t = 0; t < kTrials; ++t) {
        const int32_t d = draft_of(rng);
        const AcceptDecision a = speculative_accept(p, q, d, rng);
        ASSERT_GE(a.token, 0);
        ASSERT_LT(a.token, 5);
        ++count[static_cast<size_t>(a.token)];
        if (a.accepted) {
            EXPECT_EQ(a.token, d);
            ++accepted;
        }
    }
    for (size_t i = 0; i < p.size(); ++i) {
        const double f = static_cast<double>(count[i]) / kTrials;
        EXPECT_NEAR(f, p[i], 0.005) << "token " << i;  // ~5 sigma at 200k draws
    }
    // Acceptance = sum_i min(p_i, q_i) = 0.1 + 0.1 + 0.2 + 0.1 + 0.05 = 0.55.
    EXPECT_NEAR(static_cast<double>(accepted) / kTrials, 0.55, 0.005);
}

TEST(SpeculativeAccept, AGreedyDraftIsAcceptedWithItsTargetProbability) {
    // One-hot q: accept with p(d), otherwise a draw from p without d.
    const std::vector<float> p = {0.5f, 0.3f, 0.2f};
    const std::vector<float> q = {0.0f, 1.0f, 0.0f};
    std::mt19937_64 rng(7);
    int accepted = 0, zero = 0;
    const int kTrials = 100000;
    for (int t = 0; t < kTrials; ++t) {
        const AcceptDecision a = speculative_accept(p, q, 1, rng);
        accepted += a.accepted ? 1 : 0;
        zero += a.token == 0 ? 1 : 0;
        if (!a.accepted) {
            EXPECT_NE(a.token, 1);
        }
    }
    EXPECT_NEAR(static_cast<double>(accepted) / kTrials, 0.3, 0.006);
    EXPECT_NEAR(static_cast<double>(zero) / kTrials, 0.5, 0.006);
}

TEST(SpeculativeKv, RejectedPositionsAreDroppedTheSameWayOnBothSides) {
    // The job's blocks and the coordinator's mirror: a verify chunk holds positions up to 40, 2 of 3
    // drafts are rejected, the next chunk starts at 34: both keep ceil(35 / 16) = 3 blocks.
    auto blocks = model::KvBlockManager::create(10, 16);
    ASSERT_TRUE(blocks.ok());
    model::KvBlockManager& b = blocks.value();
    uint64_t next_entry = 1;
    coordinator::KvDomain d(0, 10, 16, &next_entry);
    d.start(7, {});
    ASSERT_TRUE(b.reserve(7, 49).ok());
    d.grow(7, 49);
    EXPECT_EQ(b.used_blocks(), 4);
    EXPECT_EQ(d.used_blocks(), 4u);
    b.truncate(7, 35);
    d.shrink(7, 35);
    EXPECT_EQ(b.used_blocks(), 3);
    EXPECT_EQ(d.used_blocks(), 3u);
    EXPECT_EQ(b.capacity(7), 48);
    // Truncating past what is held changes nothing.
    b.truncate(7, 100);
    d.shrink(7, 100);
    EXPECT_EQ(b.used_blocks(), 3);
    EXPECT_EQ(d.used_blocks(), 3u);
}

}  // namespace
}  // namespace deepshard::shard_node
