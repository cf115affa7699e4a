#include "common/dtype.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

namespace deepshard {
namespace {

TEST(DTypeTest, E4M3DecodesEveryCodeAndRoundTrips) {
    EXPECT_EQ(e4m3_to_f32(0x7e), 448.0f);
    EXPECT_EQ(e4m3_to_f32(0xfe), -448.0f);
    EXPECT_EQ(e4m3_to_f32(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
    EXPECT_EQ(e4m3_to_f32(0x08), std::ldexp(1.0f, -6));  // smallest normal
    EXPECT_EQ(e4m3_to_f32(0x38), 1.0f);
    EXPECT_TRUE(std::isnan(e4m3_to_f32(0x7f)));
    EXPECT_TRUE(std::isnan(e4m3_to_f32(0xff)));
    for (int c = 0; c < 256; ++c) {
        if ((c & 0x7f) == 0x7f) continue;
        float v = e4m3_to_f32(static_cast<uint8_t>(c));
        uint8_t back = f32_to_e4m3(v);
        if (c == 0x80) {
            EXPECT_EQ(back, 0x80);  // -0 keeps its sign
        } else {
            EXPECT_EQ(back, c) << "code " << c;
        }
    }
}

TEST(DTypeTest, E4M3EncodeRoundsToNearestEvenAndSaturates) {
    // 1.0 (0x38) and 1.125 (0x39): the midpoint ties to the even code 0x38.
    EXPECT_EQ(f32_to_e4m3(1.0625f), 0x38);
    EXPECT_EQ(f32_to_e4m3(1.07f), 0x39);
    // 1.125 (0x39) and 1.25 (0x3a): the midpoint 1.1875 ties to even 0x3a.
    EXPECT_EQ(f32_to_e4m3(1.1875f), 0x3a);
    EXPECT_EQ(f32_to_e4m3(1e6f), 0x7e);
    EXPECT_EQ(f32_to_e4m3(-1e6f), 0xfe);
}

// The encoder against its definition: the nearest code by value, ties to the even code, found by
// search over the 127 positive codes. Every float32 within 8 ulps of a code or of a midpoint
// between neighbours (where rounding decides), both signs, plus a sweep of the whole range.
TEST(DTypeTest, E4M3EncodeIsTheNearestCodeTiesToEven) {
    auto reference = [](float f) -> uint8_t {
        const uint8_t sign = std::signbit(f) ? 0x80 : 0;
        const float a = std::fabs(f);
        if (a >= 448.0f) return sign | 0x7e;
        int best = 0;
        for (int c = 1; c <= 0x7e; ++c) {
            const float dc = std::fabs(e4m3_to_f32(static_cast<uint8_t>(c)) - a);
            const float db = std::fabs(e4m3_to_f32(static_cast<uint8_t>(best)) - a);
            if (dc < db || (dc == db && (c & 1) == 0)) best = c;
        }
        return sign | static_cast<uint8_t>(best);
    };
    std::vector<float> probes;
    for (int c = 0; c <= 0x7e; ++c) {
        const float v = e4m3_to_f32(static_cast<uint8_t>(c));
        const float next = c < 0x7e ? e4m3_to_f32(static_cast<uint8_t>(c + 1)) : 464.0f;
        for (float centre : {v, (v + next) / 2}) {
            float x = centre;
            for (int i = 0; i < 8; ++i) x = std::nextafter(x, 0.0f);
            for (int i = 0; i < 17; ++i, x = std::nextafter(x, 1e9f)) probes.push_back(x);
        }
    }
    for (float x = 1e-12f; x < 500.0f; x *= 1.0007f) probes.push_back(x);
    int64_t bad = 0;
    for (float p : probes) {
        for (float v : {p, -p}) {
            if (f32_to_e4m3(v) != reference(v) && bad++ < 5) {
                ADD_FAILURE() << "value " << v << ": got 0x" << std::hex << int(f32_to_e4m3(v)) << " want 0x"
                              << int(reference(v));
            }
        }
    }
    EXPECT_EQ(bad, 0) << probes.size() << " probes";
    EXPECT_EQ(f32_to_e4m3(0.0f), 0x00);
    EXPECT_EQ(f32_to_e4m3(-0.0f), 0x80);
    EXPECT_EQ(f32_to_e4m3(std::nanf("")), 0x7f);
}

TEST(DTypeTest, Bf16AndF16) {
    EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f)), 1.0f);
    // 1 + 2^-8 is halfway between bf16 1.0 and 1.0078125: ties to even (1.0).
    EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + std::ldexp(1.0f, -8))), 1.0f);
    EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8))), 1.015625f);
    EXPECT_EQ(f16_to_f32(f32_to_f16(0.333251953125f)), 0.333251953125f);
    EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
    EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
    EXPECT_EQ(*dtype_from_name("F8_E4M3"), DType::kF8E4M3);
    EXPECT_FALSE(dtype_from_name("F8_E5M2").has_value());
}

}  // namespace
}  // namespace deepshard
