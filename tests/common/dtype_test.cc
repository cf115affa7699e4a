#include "common/dtype.h"

#include <gtest/gtest.h>

#include <cmath>

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
