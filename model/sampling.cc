// Sampling (see sampling.h for the contract). Everything is O(vocab) per token: truncation works on
// a candidate set with nth_element (sorting at most a few dozen ids), never a full-vocab sort,
// and the race noise is counter-based so it can be drawn for the surviving candidates only, in any
// order, and still be identical everywhere.
#include "model/sampling.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>

namespace deepshard::model {

namespace {

constexpr float kMinTemperature = 1e-5f;  // generate.py: logits / max(T, 1e-5)
constexpr uint64_t kGoldenGamma = 0x9E3779B97F4A7C15ull;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// splitmix64's output function (Steele et al., "Fast splittable pseudorandom number generators").
uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Race noise for token i at a step with key K: x = output number i + 1 of the splitmix64 stream
// seeded with K (so any token's noise costs O(1)), u = ((x >> 12) + 0.5) / 2^52, which is exact in
// a double and lies in [2^-53, 1 - 2^-53] (never 0 or 1), and E = -log(u) ~ Exp(1). Hence
// -log(E) <= -log(-log(1 - 2^-53)) = 36.74.
constexpr double kMaxGumbel = 37.5;

// Per-thread O(vocab) work space, so that thousands of live Samplers do not each hold a megabyte.
struct Scratch {
    std::vector<float> logits;
    std::vector<float> weights;
    std::vector<uint64_t> candidates;
};

Scratch& scratch() {
    thread_local Scratch s;
    return s;
}

// A strict total order on tokens packed into one integer: higher logit first, lower id first on
// ties. Every selection uses it, so the kept set never depends on how a standard library breaks
// ties, and nth_element runs on contiguous integers instead of chasing indices.
uint64_t rank_key(float logit, int32_t id) {
    const uint32_t bits = std::bit_cast<uint32_t>(logit);
    const uint32_t ordered = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);  // monotone in logit
    return (static_cast<uint64_t>(ordered) << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(id));
}

int32_t key_id(uint64_t key) { return static_cast<int32_t>(0xFFFFFFFFu - static_cast<uint32_t>(key)); }

Status bad(const char* field, const std::string& what) {
    return invalid_argument(std::string("sampling.") + field + ": " + what);
}

}  // namespace

Status SamplingParams::validate(int64_t vocab_size) const {
    // The ranges are the request-limits table's (common/request_limits.h), the same every front end
    // and the control protocol apply, so nothing a client was allowed to send is refused here.
    limits::SamplingValues v;
    v.temperature = temperature;
    v.top_k = top_k;
    v.top_p = top_p;
    v.min_p = min_p;
    v.repetition_penalty = repetition_penalty;
    v.frequency_penalty = frequency_penalty;
    v.presence_penalty = presence_penalty;
    v.logprobs = logprobs;
    DS_RETURN_IF_ERROR(limits::check_sampling(v, "sampling."));
    if (max_tokens < 0) {
        return bad("max_tokens", "must be >= 0, got " + std::to_string(max_tokens));
    }
    if (vocab_size > 0 && logprobs > vocab_size) {
        return bad("logprobs", std::to_string(logprobs) + " exceeds the vocabulary of " + std::to_string(vocab_size));
    }
    DS_RETURN_IF_ERROR(limits::check_count("sampling.stop", stop.size(), limits::kMaxStopStrings));
    for (const std::string& s : stop) {
        if (s.empty() || s.size() > limits::kMaxStopStringBytes) {
            return bad("stop", "each stop string must have 1.." + std::to_string(limits::kMaxStopStringBytes) +
                                   " bytes, got " + std::to_string(s.size()));
        }
    }
    DS_RETURN_IF_ERROR(
        limits::check_count("sampling.stop_token_ids", stop_token_ids.size(), limits::kMaxStopTokenIds));
    for (int32_t id : stop_token_ids) {
        if (id < 0 || (vocab_size > 0 && id >= vocab_size)) {
            return bad("stop_token_ids", "id " + std::to_string(id) + " is outside the vocabulary" +
                                             (vocab_size > 0 ? " of " + std::to_string(vocab_size) : std::string()));
        }
    }
    return ok_status();
}

