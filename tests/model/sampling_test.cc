// Sampler tests. Every statistical check uses fixed seeds, so it is deterministic (it cannot flake);
// the bounds are still loose enough that a correct sampler passes for essentially any seed, and
// each check is paired with one showing that a wrong distribution would fail it.
#include "model/sampling.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <set>

namespace deepshard::model {
namespace {

std::vector<double> softmax(const std::vector<float>& logits, double temperature = 1.0) {
    double m = -std::numeric_limits<double>::infinity();
    for (float v : logits) m = std::max(m, v / temperature);
    std::vector<double> p(logits.size());
    double z = 0;
    for (size_t i = 0; i < logits.size(); ++i) z += p[i] = std::exp(logits[i] / temperature - m);
    for (double& v : p) v /= z;
    return p;
}

std::vector<float> log_probs_of(const std::vector<double>& p) {
    std::vector<float> out;
    for (double v : p) out.push_back(static_cast<float>(std::log(v)));
    return out;
}

std::vector<float> random_logits(size_t n, uint64_t seed, float scale = 3.0f) {
    std::mt19937_64 rng(seed);
    std::vector<float> out(n);
    for (float& v : out) v = scale * static_cast<float>(static_cast<double>(rng() >> 11) * 0x1.0p-53 * 2 - 1);
    return out;
}

SamplingParams seeded(float temperature, uint64_t seed) {
    SamplingParams p;
    p.temperature = temperature;
    p.seed = seed;
    p.has_seed = true;
    return p;
}

// Draws `n` tokens from fixed logits (no accept(), so penalties never change the distribution).
std::vector<int64_t> histogram(Sampler& s, const std::vector<float>& logits, int n) {
    std::vector<int64_t> counts(logits.size(), 0);
    for (int i = 0; i < n; ++i) {
        const int32_t t = s.sample(logits).token;
        EXPECT_GE(t, 0);
        EXPECT_LT(t, static_cast<int32_t>(logits.size()));
        ++counts[static_cast<size_t>(t)];
    }
    return counts;
}

// Pearson's statistic over the cells with positive expected probability; any draw in a cell with
// zero probability makes it infinite.
double chi_square(const std::vector<int64_t>& counts, const std::vector<double>& p) {
    int64_t n = std::accumulate(counts.begin(), counts.end(), int64_t{0});
    double x2 = 0;
    for (size_t i = 0; i < counts.size(); ++i) {
        const double e = p[i] * static_cast<double>(n);
        if (e == 0) {
            if (counts[i] > 0) {
                return std::numeric_limits<double>::infinity();
            }
            continue;
        }
        x2 += (static_cast<double>(counts[i]) - e) * (static_cast<double>(counts[i]) - e) / e;
    }
    return x2;
}

// Far in the upper tail of chi-square(df) (about 6 standard deviations).
double chi_square_bound(size_t df) { return static_cast<double>(df) + 6.0 * std::sqrt(2.0 * static_cast<double>(df)); }

std::set<int32_t> drawn(const std::vector<int64_t>& counts) {
    std::set<int32_t> out;
    for (size_t i = 0; i < counts.size(); ++i) {
        if (counts[i] > 0) {
            out.insert(static_cast<int32_t>(i));
        }
    }
    return out;
}

TEST(SamplingTest, GreedyIsArgmaxWithLowestIdOnTies) {
    for (uint64_t seed = 1; seed <= 5; ++seed) {
        std::vector<float> logits = random_logits(1000, seed);
        const auto expected = std::max_element(logits.begin(), logits.end()) - logits.begin();
        SamplingParams p;  // temperature 0; truncation settings must not matter
        p.top_k = 3;
        p.top_p = 0.1f;
        p.min_p = 0.9f;
        Sampler s(p, {});
        for (int step = 0; step < 3; ++step) EXPECT_EQ(s.sample(logits).token, expected);
    }
    std::vector<float> tie = {0.0f, 5.0f, 1.0f, 5.0f};
    Sampler s(SamplingParams{}, {});
    EXPECT_EQ(s.sample(tie).token, 1);
}

TEST(SamplingTest, SameSeedSameTokensDifferentSeedsDiffer) {
    const std::vector<float> logits(1000, 0.0f);  // uniform: collisions between seeds are rare
    std::set<std::vector<int32_t>> sequences;
    for (uint64_t seed = 0; seed < 20; ++seed) {
        Sampler a(seeded(1.0f, seed), {}), b(seeded(1.0f, seed), {});
        std::vector<int32_t> ta, tb;
        for (int i = 0; i < 10; ++i) {
            ta.push_back(a.sample(logits).token);
            tb.push_back(b.sample(logits).token);
        }
        EXPECT_EQ(ta, tb) << "seed " << seed;
        sequences.insert(ta);
    }
    EXPECT_EQ(sequences.size(), 20u);
    // Without a seed each sampler picks its own.
    Sampler u1(SamplingParams{}, {}), u2(SamplingParams{}, {});
    EXPECT_NE(u1.seed(), u2.seed());
}

TEST(SamplingTest, SeededTokensArePinned) {
    // Guards portability: the noise is splitmix64 over std::mt19937_64 step keys, both fully
    // specified, so these ids must not change across compilers, standard libraries or refactors.
    std::vector<float> logits = random_logits(50, 7, 1.0f);
    Sampler s(seeded(1.0f, 42), {});
    std::vector<int32_t> got;
    for (int i = 0; i < 8; ++i) got.push_back(s.sample(logits).token);
    EXPECT_EQ(got, (std::vector<int32_t>{24, 45, 23, 31, 28, 35, 14, 8}));
    // Truncation does not change the noise, only which tokens compete: if the unrestricted
    // winner survives top-k, the restricted draw with the same seed picks it too.
    std::vector<size_t> order(logits.size());
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return logits[a] > logits[b]; });
    std::set<int32_t> top10(order.begin(), order.begin() + 10);
    SamplingParams pk = seeded(1.0f, 42);
    pk.top_k = 10;
    Sampler k(pk, {});
    for (int i = 0; i < 8; ++i) {
        const int32_t t = k.sample(logits).token;
        EXPECT_TRUE(top10.count(t));
        if (top10.count(got[static_cast<size_t>(i)])) {
            EXPECT_EQ(t, got[static_cast<size_t>(i)]);
        }
    }
}

