// Math shared by the CUDA kernels and their host-side tests: exact decoding of the weight dtypes,
// the BF16 rounding of the dequant path and the MoE routing of one token. Every function is
// __host__ __device__ under nvcc and plain inline C++ elsewhere, so the tests can check the very code
// the kernels run against the CPU twins (WeightView::at, dtype.h, kernels/mla.h, kernels/moe.h) without a GPU.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/moe.h"
#include "kernels/weight_view.h"

#if defined(__CUDACC__)
#define DS_HD __host__ __device__ __forceinline__
#else
#define DS_HD inline
#endif

namespace deepshard::kernels::cuda {

// Weight dtypes the kernels read (values of deepshard::DType, kept as a plain enum for device code).
enum class DevDType : int32_t { kF32 = 0, kBF16 = 1, kF16 = 2, kF8E4M3 = 3 };

// The fields of a WeightView, device-copyable (passed by value to kernels). data/scale are device
// pointers when used on the GPU, host pointers in the host tests.
struct DevWeight {
    DevDType dtype;
    const void* data;
    int64_t rows, cols, ld;
    const float* scale;
    int64_t scale_ld, row_offset, col_offset, block_rows, block_cols;
};

// false for dtypes the kernels do not read (I32, ...).
inline bool to_dev_weight(const WeightView& w, DevWeight* out) {
    switch (w.dtype) {
        case DType::kF32: out->dtype = DevDType::kF32; break;
        case DType::kBF16: out->dtype = DevDType::kBF16; break;
        case DType::kF16: out->dtype = DevDType::kF16; break;
        case DType::kF8E4M3: out->dtype = DevDType::kF8E4M3; break;
        default: return false;
    }
    out->data = w.data;
    out->rows = w.rows;
    out->cols = w.cols;
    out->ld = w.ld;
    out->scale = w.scale;
    out->scale_ld = w.scale_ld;
    out->row_offset = w.row_offset;
    out->col_offset = w.col_offset;
    out->block_rows = w.block_rows;
    out->block_cols = w.block_cols;
    return true;
}

DS_HD float bits_to_f32(uint32_t bits) {
#if defined(__CUDA_ARCH__)
    return __uint_as_float(bits);
#else
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
#endif
}

DS_HD uint32_t f32_to_bits(float f) {
#if defined(__CUDA_ARCH__)
    return __float_as_uint(f);
#else
    uint32_t b;
    std::memcpy(&b, &f, 4);
    return b;
#endif
}

// e4m3fn, exact: bias 7, exponent 0 subnormal (m * 2^-9), S.1111.111 NaN, no infinity.
DS_HD float decode_e4m3(uint8_t code) {
    const uint32_t sign = static_cast<uint32_t>(code & 0x80) << 24;
    const uint32_t exp = (code >> 3) & 0xf;
    const uint32_t man = code & 7;
    if (exp == 15 && man == 7) {
        return bits_to_f32(sign | 0x7fc00000u);
    }
    if (exp == 0) {
        const float v = static_cast<float>(man) * 0.001953125f;  // 2^-9, exact
        return sign ? -v : v;
    }
    return bits_to_f32(sign | ((exp + 120u) << 23) | (man << 20));  // rebias 7 -> 127
}

DS_HD float decode_bf16(uint16_t v) {
    return bits_to_f32(static_cast<uint32_t>(v) << 16);
}

// IEEE half, exact (subnormals, inf, NaN).
DS_HD float decode_f16(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
    const uint32_t exp = (h >> 10) & 0x1f;
    const uint32_t man = h & 0x3ff;
    if (exp == 0) {
        const float v = static_cast<float>(man) * 5.9604644775390625e-8f;  // 2^-24, exact
        return sign ? -v : v;
    }
    if (exp == 31) {
        return bits_to_f32(sign | 0x7f800000u | (man << 13));
    }
    return bits_to_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

// Round-to-nearest-even to bf16 bits; NaN stays NaN (same as deepshard::f32_to_bf16).
DS_HD uint16_t encode_bf16(float f) {
    const uint32_t bits = f32_to_bits(f);
    if ((bits & 0x7fffffffu) > 0x7f800000u) {
        return static_cast<uint16_t>((bits >> 16) | 0x40);
    }
    const uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
    return static_cast<uint16_t>((bits + rounding) >> 16);
}

// Round-to-nearest-even float -> e4m3fn, saturating at +-448, NaN -> 0x7F: exactly deepshard::f32_to_e4m3
// (common/dtype.h), the cast the DeepSeek release quantized with; used for FP8 activations.
DS_HD uint8_t encode_e4m3(float f) {
    const uint32_t bits = f32_to_bits(f);
    const uint32_t abs_bits = bits & 0x7fffffffu;
    if (abs_bits > 0x7f800000u) {
        return 0x7f;
    }
    const uint8_t sign = (bits >> 24) & 0x80;
    const float a = bits_to_f32(abs_bits);
    if (a >= 448.0f) {
        return sign | 0x7e;
    }
    if (a < 0.015625f) {
        // Subnormal range (below 2^-6): multiples of 2^-9. a * 512 is exact; round half to even.
        const float x = a * 512.0f;
        uint32_t q = static_cast<uint32_t>(x);  // floor (x >= 0)
        const float rem = x - static_cast<float>(q);
        if (rem > 0.5f || (rem == 0.5f && (q & 1u))) ++q;
        return sign | static_cast<uint8_t>(q);  // q == 8 is exactly the smallest normal, code 0x08
    }
    // Normal: keep 3 mantissa bits of the float, round half to even on the 20 dropped bits (a carry
    // moves into the exponent, which is the right result).
    uint32_t r = abs_bits + 0x7ffffu + ((abs_bits >> 20) & 1u);
    r &= ~0xfffffu;
    const int32_t e = static_cast<int32_t>(r >> 23) - 127;  // in [-6, 8]
    const uint32_t m = (r >> 20) & 7u;
    const uint32_t code = (static_cast<uint32_t>(e + 7) << 3) | m;
    return sign | static_cast<uint8_t>(code > 0x7eu ? 0x7eu : code);
}

// Block scale of element (r, c) of an FP8 view (DeepSeek weight_scale_inv: a multiplier).
DS_HD float weight_scale(const DevWeight& w, int64_t r, int64_t c) {
    return w.scale[((w.row_offset + r) / w.block_rows) * w.scale_ld + (w.col_offset + c) / w.block_cols];
}

// Exactly WeightView::at(r, c).
DS_HD float weight_at(const DevWeight& w, int64_t r, int64_t c) {
    const int64_t i = r * w.ld + c;
    switch (w.dtype) {
        case DevDType::kF32:
            return static_cast<const float*>(w.data)[i];
        case DevDType::kBF16:
            return decode_bf16(static_cast<const uint16_t*>(w.data)[i]);
        case DevDType::kF16:
            return decode_f16(static_cast<const uint16_t*>(w.data)[i]);
        case DevDType::kF8E4M3:
            return decode_e4m3(static_cast<const uint8_t*>(w.data)[i]) * weight_scale(w, r, c);
    }
    return 0.0f;
}

// ---- MoE routing (MODEL_SPEC §2 "MoE", same decisions as kernels::moe_route (kernels/cpu/moe_ops.cc)) ----

inline constexpr int kMaxRouteGroups = 64;   // n_group limit of the GPU gate (DeepSeek-V3: 8)
inline constexpr int kMaxRouteTopK = 32;     // num_experts_per_tok limit (DeepSeek-V3: 8)

// Shared with the CPU twin kernels::moe_route (kernels/moe.h).
using RouteParams = ::deepshard::kernels::RouteParams;

DS_HD float sigmoid_ref(float x) {
#if defined(__CUDA_ARCH__)
    return 1.0f / (1.0f + expf(-x));
#else
    return 1.0f / (1.0f + std::exp(-x));
#endif
}

DS_HD float exp_ref(float x) {
#if defined(__CUDA_ARCH__)
    return expf(x);
#else
    return std::exp(x);
#endif
}

// "a ranks before b": larger value first, lower index on ties; an empty slot (idx < 0) ranks last.
// NaN values never rank before anything (they are treated as unselectable).
DS_HD bool ranks_before(float va, int32_t ia, float vb, int32_t ib) {
    if (ia < 0 || va != va) {
        return false;
    }
    if (ib < 0 || vb != vb) {
        return true;
    }
    return va > vb || (va == vb && ia < ib);
}

// Routes one token: `logits` [E] router outputs, `bias` [E] e_score_correction_bias or nullptr.
// Writes top_k expert ids (selection order) and their weights. Scores are recomputed from the logits
// instead of being stored, so one GPU thread needs only O(n_group + top_k) registers/local memory;
// the arithmetic per score is the same expression as the CPU twin, so results agree bit for bit on
// the host and up to the device expf's last bit on the GPU.
// Preconditions (checked by the launcher): E % n_group == 0, 1 <= topk_group <= n_group <= kMaxRouteGroups,
// 1 <= top_k <= min(kMaxRouteTopK, topk_group * E / n_group).
DS_HD void route_token(const RouteParams& p, const float* logits, const float* bias, int32_t* out_experts,
                       float* out_weights) {
    const int32_t E = p.num_experts;
    float mx = 0.0f, sum = 1.0f;
    if (p.softmax) {
        mx = logits[0];
        for (int32_t e = 1; e < E; ++e) mx = logits[e] > mx ? logits[e] : mx;
        sum = 0.0f;
        for (int32_t e = 0; e < E; ++e) sum += exp_ref(logits[e] - mx);
    }
    auto score = [&](int32_t e) { return p.softmax ? exp_ref(logits[e] - mx) / sum : sigmoid_ref(logits[e]); };
    auto biased = [&](int32_t e) { return score(e) + (bias != nullptr ? bias[e] : 0.0f); };

    // Group limit: keep the topk_group groups with the best group score (top-2 sum with a bias, max without).
    uint64_t keep = ~uint64_t{0};
    const int32_t G = p.n_group;
    if (G > 1) {
        const int32_t per_group = E / G;
        float gs[kMaxRouteGroups];
        for (int32_t g = 0; g < G; ++g) {
            float m1 = -INFINITY, m2 = -INFINITY;
            for (int32_t j = 0; j < per_group; ++j) {
                const float v = biased(g * per_group + j);
                if (v > m1) {
                    m2 = m1;
                    m1 = v;
                } else if (v > m2) {
                    m2 = v;
                }
            }
            gs[g] = (bias != nullptr && per_group >= 2) ? m1 + m2 : m1;
        }
        keep = 0;
        for (int32_t k = 0; k < p.topk_group; ++k) {
            int32_t best = -1;
            for (int32_t g = 0; g < G; ++g) {
                if (!((keep >> g) & 1u) && ranks_before(gs[g], g, best < 0 ? 0.0f : gs[best], best)) {
                    best = g;
                }
            }
            if (best >= 0) {
                keep |= uint64_t{1} << best;
            }
        }
    }
    const int32_t per_group = E / (G > 0 ? G : 1);

    // Top-k over the biased scores of the kept groups (masked experts count as -inf, as on the CPU).
    float wsum = 0.0f;
    for (int32_t k = 0; k < p.top_k; ++k) {
        int32_t best = -1;
        float best_v = 0.0f;
        for (int32_t e = 0; e < E; ++e) {
            bool taken = false;
            for (int32_t j = 0; j < k; ++j) taken = taken || out_experts[j] == e;
            if (taken) {
                continue;
            }
            const float v = ((keep >> (e / per_group)) & 1u) ? biased(e) : -INFINITY;
            if (ranks_before(v, e, best_v, best)) {
                best = e;
                best_v = v;
            }
        }
        out_experts[k] = best;
        out_weights[k] = best >= 0 ? score(best) : 0.0f;
        wsum += out_weights[k];
    }
    const bool normalize = !p.softmax && p.norm_topk_prob;
    for (int32_t k = 0; k < p.top_k; ++k) {
        if (normalize) out_weights[k] /= wsum;
        out_weights[k] *= p.routed_scaling_factor;
    }
}

}  // namespace deepshard::kernels::cuda