Sampler::Sampler(const SamplingParams& params, std::span<const int32_t> prompt) : params_(params) {
    // Callers validate; here anything out of range turns the feature off rather than misbehaving.
    SamplingParams& p = params_;
    if (!std::isfinite(p.temperature) || p.temperature < 0) {
        p.temperature = 0;
    }
    if (p.top_k < 0) {
        p.top_k = 0;
    }
    if (!(p.top_p > 0 && p.top_p <= 1)) {
        p.top_p = 1;
    }
    if (!(p.min_p >= 0 && p.min_p <= 1)) {
        p.min_p = 0;
    }
    if (!std::isfinite(p.repetition_penalty) || p.repetition_penalty <= 0) {
        p.repetition_penalty = 1;
    }
    if (!std::isfinite(p.frequency_penalty)) {
        p.frequency_penalty = 0;
    }
    if (!std::isfinite(p.presence_penalty)) {
        p.presence_penalty = 0;
    }
    p.logprobs = std::clamp(p.logprobs, 0, kMaxTopLogprobs);

    if (p.has_seed) {
        seed_ = p.seed;
    } else {
        std::random_device rd;
        seed_ = (static_cast<uint64_t>(rd()) << 32) ^ rd();
    }
    step_rng_.seed(seed_);
    seen_.insert(prompt.begin(), prompt.end());
}

void Sampler::accept(int32_t token) {
    seen_.insert(token);
    ++generated_[token];
}

SampleResult Sampler::sample(std::span<const float> logits) {
    DS_CHECK(!logits.empty()) << "Sampler::sample: empty logits";
    // Drawn every call, greedy or not, so a step's noise depends only on (seed, step index).
    return sample_with_key(logits, step_rng_());
}