TEST(SamplingTest, FrequenciesMatchSoftmaxAtTemperature) {
    const std::vector<float> logits = {1.0f, 0.5f, 0.0f, -0.5f, 2.0f, -1.0f, 0.25f, 1.5f};
    const int n = 40000;
    for (float t : {0.7f, 1.0f, 1.6f}) {
        Sampler s(seeded(t, 1234), {});
        const auto counts = histogram(s, logits, n);
        const double x2 = chi_square(counts, softmax(logits, t));
        EXPECT_LT(x2, chi_square_bound(logits.size() - 1)) << "temperature " << t;
        // Power check: the same counts are far from the untempered (or differently tempered) law.
        const double wrong = chi_square(counts, softmax(logits, t == 1.0f ? 0.7 : 1.0));
        EXPECT_GT(wrong, 10 * chi_square_bound(logits.size() - 1)) << "temperature " << t;
    }
}

TEST(SamplingTest, UniformLogitsGiveUniformTokens) {
    // Exercises the per-token noise stream itself over many ids.
    const std::vector<float> logits(200, 0.5f);
    Sampler s(seeded(1.0f, 99), {});
    const auto counts = histogram(s, logits, 40000);
    EXPECT_LT(chi_square(counts, std::vector<double>(200, 1.0 / 200)), chi_square_bound(199));
}

