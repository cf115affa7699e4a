// The math of the GPU sampler (kernels/cuda/sampling.h) that must agree with model::Sampler
// (model/sampling.cc) bit for bit: the total order on tokens (rank_key), the counter-based race noise
// (splitmix64 of the step key), the penalty and temperature transforms. __host__ __device__ under nvcc,
// plain inline C++ elsewhere, so the host tests run this very code against the CPU sampler.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "kernels/cuda/device_math.h"

namespace deepshard::kernels::cuda {

inline constexpr int kMaxSampleLogprobs = 20;

// Per row parameters of a device sampling call (the model::SamplingParams the sampler needs plus the
// row's step key and penalty list range). Plain data, copied to the device as is.
struct SampleParams {
    float temperature = 0, top_p = 1, min_p = 0, repetition_penalty = 1, frequency_penalty = 0, presence_penalty = 0;
    int32_t top_k = 0, logprobs = 0;
    uint64_t step_key = 0;
    int32_t row = 0;            // logits row
    int32_t penalty_begin = 0;  // entries [penalty_begin, penalty_end) of the penalty lists
    int32_t penalty_end = 0;
    int32_t pad = 0;
};

// One sampled row.
struct SampleOut {
    int32_t token = 0;
    float logprob = 0;
    int32_t num_top = 0;
    int32_t top_ids[kMaxSampleLogprobs] = {};
    float top_logprobs[kMaxSampleLogprobs] = {};
};

inline constexpr uint64_t kSampleGoldenGamma = 0x9E3779B97F4A7C15ull;
inline constexpr float kSampleMinTemperature = 1e-5f;

// splitmix64's output function (model/sampling.cc mix64).
DS_HD uint64_t sample_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Higher logit first, lower id first on ties, as one integer (model/sampling.cc rank_key).
DS_HD uint64_t sample_rank_key(float logit, int32_t id) {
    const uint32_t bits = f32_to_bits(logit);
    const uint32_t ordered = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
    return (static_cast<uint64_t>(ordered) << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(id));
}
DS_HD int32_t sample_key_id(uint64_t key) { return static_cast<int32_t>(0xFFFFFFFFu - static_cast<uint32_t>(key)); }

// Race key of token `id` with transformed logit s: s - log(E) with E = -log(u), u from the step key's
// splitmix64 stream (exactly the CPU sampler's draw; the CPU skips provably losing ids, which does not
// change the winner).
DS_HD double sample_race_key(uint64_t step_key, int32_t id, float s) {
    const uint64_t bits = sample_mix64(step_key + (static_cast<uint64_t>(id) + 1) * kSampleGoldenGamma) >> 12;
    const double u = (static_cast<double>(bits) + 0.5) * 0x1.0p-52;
#if defined(__CUDA_ARCH__)
    return static_cast<double>(s) - log(-log(u));
#else
    return static_cast<double>(s) - std::log(-std::log(u));
#endif
}

// Repetition penalty (every seen id) then frequency / presence (generated ids, count > 0), in the CPU
// order, on one logit.
DS_HD float sample_penalize(float s, float count, const SampleParams& p) {
    if (p.repetition_penalty != 1.0f) s = s > 0 ? s / p.repetition_penalty : s * p.repetition_penalty;
    if ((p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f) && count > 0) {
        s -= count * p.frequency_penalty + p.presence_penalty;
    }
    return s;
}

// Temperature (1 for greedy) with NaN -> -inf and +inf -> the largest float (model/sampling.cc step 3).
DS_HD float sample_scale(float s, float inv_t) {
    const float max_f = 3.40282347e+38f;
    float v = s * inv_t;
    v = max_f < v ? max_f : v;  // std::min(v, max): NaN stays NaN here
    return v != v ? -INFINITY : v;
}

DS_HD float sample_inv_temperature(float temperature) {
    return temperature == 0.0f ? 1.0f : 1.0f / (temperature > kSampleMinTemperature ? temperature : kSampleMinTemperature);
}

// The 8-bit digit `level` (0 = most significant) of a 64-bit key, and the mask of the digits above it.
DS_HD uint32_t sample_digit(uint64_t key, int level) { return static_cast<uint32_t>((key >> (56 - 8 * level)) & 0xffu); }
DS_HD uint64_t sample_prefix_mask(int level) { return level == 0 ? 0 : ~uint64_t{0} << (64 - 8 * level); }

}  // namespace deepshard::kernels::cuda
