// Element types of checkpoints and their exact conversions to float32.
// e4m3fn (the DeepSeek-V3 FP8 format): sign bit 7, exponent bits 6-3 with bias 7, mantissa bits
// 2-0; exponent 0 is subnormal (m * 2^-9); 0x7F/0xFF are NaN; no infinity; max +-448.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

namespace deepshard {

enum class DType : uint8_t { kF32, kBF16, kF16, kF8E4M3, kI32, kI64, kU8 };

// Size in bytes of one element.
constexpr size_t dtype_size(DType t) {
    switch (t) {
        case DType::kF32:
        case DType::kI32:
            return 4;
        case DType::kBF16:
        case DType::kF16:
            return 2;
        case DType::kF8E4M3:
        case DType::kU8:
            return 1;
        case DType::kI64:
            return 8;
    }
    return 0;
}

// safetensors names ("F32", "BF16", "F16", "F8_E4M3", "I32", "I64", "U8").
const char* dtype_name(DType t);
std::optional<DType> dtype_from_name(std::string_view name);

inline float bf16_to_f32(uint16_t v) {
    uint32_t bits = static_cast<uint32_t>(v) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

// Round-to-nearest-even; NaN stays NaN.
inline uint16_t f32_to_bf16(float f) {
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u) {
        return static_cast<uint16_t>((bits >> 16) | 0x40);
    }
    uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
    return static_cast<uint16_t>((bits + rounding) >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// Exact decode of every e4m3fn code.
constexpr float e4m3_decode_scalar(uint8_t code) {
    const int sign = (code >> 7) & 1;
    const int exp = (code >> 3) & 0xf;
    const int man = code & 7;
    float v = 0.0f;
    if (exp == 15 && man == 7) {
        return std::numeric_limits<float>::quiet_NaN();
    }
    if (exp == 0) {
        v = static_cast<float>(man) / 512.0f;  // m * 2^-9
    } else {
        float p = 1.0f;
        int e = exp - 7;
        for (; e > 0; --e) p *= 2.0f;
        for (; e < 0; ++e) p /= 2.0f;
        v = (1.0f + static_cast<float>(man) / 8.0f) * p;
    }
    return sign ? -v : v;
}

// 256-entry lookup table, built once at compile time.
struct E4M3Table {
    std::array<float, 256> v{};
    constexpr E4M3Table() {
        for (int i = 0; i < 256; ++i) v[i] = e4m3_decode_scalar(static_cast<uint8_t>(i));
    }
};
inline constexpr E4M3Table kE4M3Table{};
inline float e4m3_to_f32(uint8_t code) {
    return kE4M3Table.v[code];
}

// Round-to-nearest-even encode, saturating at +-448 (the behaviour of torch's float8_e4m3fn cast
// after clamping, which is how the DeepSeek release was quantized). NaN maps to 0x7F.
uint8_t f32_to_e4m3(float f);

}  // namespace deepshard