TEST(SamplingTest, FullVocabularyDrawMatchesSoftmax) {
    // The real vocabulary size, with a few dominant tokens over a broad tail: the race's pruning
    // of hopeless ids must not bias the draw. Cells: the 5 dominant tokens, even and odd tail ids.
    std::vector<float> logits = random_logits(129280, 21);
    const std::vector<int32_t> heads = {77, 1000, 52345, 99999, 129279};
    for (size_t j = 0; j < heads.size(); ++j) {
        logits[static_cast<size_t>(heads[j])] = 14.0f - 0.5f * static_cast<float>(j);
    }
    const auto p = softmax(logits);
    std::vector<double> cell_p(7, 0.0);
    auto cell = [&](int32_t id) {
        const auto it = std::find(heads.begin(), heads.end(), id);
        return it != heads.end() ? static_cast<size_t>(it - heads.begin()) : 5 + static_cast<size_t>(id % 2);
    };
    for (int32_t id = 0; id < 129280; ++id) cell_p[cell(id)] += p[static_cast<size_t>(id)];
    ASSERT_GT(cell_p[5] + cell_p[6], 0.1);  // the tail matters
    Sampler s(seeded(1.0f, 77), {});
    std::vector<int64_t> counts(7, 0);
    for (int i = 0; i < 800; ++i) ++counts[cell(s.sample(logits).token)];
    EXPECT_LT(chi_square(counts, cell_p), chi_square_bound(6));
}

TEST(SamplingTest, TopKNeverLeavesTheTopK) {
    const std::vector<float> logits = random_logits(500, 3);
    std::vector<int32_t> order(logits.size());
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
    SamplingParams p = seeded(3.0f, 5);  // hot: without top-k, tokens outside it are likely
    p.top_k = 7;
    Sampler s(p, {});
    const auto counts = histogram(s, logits, 20000);
    std::vector<double> expected(logits.size(), 0.0);
    std::vector<float> top(7);
    for (int i = 0; i < 7; ++i) top[static_cast<size_t>(i)] = logits[static_cast<size_t>(order[i])];
    const auto q = softmax(top, 3.0);
    for (int i = 0; i < 7; ++i) expected[static_cast<size_t>(order[i])] = q[static_cast<size_t>(i)];
    EXPECT_EQ(drawn(counts), std::set<int32_t>(order.begin(), order.begin() + 7));
    EXPECT_LT(chi_square(counts, expected), chi_square_bound(6));

    // top_k >= vocab is no restriction.
    p.top_k = 100000;
    Sampler all(p, {});
    EXPECT_GT(drawn(histogram(all, logits, 2000)).size(), 7u);
}

TEST(SamplingTest, TopPKeepsTheMinimalNucleus) {
    const std::vector<float> logits = log_probs_of({0.5, 0.3, 0.15, 0.05});
    auto nucleus = [&](float top_p, int top_k) {
        SamplingParams p = seeded(1.0f, 11);
        p.top_p = top_p;
        p.top_k = top_k;
        Sampler s(p, {});
        return drawn(histogram(s, logits, 4000));
    };
    EXPECT_EQ(nucleus(0.45f, 0), (std::set<int32_t>{0}));
    EXPECT_EQ(nucleus(0.75f, 0), (std::set<int32_t>{0, 1}));
    EXPECT_EQ(nucleus(0.85f, 0), (std::set<int32_t>{0, 1, 2}));
    EXPECT_EQ(nucleus(0.99f, 0), (std::set<int32_t>{0, 1, 2, 3}));
    // Top-p applies to the top-k renormalised distribution: among {0.5, 0.3}, token 0 has 0.625.
    EXPECT_EQ(nucleus(0.6f, 2), (std::set<int32_t>{0}));
    EXPECT_EQ(nucleus(0.6f, 0), (std::set<int32_t>{0, 1}));
}

