// The fast numerics mode of the matmul kernels and the batched entry points:
//  - on AVX512-BF16, fast equals a double reference over BF16(x) * BF16(W) (RNE of the exact
//    dequantized weight) up to float32 summation order, for every dtype, shape, slice and batch size,
//    on both the direct (decode) and the blocked GEMM (prefill) path, and the same again on AMX
//    (whose GEMM runs on tiles, and 9-16 rows on tiles with W as the A operand) where the CPU has it;
//  - on every other ISA fast is bit-identical to exact (there is no reduced-precision path there);
//  - FP8 scales >= 2^8 (where scale * 2^120 would overflow) still decode exactly;
//  - fast FP8's lookup tables give exactly BF16 of the dequantized weights (bit-equal to a BF16
//    matrix of those values);
//  - matmul_batch equals one matmul per job bit for bit, swiglu equals silu(x W1^T) * (x W3^T).
#include <gtest/gtest.h>

#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <string>

#include "kernels/kernels.h"
#include "tests/kernels/kernel_test_util.h"

namespace deepshard::kernels {
namespace {

using testing::IsaGuard;
using testing::random_vec;
using testing::runnable_isas;
using testing::TestWeight;

float bf16_round(float v) { return bf16_to_f32(f32_to_bf16(v)); }

// matmul in fast mode against sum_k BF16(x) * BF16(W) in double.
void check_fast(const WeightView& w, int64_t m, bool accumulate, const std::string& what) {
    const int64_t k = w.cols, n = w.rows, ldx = k + 5, ldy = n + 3;
    const std::vector<float> x = random_vec(m * ldx, static_cast<uint32_t>(m * 11 + k));
    std::vector<float> y = random_vec(m * ldy, 5);
    const std::vector<float> y0 = y;
    matmul(x.data(), m, ldx, w, y.data(), ldy, accumulate, Numerics::kFast);
    std::vector<double> wd(n * k);
    for (int64_t j = 0; j < n; ++j) {
        for (int64_t c = 0; c < k; ++c) wd[j * k + c] = w.dtype == DType::kF32 ? w.at(j, c) : bf16_round(w.at(j, c));
    }
    int64_t bad = 0;
    for (int64_t i = 0; i < m; ++i) {
        for (int64_t j = 0; j < n; ++j) {
            double ref = accumulate ? y0[i * ldy + j] : 0.0, mag = std::abs(ref);
            for (int64_t c = 0; c < k; ++c) {
                const double xv = w.dtype == DType::kF32 ? x[i * ldx + c] : bf16_round(x[i * ldx + c]);
                ref += xv * wd[j * k + c];
                mag += std::abs(xv * wd[j * k + c]);
            }
            const double got = y[i * ldy + j];
            if (!(std::abs(got - ref) <= 1e-5 * mag + 1e-30) && bad++ < 5) {
                ADD_FAILURE() << what << " m=" << m << " y[" << i << "," << j << "]=" << got << " ref=" << ref;
            }
        }
    }
    EXPECT_EQ(bad, 0) << what << " m=" << m;
}

class MatmulFastTest : public ::testing::TestWithParam<DType> {};

TEST_P(MatmulFastTest, Bf16PathMatchesRoundedReference) {
    if (static_cast<int>(detected_isa()) < static_cast<int>(Isa::kAvx512Bf16)) {
        GTEST_SKIP() << "this CPU has no AVX512-BF16 (detected " << isa_name(detected_isa())
                     << "): fast == exact, covered by FastIsExactElsewhere";
    }
    IsaGuard guard;
    for (Isa isa : runnable_isas()) {
        if (static_cast<int>(isa) < static_cast<int>(Isa::kAvx512Bf16)) continue;
        set_isa(isa);  // vdpbf16ps, then (where the CPU has it) AMX for the GEMM-sized m
        ASSERT_FALSE(fast_is_exact()) << isa_name(isa);
        TestWeight tw(GetParam(), 448, 704, 21);
        const WeightView full = tw.view();
        struct Slice {
            int64_t r0, nr, c0, nc;
        };
        const Slice slices[] = {{0, 448, 0, 704}, {0, 200, 128, 256}, {131, 200, 65, 511}, {5, 70, 17, 600}, {300, 33, 703, 1}};
        for (const Slice& s : slices) {
            const WeightView v = full.slice_rows(s.r0, s.nr).slice_cols(s.c0, s.nc);
            for (int64_t m : {1, 2, 3, 8, 16, 17, 32, 40, 67}) {
                check_fast(v, m, m % 2 == 1, std::string(isa_name(isa)) + " " + dtype_name(GetParam()) +
                                                 " slice r0=" + std::to_string(s.r0) + " c0=" + std::to_string(s.c0));
            }
        }
        // k > 512: the GEMM blocks over k and accumulates partial sums across blocks; so does the AMX
        // path of 9-16 rows past 1024 columns (m = 12).
        TestWeight lw(GetParam(), 70, 1300, 22);
        for (int64_t m : {1, 12, 20, 48}) check_fast(lw.view().slice_cols(3, 1290), m, false, std::string(isa_name(isa)) + " long rows");
    }
}

TEST(MatmulAmx, UsedWhereTheCpuAndKernelAllowIt) {
    // The dispatcher must take AMX wherever this process may use it: cpuid has AMX-TILE and
    // AMX-BF16 and the kernel grants the tile data state.
    // Where the kernel refused (Linux < 5.16, a seccomp filter) the engine runs avx512bf16: a skip
    // that names why, not a failure.
    const Isa isa = detected_isa();
    if (static_cast<int>(isa) < static_cast<int>(Isa::kAvx512Bf16)) {
        GTEST_SKIP() << "no AVX512-BF16 here (detected " << isa_name(isa) << ")";
    }
    unsigned a = 0, b = 0, c = 0, d = 0;
    const bool cpu_has_amx = __get_cpuid_count(7, 0, &a, &b, &c, &d) && ((d >> 24) & 1u) && ((d >> 22) & 1u);
    if (!cpu_has_amx) GTEST_SKIP() << "this CPU has no AMX (detected " << isa_name(isa) << ")";
    // Asked here too (idempotent), so a dispatcher that never asked still fails below.
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    const bool granted = syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
    if (!granted) GTEST_SKIP() << "the CPU has AMX but the kernel did not grant this process the tile state";
    EXPECT_EQ(isa, Isa::kAmx) << isa_name(isa);
}

TEST_P(MatmulFastTest, FastIsExactElsewhere) {
    IsaGuard guard;
    TestWeight tw(GetParam(), 160, 300, 23);
    for (Isa isa : runnable_isas()) {
        if (static_cast<int>(isa) >= static_cast<int>(Isa::kAvx512Bf16)) continue;
        set_isa(isa);
        EXPECT_TRUE(fast_is_exact()) << isa_name(isa);
        for (int64_t m : {1, 5, 40}) {
            const std::vector<float> x = random_vec(m * 300, 3);
            std::vector<float> ye(m * 160), yf(m * 160);
            matmul(x.data(), m, 300, tw.view(), ye.data(), 160, false, Numerics::kExact);
            matmul(x.data(), m, 300, tw.view(), yf.data(), 160, false, Numerics::kFast);
            ASSERT_EQ(0, std::memcmp(ye.data(), yf.data(), ye.size() * sizeof(float))) << isa_name(isa) << " m=" << m;
        }
    }
}

INSTANTIATE_TEST_SUITE_P(AllDtypes, MatmulFastTest,
                         ::testing::Values(DType::kF8E4M3, DType::kBF16, DType::kF16, DType::kF32),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

// Scales >= 2^8 make scale * 2^120 overflow; those tiles take the two-multiply decode.
TEST(MatmulFp8, LargeScalesDecodeExactly) {
    IsaGuard guard;
    TestWeight tw(DType::kF8E4M3, 300, 270, 31);
    for (size_t i = 0; i < tw.scale.size(); ++i) tw.scale[i] = i % 2 ? 3000.0f : 1e-3f;
    const WeightView v = tw.view();
    for (Isa isa : runnable_isas()) {
        set_isa(isa);
        for (int64_t c : {0, 5, 129, 269}) {
            std::vector<float> x(v.cols, 0.0f), y(v.rows);
            x[c] = 1.0f;
            matmul(x.data(), 1, v.cols, v, y.data(), v.rows);
            for (int64_t j = 0; j < v.rows; ++j) ASSERT_EQ(y[j], v.at(j, c)) << isa_name(isa) << " j=" << j;
        }
        std::vector<float> row(v.cols);
        for (int32_t r : {0, 128, 299}) {
            gather_rows(v, &r, 1, row.data(), v.cols);
            for (int64_t c = 0; c < v.cols; ++c) ASSERT_EQ(row[c], v.at(r, c)) << isa_name(isa);
        }
        // And through the GEMM panel.
        const int64_t m = 20;
        std::vector<float> x(m * v.cols, 0.0f), y(m * v.rows);
        for (int64_t i = 0; i < m; ++i) x[i * v.cols + (i * 13) % v.cols] = 1.0f;
        matmul(x.data(), m, v.cols, v, y.data(), v.rows);
        for (int64_t i = 0; i < m; ++i) {
            for (int64_t j = 0; j < v.rows; ++j) ASSERT_EQ(y[i * v.rows + j], v.at(j, (i * 13) % v.cols)) << isa_name(isa);
        }
    }
}

// Fast FP8 decodes through per-block lookup tables (simd_fp8_lut.inc); they must give exactly the
// BF16 weights BF16(e4m3(q) * scale) of the arithmetic decode. A BF16 matrix holding those values
// runs the same dot products in the same order wherever the FP8 scale blocks start on a 32-column
// boundary, so the two results must be equal bit for bit: on the decode tiles (table and, for
// tiles across two row bands, arithmetic), on the GEMM panels, with scales below and above 2^8.
TEST(MatmulFp8, FastTablesGiveTheBf16OfTheDequantizedWeights) {
    if (static_cast<int>(detected_isa()) < static_cast<int>(Isa::kAvx512Bf16)) {
        GTEST_SKIP() << "this CPU has no AVX512-BF16 (detected " << isa_name(detected_isa()) << "): no FP8 tables";
    }
    IsaGuard guard;
    for (bool big : {false, true}) {
        TestWeight f8(DType::kF8E4M3, 448, 704, big ? 52 : 51);
        if (big) {
            for (size_t i = 0; i < f8.scale.size(); ++i) f8.scale[i] = i % 3 ? 3000.0f : 2e-3f;
        }
        TestWeight b16(DType::kBF16, 448, 704, 1);
        for (int64_t r = 0; r < 448; ++r) {
            for (int64_t c = 0; c < 704; ++c) {
                reinterpret_cast<uint16_t*>(b16.bytes.data())[r * 704 + c] = f32_to_bf16(f8.view().at(r, c));
            }
        }
        for (Isa isa : runnable_isas()) {
            if (static_cast<int>(isa) < static_cast<int>(Isa::kAvx512Bf16)) continue;
            set_isa(isa);
            struct Slice {
                int64_t r0, nr, c0, nc;
            };
            for (const Slice& sl : {Slice{0, 448, 0, 704}, Slice{120, 200, 128, 512}, Slice{5, 77, 256, 448}}) {
                const WeightView vf = f8.view().slice_rows(sl.r0, sl.nr).slice_cols(sl.c0, sl.nc);
                const WeightView vb = b16.view().slice_rows(sl.r0, sl.nr).slice_cols(sl.c0, sl.nc);
                for (int64_t m : {1, 2, 3, 5, 8, 9, 16, 17, 40}) {
                    const std::vector<float> x = random_vec(m * sl.nc, static_cast<uint32_t>(m + sl.r0));
                    std::vector<float> yf(m * sl.nr), yb(m * sl.nr);
                    matmul(x.data(), m, sl.nc, vf, yf.data(), sl.nr, false, Numerics::kFast);
                    matmul(x.data(), m, sl.nc, vb, yb.data(), sl.nr, false, Numerics::kFast);
                    ASSERT_EQ(0, std::memcmp(yf.data(), yb.data(), yf.size() * sizeof(float)))
                        << isa_name(isa) << (big ? " big scales" : "") << " m=" << m << " r0=" << sl.r0 << " c0=" << sl.c0;
                }
            }
        }
    }
}

TEST(MatmulBatch, EqualsOneMatmulPerJob) {
    IsaGuard guard;
    TestWeight a(DType::kF8E4M3, 256, 512, 41), b(DType::kBF16, 100, 512, 42), c(DType::kF8E4M3, 512, 96, 43);
    for (Isa isa : runnable_isas()) {
        set_isa(isa);
        for (Numerics num : {Numerics::kExact, Numerics::kFast}) {
            for (int64_t m : {1, 3, 24}) {
                const std::vector<float> x = random_vec(m * 512, 7), x2 = random_vec(m * 96, 8);
                const WeightView va = a.view(), vb = b.view().slice_rows(10, 90), vc = c.view();
                std::vector<float> ya(m * 256), yb(m * 90), yc(m * 512, 1.0f);
                const MatmulJob jobs[] = {{x.data(), m, 512, &va, ya.data(), 256, false},
                                          {x.data(), m, 512, &vb, yb.data(), 90, false},
                                          {x2.data(), m, 96, &vc, yc.data(), 512, true}};
                matmul_batch(jobs, num);
                std::vector<float> ra(m * 256), rb(m * 90), rc(m * 512, 1.0f);
                matmul(x.data(), m, 512, va, ra.data(), 256, false, num);
                matmul(x.data(), m, 512, vb, rb.data(), 90, false, num);
                matmul(x2.data(), m, 96, vc, rc.data(), 512, true, num);
                const std::string what = std::string(isa_name(isa)) + " " + numerics_name(num) + " m=" + std::to_string(m);
                EXPECT_EQ(0, std::memcmp(ya.data(), ra.data(), ra.size() * 4)) << what;
                EXPECT_EQ(0, std::memcmp(yb.data(), rb.data(), rb.size() * 4)) << what;
                EXPECT_EQ(0, std::memcmp(yc.data(), rc.data(), rc.size() * 4)) << what;
            }
        }
    }
}

TEST(Swiglu, EqualsSiluOfGateTimesUp) {
    IsaGuard guard;
    TestWeight w1(DType::kF8E4M3, 384, 256, 51), w3(DType::kF8E4M3, 384, 256, 52);
    TestWeight b1(DType::kBF16, 200, 130, 53), b3(DType::kBF16, 200, 130, 54);
    for (Isa isa : runnable_isas()) {
        set_isa(isa);
        for (Numerics num : {Numerics::kExact, Numerics::kFast}) {
            for (int64_t m : {1, 6, 30}) {
                const std::vector<float> x = random_vec(m * 256, 9), xb = random_vec(m * 130, 10);
                const WeightView v1 = w1.view(), v3 = w3.view(), c1 = b1.view(), c3 = b3.view();
                const int64_t ldo = 400;
                std::vector<float> out(m * ldo, -1.0f), outb(m * 200);
                const SwigluJob jobs[] = {{x.data(), m, 256, &v1, &v3, out.data(), ldo},
                                          {xb.data(), m, 130, &c1, &c3, outb.data(), 200}};
                swiglu_batch(jobs, num);
                std::vector<float> g(m * 384), u(m * 384), gb(m * 200), ub(m * 200);
                matmul(x.data(), m, 256, v1, g.data(), 384, false, num);
                matmul(x.data(), m, 256, v3, u.data(), 384, false, num);
                matmul(xb.data(), m, 130, c1, gb.data(), 200, false, num);
                matmul(xb.data(), m, 130, c3, ub.data(), 200, false, num);
                const std::string what = std::string(isa_name(isa)) + " " + numerics_name(num) + " m=" + std::to_string(m);
                for (int64_t i = 0; i < m; ++i) {
                    for (int64_t j = 0; j < 384; ++j) {
                        const double gd = g[i * 384 + j], ref = gd / (1.0 + std::exp(-gd)) * u[i * 384 + j];
                        ASSERT_NEAR(out[i * ldo + j], ref, 2e-6 * std::abs(ref) + 1e-30) << what;
                    }
                    ASSERT_EQ(out[i * ldo + 384], -1.0f) << what << ": wrote past the output width";
                    for (int64_t j = 0; j < 200; ++j) {
                        const double gd = gb[i * 200 + j], ref = gd / (1.0 + std::exp(-gd)) * ub[i * 200 + j];
                        ASSERT_NEAR(outb[i * 200 + j], ref, 2e-6 * std::abs(ref) + 1e-30) << what;
                    }
                }
            }
        }
    }
}

TEST(Numerics, NamesParse) {
    Numerics n = Numerics::kExact;
    EXPECT_TRUE(parse_numerics("fast", &n));
    EXPECT_EQ(n, Numerics::kFast);
    EXPECT_TRUE(parse_numerics("exact", &n));
    EXPECT_EQ(n, Numerics::kExact);
    EXPECT_FALSE(parse_numerics("bf16", &n));
    EXPECT_STREQ(numerics_name(Numerics::kFast), "fast");
    EXPECT_STREQ(numerics_name(Numerics::kExact), "exact");
}

}  // namespace
}  // namespace deepshard::kernels
