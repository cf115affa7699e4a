#include "common/dtype.h"

#include <cmath>
#include <cstring>

namespace deepshard {

const char* dtype_name(DType t) {
    switch (t) {
        case DType::kF32:
            return "F32";
        case DType::kBF16:
            return "BF16";
        case DType::kF16:
            return "F16";
        case DType::kF8E4M3:
            return "F8_E4M3";
        case DType::kI32:
            return "I32";
        case DType::kI64:
            return "I64";
        case DType::kU8:
            return "U8";
    }
    return "?";
}

std::optional<DType> dtype_from_name(std::string_view name) {
    if (name == "F32") return DType::kF32;
    if (name == "BF16") return DType::kBF16;
    if (name == "F16") return DType::kF16;
    if (name == "F8_E4M3") return DType::kF8E4M3;
    if (name == "I32") return DType::kI32;
    if (name == "I64") return DType::kI64;
    if (name == "U8") return DType::kU8;
    return std::nullopt;
}

float f16_to_f32(uint16_t h) {
    const uint32_t sign = (h >> 15) & 1;
    const int exp = (h >> 10) & 0x1f;
    const uint32_t man = h & 0x3ff;
    float v;
    if (exp == 0) {
        v = std::ldexp(static_cast<float>(man), -24);
    } else if (exp == 31) {
        v = man ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
    } else {
        v = std::ldexp(static_cast<float>(man | 0x400), exp - 25);
    }
    return sign ? -v : v;
}

uint16_t f32_to_f16(float f) {
    // Via the largest representable neighbours: exact RNE by comparison on a decoded grid.
    if (std::isnan(f)) return 0x7e00;
    const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
    float a = std::fabs(f);
    if (a >= 65520.0f) return sign | 0x7c00;
    // Binary search over the 0x7c00 positive codes (monotonic in value).
    uint16_t lo = 0, hi = 0x7bff;
    while (lo < hi) {
        uint16_t mid = static_cast<uint16_t>((lo + hi + 1) / 2);
        if (f16_to_f32(mid) <= a) lo = mid; else hi = static_cast<uint16_t>(mid - 1);
    }
    uint16_t best = lo;
    if (lo < 0x7bff) {
        float dl = a - f16_to_f32(lo), dh = f16_to_f32(static_cast<uint16_t>(lo + 1)) - a;
        if (dh < dl || (dh == dl && (lo & 1))) best = static_cast<uint16_t>(lo + 1);
    }
    return sign | best;
}

uint8_t f32_to_e4m3(float f) {
    if (std::isnan(f)) return 0x7f;
    const uint8_t sign = std::signbit(f) ? 0x80 : 0;
    const float a = std::fabs(f);
    if (a >= 448.0f) return sign | 0x7e;
    // By bit arithmetic (this runs once per weight when a model is made or a head requantized; a
    // search over the codes took ~1 s per 100 M weights). Below 2^-6 the codes are the multiples
    // of 2^-9: a * 2^9 is exact and nearbyint rounds half to even (the default rounding mode).
    if (a < 0x1p-6f) return sign | static_cast<uint8_t>(std::nearbyint(a * 512.0f));
    // Normal: drop 20 of float32's 23 mantissa bits with round-half-even on exponent|mantissa (a
    // carry moves into the exponent, as it should), then rebias the exponent from 127 to 7.
    uint32_t u;
    std::memcpy(&u, &a, sizeof(u));
    const uint32_t r = (u + 0x7FFFFu + ((u >> 20) & 1u)) >> 20;
    return sign | static_cast<uint8_t>(r - (120u << 3));
}

}  // namespace deepshard