TEST(SamplingTest, TopPOnALargeShuffledVocabulary) {
    // 200 heavy tokens (weight ~1) and 800 light ones (weight ~0.25) at shuffled ids, with
    // distinct perturbations so the order is strict. The nucleus crosses several of the
    // sampler's sort chunks; the tokens just outside it are as likely as those just inside, so a
    // nucleus one token too large or too small shows up in the draws.
    const size_t V = 1000;
    std::vector<int32_t> ids(V);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), std::mt19937_64(17));
    std::vector<float> logits(V);
    for (size_t r = 0; r < V; ++r) {
        const double w = r < 200 ? 1.0 : 0.25;
        logits[static_cast<size_t>(ids[r])] = static_cast<float>(std::log(w) - 1e-4 * static_cast<double>(r));
    }
    const float top_p = 0.7f;
    // Reference: full sort in double.
    const auto p = softmax(logits);
    std::vector<int32_t> order(V);
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
    double cum = 0;
    size_t size = 0;
    while (cum < top_p) cum += p[static_cast<size_t>(order[size++])];
    ASSERT_GT(cum - top_p, 1e-6);  // the boundary is not a rounding coin-flip
    ASSERT_GT(top_p - (cum - p[static_cast<size_t>(order[size - 1])]), 1e-6);
    ASSERT_GT(size, 300u);  // well past the first sort chunk
    const std::set<int32_t> expected(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(size));

    SamplingParams sp = seeded(1.0f, 23);
    sp.top_p = top_p;
    Sampler s(sp, {});
    const auto counts = histogram(s, logits, 20000);
    EXPECT_EQ(drawn(counts), expected);
}

TEST(SamplingTest, MinPKeepsTokensAboveAFractionOfTheMax) {
    const std::vector<float> logits = log_probs_of({0.5, 0.2, 0.14, 0.1, 0.06});
    auto kept = [&](float min_p, float temperature) {
        SamplingParams p = seeded(temperature, 8);
        p.min_p = min_p;
        Sampler s(p, {});
        return drawn(histogram(s, logits, 4000));
    };
    EXPECT_EQ(kept(0.3f, 1.0f), (std::set<int32_t>{0, 1}));         // p >= 0.15
    EXPECT_EQ(kept(0.19f, 1.0f), (std::set<int32_t>{0, 1, 2, 3}));  // p >= 0.095
    EXPECT_EQ(kept(1.0f, 1.0f), (std::set<int32_t>{0}));
    EXPECT_EQ(kept(0.0f, 1.0f), (std::set<int32_t>{0, 1, 2, 3, 4}));
    // Applied after temperature (as in HF / vLLM): at T = 0.5 the ratios square, 0.2/0.5 -> 0.16.
    EXPECT_EQ(kept(0.3f, 0.5f), (std::set<int32_t>{0}));
}

// The sampler's logprobs (all of them, via top_logprobs = vocab) are the log-softmax of what it saw.
void expect_logprobs(Sampler& s, const std::vector<float>& logits, const std::vector<double>& expected_logits) {
    const SampleResult r = s.sample(logits);
    const auto ref = softmax(std::vector<float>(expected_logits.begin(), expected_logits.end()));
    ASSERT_EQ(r.top_logprobs.size(), logits.size());
    for (const auto& [id, lp] : r.top_logprobs) {
        EXPECT_NEAR(lp, std::log(ref[static_cast<size_t>(id)]), 1e-5) << "token " << id;
    }
}

TEST(SamplingTest, RepetitionPenaltyDividesPositiveAndMultipliesNegativeLogits) {
    const std::vector<float> logits = {2.0f, 1.9f, -1.0f, -1.1f, 0.5f};
    SamplingParams p;
    p.repetition_penalty = 1.25f;
    p.logprobs = 5;
    // Prompt tokens count; each distinct token is penalised once, however often it appears.
    Sampler s(p, std::vector<int32_t>{0, 0, 2});
    expect_logprobs(s, logits, {2.0 / 1.25, 1.9, -1.0 * 1.25, -1.1, 0.5});
    EXPECT_EQ(s.sample(logits).token, 1);  // greedy: 1.6 < 1.9
    s.accept(4);
    s.accept(4);
    expect_logprobs(s, logits, {2.0 / 1.25, 1.9, -1.0 * 1.25, -1.1, 0.5 / 1.25});
    Sampler none(SamplingParams{}, std::vector<int32_t>{0, 0, 2});
    EXPECT_EQ(none.sample(logits).token, 0);
}