SampleResult Sampler::sample_with_key(std::span<const float> logits, uint64_t step_key) {
    DS_CHECK(!logits.empty()) << "Sampler::sample: empty logits";
    const int64_t V = static_cast<int64_t>(logits.size());
    const auto in_vocab = [V](int32_t id) { return id >= 0 && id < V; };

    Scratch& sc = scratch();
    sc.logits.assign(logits.begin(), logits.end());
    float* s = sc.logits.data();

    // 1-2. Penalties touch only tokens in the history.
    const float rp = params_.repetition_penalty;
    if (rp != 1.0f) {
        for (int32_t id : seen_) {
            if (in_vocab(id)) {
                s[id] = s[id] > 0 ? s[id] / rp : s[id] * rp;
            }
        }
    }
    const float fp = params_.frequency_penalty, pp = params_.presence_penalty;
    if (fp != 0.0f || pp != 0.0f) {
        for (const auto& [id, count] : generated_) {
            if (in_vocab(id)) {
                s[id] -= static_cast<float>(count) * fp + pp;
            }
        }
    }

    // 3. Temperature, NaN -> -inf (never chosen), +inf -> the largest float (keeps s - max finite).
    const bool greedy = params_.temperature == 0.0f;
    const float inv_t = greedy ? 1.0f : 1.0f / std::max(params_.temperature, kMinTemperature);
    // Branch-free passes with independent lanes, so the compiler can vectorise them.
    constexpr float kMaxFloat = std::numeric_limits<float>::max();
    float lane_max[8] = {kNegInf, kNegInf, kNegInf, kNegInf, kNegInf, kNegInf, kNegInf, kNegInf};
    int64_t i = 0;
    for (; i + 8 <= V; i += 8) {
        for (int l = 0; l < 8; ++l) {
            float v = std::min(s[i + l] * inv_t, kMaxFloat);
            v = v != v ? kNegInf : v;
            s[i + l] = v;
            lane_max[l] = v > lane_max[l] ? v : lane_max[l];
        }
    }
    for (; i < V; ++i) {
        float v = std::min(s[i] * inv_t, kMaxFloat);
        v = v != v ? kNegInf : v;
        s[i] = v;
        lane_max[0] = std::max(lane_max[0], v);
    }
    const float m = *std::max_element(lane_max, lane_max + 8);
    const auto argmax = static_cast<int32_t>(std::find(s, s + V, m) - s);  // lowest id on ties
    SampleResult result;
    if (m == kNegInf) {
        // No usable distribution at all (every logit -inf or NaN): a defined answer, not a crash.
        result.token = 0;
        result.logprob = kNegInf;
        return result;
    }
    // w_i = exp(s_i - m): unnormalised probabilities, kept for the top-p mass sums.
    sc.weights.resize(static_cast<size_t>(V));
    float* w = sc.weights.data();
    double lane_z[4] = {0, 0, 0, 0};  // sum over the whole vocabulary: the logprob normaliser
    for (i = 0; i + 4 <= V; i += 4) {
        for (int l = 0; l < 4; ++l) {
            w[i + l] = std::exp(s[i + l] - m);
            lane_z[l] += w[i + l];
        }
    }
    for (; i < V; ++i) {
        w[i] = std::exp(s[i] - m);
        lane_z[0] += w[i];
    }
    const double z = (lane_z[0] + lane_z[1]) + (lane_z[2] + lane_z[3]);
    const double log_z = m + std::log(z);

    int32_t token = argmax;
    if (!greedy) {
        // 4. Truncation. The survivors of each filter are a prefix of the rank_key order, so the
        // final set is the shortest of the three prefixes; only top-p's target depends on top-k.
        std::vector<uint64_t>& cand = sc.candidates;
        const float min_logit = params_.min_p > 0 ? m + std::log(params_.min_p) : kNegInf;
        const auto keep_min_p = [&](int32_t id) { return s[id] > kNegInf && s[id] >= min_logit; };
        double mass = z;  // the mass top-p is measured against
        const bool truncated = (params_.top_k > 0 && params_.top_k < V) || params_.top_p < 1.0f || params_.min_p > 0;
        cand.clear();
        if (params_.top_k > 0 && params_.top_k < V) {
            cand.resize(static_cast<size_t>(V));
            for (int32_t id = 0; id < V; ++id) cand[static_cast<size_t>(id)] = rank_key(s[id], id);
            const auto kth = cand.begin() + params_.top_k;
            std::nth_element(cand.begin(), kth, cand.end(), std::greater<uint64_t>());
            cand.erase(kth, cand.end());
            mass = 0;
            for (uint64_t c : cand) mass += w[key_id(c)];
            cand.erase(std::remove_if(cand.begin(), cand.end(), [&](uint64_t c) { return !keep_min_p(key_id(c)); }),
                       cand.end());
        } else if (truncated) {
            // With top-p, tokens of weight <= eps can be dropped up front: all of them together
            // weigh at most V * eps < mass - target, so the rest already reaches the target and
            // holds the whole nucleus. For a peaked distribution this leaves only a few ids.
            const double eps = params_.top_p < 1.0f
                                   ? 0.5 * (1.0 - static_cast<double>(params_.top_p)) * mass / static_cast<double>(V)
                                   : -1.0;
            for (int32_t id = 0; id < V; ++id) {
                if (w[id] > eps && keep_min_p(id)) {
                    cand.push_back(rank_key(s[id], id));
                }
            }
        }
        if (params_.top_p < 1.0f) {
            // Minimal nucleus without sorting the vocabulary: halve the range [lo, hi) that holds
            // the boundary with nth_element (O(n) in total), then sort only the last few. Every
            // token in [0, lo) is more likely than any in [lo, hi), and cum is the mass of [0, lo).
            const double target = static_cast<double>(params_.top_p) * mass;
            double cand_mass = 0;
            for (uint64_t c : cand) cand_mass += w[key_id(c)];
            if (cand_mass >= target) {  // else min-p (or -inf logits) already cut deeper
                size_t lo = 0, hi = cand.size();
                double cum = 0;
                while (hi - lo > 32) {
                    const size_t mid = lo + (hi - lo) / 2;
                    const auto first = cand.begin() + static_cast<std::ptrdiff_t>(lo);
                    const auto nth = cand.begin() + static_cast<std::ptrdiff_t>(mid);
                    const auto last = cand.begin() + static_cast<std::ptrdiff_t>(hi);
                    std::nth_element(first, nth, last, std::greater<uint64_t>());
                    double upper = 0;
                    for (auto it = first; it != nth; ++it) upper += w[key_id(*it)];
                    if (cum + upper >= target) {
                        hi = mid;
                    } else {
                        cum += upper;
                        lo = mid;
                    }
                }
                std::sort(cand.begin() + static_cast<std::ptrdiff_t>(lo),
                          cand.begin() + static_cast<std::ptrdiff_t>(hi), std::greater<uint64_t>());
                size_t keep = hi;  // if rounding never reaches the target, [lo, hi) is all in
                for (size_t j = lo; j < hi; ++j) {
                    cum += w[key_id(cand[j])];
                    if (cum >= target) {
                        keep = j + 1;
                        break;
                    }
                }
                cand.resize(keep);
            }
        }

        // 5. Exponential race: argmax p_i / E_i == argmax (s_i - log E_i), lower id on (measure-zero)
        // ties. Two exact bounds skip the logarithms for ids that provably cannot beat the
        // current best (key_i <= best - log 1.001), so a draw over the whole vocabulary costs
        // about one hash per id: (a) key_i < s_i + kMaxGumbel; (b) with v = 1 - u_i,
        // E_i = -log(1 - v) >= v, so v >= 1.001 * exp(s_i - best) = 1.001 * w_i * exp(m - best)
        // bounds key_i; the 0.1% slack covers the float rounding of w_i (needs w_i normal).
        double best = -std::numeric_limits<double>::infinity();
        double scale = std::numeric_limits<double>::infinity();  // exp(m - best)
        const auto compete = [&](int32_t id) {
            if (static_cast<double>(s[id]) + kMaxGumbel <= best) {  // also drops -inf logits
                return;
            }
            const uint64_t bits = mix64(step_key + (static_cast<uint64_t>(id) + 1) * kGoldenGamma) >> 12;
            const double v = (static_cast<double>((uint64_t{1} << 52) - 1 - bits) + 0.5) * 0x1.0p-52;
            if (w[id] >= std::numeric_limits<float>::min() && v >= 1.001 * static_cast<double>(w[id]) * scale) {
                return;
            }
            const double u = (static_cast<double>(bits) + 0.5) * 0x1.0p-52;  // u + v == 1 exactly
            const double key = static_cast<double>(s[id]) - std::log(-std::log(u));
            if (key > best || (key == best && id < token)) {
                best = key;
                token = id;
                scale = std::exp(static_cast<double>(m) - best);
            }
        };
        if (truncated) {
            for (uint64_t c : cand) compete(key_id(c));
        } else {
            for (int32_t id = 0; id < V; ++id) compete(id);
        }
    }

    result.token = token;
    result.logprob = static_cast<float>(s[token] - log_z);
    if (params_.logprobs > 0) {
        // Top-n by insertion into a short sorted list: one pass, n <= kMaxTopLogprobs.
        const size_t n = static_cast<size_t>(std::min<int64_t>(params_.logprobs, V));
        std::vector<uint64_t> top;  // descending
        top.reserve(n + 1);
        for (int32_t id = 0; id < V; ++id) {
            const uint64_t c = rank_key(s[id], id);
            if (top.size() == n && c < top.back()) {
                continue;
            }
            top.insert(std::upper_bound(top.begin(), top.end(), c, std::greater<uint64_t>()), c);
            if (top.size() > n) {
                top.pop_back();
            }
        }
        result.top_logprobs.reserve(n);
        for (uint64_t c : top) result.top_logprobs.emplace_back(key_id(c), static_cast<float>(s[key_id(c)] - log_z));
    }
    return result;
}

std::vector<SampleResult> verify_drafts(Sampler& sampler, std::span<const float> rows, int64_t vocab,
                                        std::span<const int32_t> drafts) {
    std::vector<SampleResult> emitted;
    const size_t k = drafts.size();
    for (size_t i = 0; i <= k; ++i) {
        SampleResult r = sampler.sample(rows.subspan(i * static_cast<size_t>(vocab), static_cast<size_t>(vocab)));
        sampler.accept(r.token);
        const bool go_on = i < k && r.token == drafts[i];
        emitted.push_back(std::move(r));
        if (!go_on) break;
    }
    return emitted;
}

}  // namespace deepshard::model
