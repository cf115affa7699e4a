// The GPU sampler's algorithm against the CPU sampler, on the CPU: a serial transcription of
// kernels/cuda/sampling.cu (same passes: penalties, temperature, max / argmax, the top-k threshold by
// 8-bit radix selection on the 64-bit rank keys, the eps / min-p candidate predicate, the top-p nucleus
// by mass-weighted radix selection, the race), built on the very __host__ __device__ functions the kernel
// runs (kernels/cuda/sampling_math.h), must take model::Sampler's decisions for the same step key:
// same token, same logprob, same top logprobs, over random logits and every parameter.
// (The kernel itself is compared with the CPU sampler on a GPU: tests/kernels_cuda/backend_ops_test.cc.)
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <random>

#include "kernels/cuda/sampling_math.h"
#include "model/sampling.h"

namespace deepshard::model {
namespace {

namespace kc = kernels::cuda;

struct Ref {
    std::vector<float> s;
    float m = 0;
    float w(int32_t i) const { return std::exp(s[i] - m); }
    uint64_t key(int32_t i) const { return kc::sample_rank_key(s[i], i); }
    int32_t V() const { return static_cast<int32_t>(s.size()); }
};

// select_kth of sampling.cu, serially (one "thread" visiting every id).
template <typename Pred>
uint64_t select_kth(const Ref& r, int32_t k, Pred pred) {
    uint64_t prefix = 0;
    int32_t left = k;
    for (int level = 0; level < 8; ++level) {
        const uint64_t mask = kc::sample_prefix_mask(level);
        int32_t hist[256] = {};
        for (int32_t i = 0; i < r.V(); ++i) {
            if (!pred(i)) continue;
            const uint64_t key = r.key(i);
            if ((key & mask) == prefix) ++hist[kc::sample_digit(key, level)];
        }
        int chosen = 0;
        for (int b = 255; b >= 0; --b) {
            if (left <= hist[b]) {
                chosen = b;
                break;
            }
            left -= hist[b];
        }
        prefix |= static_cast<uint64_t>(chosen) << (56 - 8 * level);
    }
    return prefix;
}

// select_mass of sampling.cu, serially.
template <typename Pred>
uint64_t select_mass(const Ref& r, double target, Pred pred) {
    uint64_t prefix = 0;
    double cum = 0.0;
    for (int level = 0; level < 8; ++level) {
        const uint64_t mask = kc::sample_prefix_mask(level);
        double mass[256] = {};
        int32_t hist[256] = {};
        for (int32_t i = 0; i < r.V(); ++i) {
            if (!pred(i)) continue;
            const uint64_t key = r.key(i);
            if ((key & mask) == prefix) {
                mass[kc::sample_digit(key, level)] += r.w(i);
                ++hist[kc::sample_digit(key, level)];
            }
        }
        int chosen = -1, lowest = 0;
        for (int b = 255; b >= 0; --b) {
            if (hist[b] == 0) continue;
            lowest = b;
            if (cum + mass[b] >= target) {
                chosen = b;
                break;
            }
            cum += mass[b];
        }
        if (chosen < 0) {
            chosen = lowest;
            cum -= mass[lowest];
        }
        prefix |= static_cast<uint64_t>(chosen) << (56 - 8 * level);
    }
    return prefix;
}

kc::SampleOut gpu_algorithm(std::vector<float> logits, const kc::SampleParams& p, const std::vector<int32_t>& pen_ids,
                            const std::vector<float>& pen_counts) {
    kc::SampleOut o;
    Ref r;
    r.s = std::move(logits);
    const int32_t V = r.V();
    for (size_t j = 0; j < pen_ids.size(); ++j) {
        if (pen_ids[j] >= 0 && pen_ids[j] < V) r.s[pen_ids[j]] = kc::sample_penalize(r.s[pen_ids[j]], pen_counts[j], p);
    }
    const bool greedy = p.temperature == 0.0f;
    const float inv_t = kc::sample_inv_temperature(p.temperature);
    float m = -INFINITY;
    for (float& v : r.s) {
        v = kc::sample_scale(v, inv_t);
        m = v > m ? v : m;
    }
    int32_t argmax = 0;
    while (r.s[argmax] != m && argmax + 1 < V) ++argmax;
    if (m == -INFINITY) {
        o.token = 0;
        o.logprob = -INFINITY;
        return o;
    }
    r.m = m;
    double z = 0;
    for (int32_t i = 0; i < V; ++i) z += r.w(i);
    const double log_z = static_cast<double>(m) + std::log(z);
    int32_t token = argmax;
    if (!greedy) {
        const bool has_topk = p.top_k > 0 && p.top_k < V;
        const bool truncated = has_topk || p.top_p < 1.0f || p.min_p > 0.0f;
        const float min_logit = p.min_p > 0.0f ? m + std::log(p.min_p) : -INFINITY;
        auto keep_min_p = [&](int32_t i) { return r.s[i] > -INFINITY && r.s[i] >= min_logit; };
        double mass = z;
        uint64_t kth = 0;
        if (has_topk) {
            kth = select_kth(r, p.top_k, [](int32_t) { return true; });
            mass = 0;
            for (int32_t i = 0; i < V; ++i) {
                if (r.key(i) >= kth) mass += r.w(i);
            }
        }
        const double eps = (!has_topk && p.top_p < 1.0f)
                               ? 0.5 * (1.0 - static_cast<double>(p.top_p)) * mass / static_cast<double>(V)
                               : -1.0;
        auto cand = [&](int32_t i) {
            if (has_topk) return r.key(i) >= kth && keep_min_p(i);
            return static_cast<double>(r.w(i)) > eps && keep_min_p(i);
        };
        uint64_t nucleus = 0;
        if (p.top_p < 1.0f) {
            const double target = static_cast<double>(p.top_p) * mass;
            double cm = 0;
            for (int32_t i = 0; i < V; ++i) {
                if (cand(i)) cm += r.w(i);
            }
            if (cm >= target) nucleus = select_mass(r, target, cand);
        }
        double best = 0;
        int32_t best_id = -1;
        for (int32_t i = 0; i < V; ++i) {
            const bool alive = truncated ? (cand(i) && r.key(i) >= nucleus) : r.s[i] > -INFINITY;
            if (!alive) continue;
            const double key = kc::sample_race_key(p.step_key, i, r.s[i]);
            if (best_id < 0 || key > best) {
                best = key;
                best_id = i;
            }
        }
        if (best_id >= 0) token = best_id;
    }
    o.token = token;
    o.logprob = static_cast<float>(static_cast<double>(r.s[token]) - log_z);
    const int32_t n = std::min(p.logprobs, V);
    if (n > 0) {
        const uint64_t kn = select_kth(r, n, [](int32_t) { return true; });
        std::vector<uint64_t> keys;
        for (int32_t i = 0; i < V; ++i) {
            if (r.key(i) >= kn) keys.push_back(r.key(i));
        }
        std::sort(keys.rbegin(), keys.rend());
        o.num_top = static_cast<int32_t>(keys.size());
        for (int32_t a = 0; a < o.num_top && a < kc::kMaxSampleLogprobs; ++a) {
            o.top_ids[a] = kc::sample_key_id(keys[a]);
            o.top_logprobs[a] = static_cast<float>(static_cast<double>(r.s[o.top_ids[a]]) - log_z);
        }
    }
    return o;
}

// The device sampler's inputs for a Sampler, as the CUDA engine builds them (model/gpu/outputs.cc).
kc::SampleParams params_of(const Sampler& s, uint64_t key, std::vector<int32_t>* ids, std::vector<float>* counts) {
    const SamplingParams& sp = s.params();
    kc::SampleParams q;
    q.temperature = sp.temperature;
    q.top_k = sp.top_k;
    q.top_p = sp.top_p;
    q.min_p = sp.min_p;
    q.repetition_penalty = sp.repetition_penalty;
    q.frequency_penalty = sp.frequency_penalty;
    q.presence_penalty = sp.presence_penalty;
    q.logprobs = sp.logprobs;
    q.step_key = key;
    for (int32_t id : s.seen()) {
        auto it = s.generated().find(id);
        ids->push_back(id);
        counts->push_back(it == s.generated().end() ? 0.0f : static_cast<float>(it->second));
    }
    return q;
}

std::vector<float> random_logits(std::mt19937_64& rng, int64_t V, float scale, bool peaked) {
    std::normal_distribution<float> nd(0.0f, scale);
    std::vector<float> l(static_cast<size_t>(V));
    for (float& v : l) v = nd(rng);
    if (peaked) l[rng() % V] += 12.0f;
    return l;
}

TEST(GpuSamplerMath, ThresholdSelectionMakesTheCpuSamplersDecisions) {
    std::mt19937_64 rng(2024);
    int cases = 0, truncating = 0;
    for (int64_t V : {17, 1000, 32000}) {
        for (int rep = 0; rep < (V > 10000 ? 40 : 150); ++rep) {
            SamplingParams sp;
            sp.has_seed = true;
            sp.seed = rng();
            // 0 greedy, 1 top-k, 2 top-p, 3 min-p, 4 penalties, 5 top-k + top-p, 6 penalties (sampled),
            // 7 top-p + min-p, 8 top-k + min-p, 9 all three + penalties.
            const int kind = static_cast<int>(rng() % 10);
            sp.temperature = kind == 0 ? 0.0f : std::array<float, 4>{0.3f, 0.7f, 1.0f, 1.6f}[rng() % 4];
            if (kind == 1 || kind == 5 || kind == 8 || kind == 9) {
                sp.top_k = static_cast<int32_t>(1 + rng() % std::min<int64_t>(V, 60));
            }
            if (kind == 2 || kind == 5 || kind == 7 || kind == 9) {
                sp.top_p = std::array<float, 4>{0.1f, 0.5f, 0.9f, 0.99f}[rng() % 4];
            }
            if (kind == 3 || kind == 7 || kind == 8 || kind == 9) {
                sp.min_p = std::array<float, 3>{0.01f, 0.05f, 0.3f}[rng() % 3];
            }
            if (kind == 4 || kind == 6 || kind == 9) {
                sp.repetition_penalty = 1.3f;
                sp.frequency_penalty = 0.4f;
                sp.presence_penalty = 0.25f;
            }
            sp.logprobs = static_cast<int>(rng() % 6);
            std::vector<int32_t> prompt;
            for (int i = 0; i < 20; ++i) prompt.push_back(static_cast<int32_t>(rng() % V));
            Sampler cpu(sp, prompt);
            for (int i = 0; i < 7; ++i) cpu.accept(static_cast<int32_t>(rng() % V));
            const auto logits = random_logits(rng, V, 1.0f + static_cast<float>(rng() % 4), rng() % 3 == 0);
            const uint64_t key = rng();
            std::vector<int32_t> ids;
            std::vector<float> counts;
            const kc::SampleParams q = params_of(cpu, key, &ids, &counts);
            const kc::SampleOut g = gpu_algorithm(logits, q, ids, counts);
            const SampleResult want = cpu.sample_with_key(logits, key);
            ASSERT_EQ(g.token, want.token) << "V " << V << " case " << rep << " T " << sp.temperature << " top_k "
                                           << sp.top_k << " top_p " << sp.top_p << " min_p " << sp.min_p;
            ASSERT_NEAR(g.logprob, want.logprob, 1e-5f * (1.0f + std::fabs(want.logprob)));
            ASSERT_EQ(g.num_top, static_cast<int32_t>(want.top_logprobs.size()));
            for (int32_t a = 0; a < g.num_top; ++a) {
                ASSERT_EQ(g.top_ids[a], want.top_logprobs[a].first);
                ASSERT_NEAR(g.top_logprobs[a], want.top_logprobs[a].second, 1e-5f);
            }
            ++cases;
            truncating += sp.temperature > 0 && (sp.top_k > 0 || sp.top_p < 1 || sp.min_p > 0);
        }
    }
    EXPECT_GT(truncating, 80) << "the cases must exercise the truncation paths";
    EXPECT_GT(cases, 300);
}

TEST(GpuSamplerMath, RadixSelectionFindsTheKthKeyAndTheNucleus) {
    std::mt19937_64 rng(5);
    Ref r;
    r.s = random_logits(rng, 5000, 2.0f, false);
    r.s[17] = r.s[18] = r.s[4000] = 3.5f;  // ties: lower id ranks first
    r.m = *std::max_element(r.s.begin(), r.s.end());
    std::vector<uint64_t> keys;
    for (int32_t i = 0; i < r.V(); ++i) keys.push_back(r.key(i));
    std::sort(keys.rbegin(), keys.rend());
    for (int32_t k : {1, 2, 3, 4, 100, 4999, 5000}) {
        EXPECT_EQ(select_kth(r, k, [](int32_t) { return true; }), keys[k - 1]) << "k " << k;
    }
    double total = 0;
    for (uint64_t k : keys) total += r.w(kc::sample_key_id(k));
    for (double frac : {0.01, 0.3, 0.9, 0.999999}) {
        const double target = frac * total;
        double cum = 0;
        uint64_t want = 0;
        for (uint64_t k : keys) {
            cum += r.w(kc::sample_key_id(k));
            if (cum >= target) {
                want = k;
                break;
            }
        }
        EXPECT_EQ(select_mass(r, target, [](int32_t) { return true; }), want) << "fraction " << frac;
    }
    // A target beyond the total (rounding) keeps everything: the smallest key.
    EXPECT_EQ(select_mass(r, 2 * total, [](int32_t) { return true; }), keys.back());
}

TEST(GpuSamplerMath, PieceByPieceAgreement) {
    // The element transforms the kernel applies are the CPU sampler's.
    kc::SampleParams p;
    p.repetition_penalty = 2.0f;
    p.frequency_penalty = 0.5f;
    p.presence_penalty = 0.25f;
    EXPECT_EQ(kc::sample_penalize(4.0f, 2.0f, p), 4.0f / 2.0f - (2.0f * 0.5f + 0.25f));
    EXPECT_EQ(kc::sample_penalize(-4.0f, 0.0f, p), -8.0f);
    EXPECT_EQ(kc::sample_scale(NAN, 1.0f), -INFINITY);
    EXPECT_EQ(kc::sample_scale(INFINITY, 1.0f), 3.40282347e+38f);
    EXPECT_EQ(kc::sample_inv_temperature(0.0f), 1.0f);
    EXPECT_EQ(kc::sample_inv_temperature(1e-9f), 1.0f / 1e-5f);
    EXPECT_GT(kc::sample_rank_key(1.0f, 5), kc::sample_rank_key(0.5f, 1));
    EXPECT_GT(kc::sample_rank_key(1.0f, 1), kc::sample_rank_key(1.0f, 5));
    EXPECT_GT(kc::sample_rank_key(-0.5f, 1), kc::sample_rank_key(-1.0f, 0));
    EXPECT_EQ(kc::sample_key_id(kc::sample_rank_key(2.0f, 123456)), 123456);
}

}  // namespace
}  // namespace deepshard::model