TEST(SamplingTest, FrequencyAndPresencePenaltiesCountGeneratedTokensOnly) {
    const std::vector<float> logits = {1.0f, 0.8f, 0.2f, -0.3f};
    SamplingParams p;
    p.frequency_penalty = 0.1f;
    p.presence_penalty = 0.25f;
    p.logprobs = 4;
    Sampler s(p, std::vector<int32_t>{1, 1, 1});  // the prompt does not count
    expect_logprobs(s, logits, {1.0, 0.8, 0.2, -0.3});
    s.accept(0);
    s.accept(0);
    s.accept(0);
    s.accept(3);
    expect_logprobs(s, logits, {1.0 - 3 * 0.1 - 0.25, 0.8, 0.2, -0.3 - 0.1 - 0.25});
    EXPECT_EQ(s.sample(logits).token, 1);
    // Negative values encourage repetition.
    SamplingParams q;
    q.presence_penalty = -1.0f;
    Sampler r(q, {});
    r.accept(2);
    EXPECT_EQ(r.sample(logits).token, 2);
}

TEST(SamplingTest, LogprobsAreTheTemperedDistributionBeforeTruncation) {
    const std::vector<float> logits = random_logits(12, 4);
    for (float t : {0.0f, 0.5f, 1.0f, 2.0f}) {
        SamplingParams p = seeded(t, 3);
        p.top_k = 2;  // truncation does not change logprobs
        p.logprobs = 12;
        Sampler s(p, {});
        const SampleResult r = s.sample(logits);
        const auto ref = softmax(logits, t == 0.0f ? 1.0 : t);
        ASSERT_EQ(r.top_logprobs.size(), 12u);
        double total = 0;
        for (size_t i = 0; i < r.top_logprobs.size(); ++i) {
            const auto [id, lp] = r.top_logprobs[i];
            EXPECT_NEAR(lp, std::log(ref[static_cast<size_t>(id)]), 1e-5);
            if (i > 0) {
                EXPECT_GE(r.top_logprobs[i - 1].second, lp);
            }
            total += std::exp(lp);
            if (id == r.token) {
                EXPECT_FLOAT_EQ(lp, r.logprob);
            }
        }
        EXPECT_NEAR(total, 1.0, 1e-5);
        EXPECT_NEAR(r.logprob, std::log(ref[static_cast<size_t>(r.token)]), 1e-5);
    }
}

