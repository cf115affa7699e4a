// gather_rows, rmsnorm and silu_mul against direct double-precision formulas, on every ISA.
#include <gtest/gtest.h>

#include <cmath>

#include "kernels/kernels.h"
#include "tests/kernels/kernel_test_util.h"

namespace deepshard::kernels {
namespace {

using testing::IsaGuard;
using testing::random_vec;
using testing::runnable_isas;
using testing::TestWeight;

TEST(GatherRows, ExactForEveryDtypeAndSlice) {
    IsaGuard guard;
    for (Isa isa : runnable_isas()) {
        set_isa(isa);
        for (DType t : {DType::kF8E4M3, DType::kBF16, DType::kF16, DType::kF32}) {
            TestWeight tw(t, 300, 333, 11);
            const WeightView v = tw.view().slice_rows(40, 250).slice_cols(70, 263);
            const std::vector<int32_t> rows = {0, 249, 88, 87, 128, 3, 3};
            const int64_t ldo = v.cols + 2;
            std::vector<float> out(rows.size() * ldo, -7.0f);
            gather_rows(v, rows.data(), static_cast<int64_t>(rows.size()), out.data(), ldo);
            for (size_t i = 0; i < rows.size(); ++i) {
                for (int64_t c = 0; c < v.cols; ++c) {
                    ASSERT_EQ(out[i * ldo + c], v.at(rows[i], c)) << isa_name(isa) << " " << dtype_name(t);
                }
                EXPECT_EQ(out[i * ldo + v.cols], -7.0f);
            }
        }
    }
}

TEST(Rmsnorm, MatchesFormulaInPlaceAndStrided) {
    IsaGuard guard;
    for (Isa isa : runnable_isas()) {
        set_isa(isa);
        for (int64_t n : {1, 7, 16, 33, 512, 7168}) {
            const int64_t m = 5, ld = n + 4;
            std::vector<float> x = random_vec(m * ld, static_cast<uint32_t>(n));
            const std::vector<float> w = random_vec(n, 5);
            const std::vector<float> x0 = x;
            rmsnorm(x.data(), m, n, ld, w.data(), 1e-6f, x.data(), ld);  // in place
            for (int64_t i = 0; i < m; ++i) {
                double ss = 0;
                for (int64_t c = 0; c < n; ++c) ss += double(x0[i * ld + c]) * x0[i * ld + c];
                const double inv = 1.0 / std::sqrt(ss / n + 1e-6);
                for (int64_t c = 0; c < n; ++c) {
                    const double ref = x0[i * ld + c] * inv * w[c];
                    ASSERT_NEAR(x[i * ld + c], ref, 1e-5 * (std::abs(ref) + 1e-3)) << isa_name(isa) << " n=" << n;
                }
            }
        }
    }
}

TEST(SiluMul, MatchesFormula) {
    IsaGuard guard;
    for (Isa isa : runnable_isas()) {
        set_isa(isa);
        for (int64_t n : {1, 15, 16, 17, 1000, 100000}) {
            std::vector<float> g = random_vec(n, 1), u = random_vec(n, 2), out(n);
            g[0] = n > 3 ? -90.0f : g[0];  // exp overflow side
            if (n > 3) g[1] = 90.0f;
            silu_mul(g.data(), u.data(), n, out.data());
            for (int64_t i = 0; i < n; ++i) {
                const double gd = g[i];
                const double ref = gd / (1.0 + std::exp(-gd)) * u[i];
                ASSERT_NEAR(out[i], ref, 2e-6 * std::abs(ref) + 1e-30) << isa_name(isa) << " i=" << i;
            }
        }
    }
}

}  // namespace
}  // namespace deepshard::kernels