TEST(SamplingTest, TopLogprobsAreTheMostLikelyTokens) {
    const std::vector<float> logits = random_logits(129280, 12);
    SamplingParams p = seeded(0.8f, 1);
    p.logprobs = kMaxTopLogprobs;
    p.top_k = 40;
    p.top_p = 0.9f;
    Sampler s(p, {});
    std::vector<int32_t> order(logits.size());
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + 40, order.end(),
                      [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
    const std::set<int32_t> top40(order.begin(), order.begin() + 40);
    for (int step = 0; step < 20; ++step) {
        const SampleResult r = s.sample(logits);
        EXPECT_TRUE(top40.count(r.token));
        ASSERT_EQ(r.top_logprobs.size(), static_cast<size_t>(kMaxTopLogprobs));
        for (int i = 0; i < kMaxTopLogprobs; ++i) {
            EXPECT_EQ(r.top_logprobs[static_cast<size_t>(i)].first, order[static_cast<size_t>(i)]);
        }
    }
}

TEST(SamplingTest, NonFiniteLogitsDoNotCrash) {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    const float inf = std::numeric_limits<float>::infinity();
    Sampler g(SamplingParams{}, {});
    EXPECT_EQ(g.sample(std::vector<float>{nan, 1.0f, nan}).token, 1);
    EXPECT_EQ(g.sample(std::vector<float>{-inf, -inf}).token, 0);
    Sampler s(seeded(1.0f, 2), {});
    for (int i = 0; i < 50; ++i) {
        EXPECT_EQ(s.sample(std::vector<float>{nan, 0.0f, -inf, nan}).token, 1);
        EXPECT_EQ(s.sample(std::vector<float>{0.0f, inf, 3.0f}).token, 1);
    }
}

TEST(SamplingTest, InvalidParamsAreRejectedNamingTheField) {
    auto rejects = [](SamplingParams p, const std::string& field, int64_t vocab = 0) {
        const Status st = p.validate(vocab);
        EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << field;
        EXPECT_NE(st.message().find("sampling." + field), std::string::npos) << st.message();
    };
    const float nan = std::numeric_limits<float>::quiet_NaN();
    const float inf = std::numeric_limits<float>::infinity();
    EXPECT_TRUE(SamplingParams{}.validate().ok());
    SamplingParams p;
    p.temperature = -0.1f;
    rejects(p, "temperature");
    p = {};
    p.temperature = nan;
    rejects(p, "temperature");
    p = {};
    p.top_k = -1;
    rejects(p, "top_k");
    for (float v : {0.0f, 1.01f, nan}) {
        p = {};
        p.top_p = v;
        rejects(p, "top_p");
    }
    for (float v : {-0.01f, 1.5f, nan}) {
        p = {};
        p.min_p = v;
        rejects(p, "min_p");
    }
    for (float v : {0.0f, -1.0f, inf}) {
        p = {};
        p.repetition_penalty = v;
        rejects(p, "repetition_penalty");
    }
    p = {};
    p.frequency_penalty = inf;
    rejects(p, "frequency_penalty");
    p = {};
    p.presence_penalty = nan;
    rejects(p, "presence_penalty");
    p = {};
    p.logprobs = kMaxTopLogprobs + 1;
    rejects(p, "logprobs");
    p = {};
    p.logprobs = 5;
    rejects(p, "logprobs", 4);
    p = {};
    p.stop_token_ids = {3, 10};
    EXPECT_TRUE(p.validate().ok());
    rejects(p, "stop_token_ids", 10);
    p = {};
    p.stop = {""};
    rejects(p, "stop");
    p = {};
    p.max_tokens = -1;
    rejects(p, "max_tokens");

    p = {};
    p.temperature = 0.7f;
    p.top_k = 50;
    p.top_p = 1.0f;
    p.min_p = 1.0f;
    p.repetition_penalty = 1.1f;
    p.frequency_penalty = -2.0f;
    p.logprobs = kMaxTopLogprobs;
    p.stop_token_ids = {0, 99};
    EXPECT_TRUE(p.validate(100).ok());
}

TEST(SamplingTest, OutOfRangeParamsAreNeutralisedNotFatal) {
    // The Sampler may be built from unvalidated values (e.g. a wire spec); it must not misbehave.
    SamplingParams p = seeded(1.0f, 3);
    p.top_p = std::numeric_limits<float>::quiet_NaN();
    p.min_p = 2.0f;
    p.top_k = -4;
    p.repetition_penalty = 0.0f;
    p.logprobs = 1000;
    Sampler s(p, std::vector<int32_t>{-5, 1 << 30});
    s.accept(-1);
    s.accept(1 << 30);
    const std::vector<float> logits = {0.0f, 0.1f, 0.2f};
    const auto counts = histogram(s, logits, 3000);
    EXPECT_EQ(drawn(counts).size(), 3u);  // no filter left on
    EXPECT_LE(s.sample(logits).top_logprobs.size(), 3u);
}

}  // namespace
}  // namespace deepshard::model
