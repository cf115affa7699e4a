// matmul against a double-precision reference over WeightView::at, for every dtype, every ISA the
// CPU runs, ragged shapes, row/column slices with scale-grid offsets, several batch sizes and the
// accumulate flag. Tolerance: 1e-5 relative to sum_k |x||w| (fp32 summation-order differences only).
#include <gtest/gtest.h>

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

// Runs matmul on `w` with m rows (x stride ldx = k + 3, y stride n + 5) and checks every output.
void check_matmul(const WeightView& w, int64_t m, bool accumulate, const std::string& what) {
    const int64_t k = w.cols, n = w.rows, ldx = k + 3, ldy = n + 5;
    std::vector<float> x = random_vec(m * ldx, static_cast<uint32_t>(m * 7 + k));
    std::vector<float> y = random_vec(m * ldy, 99);
    const std::vector<float> y0 = y;
    matmul(x.data(), m, ldx, w, y.data(), ldy, accumulate);
    std::vector<double> wd(n * k);
    for (int64_t j = 0; j < n; ++j) {
        for (int64_t c = 0; c < k; ++c) wd[j * k + c] = w.at(j, c);
    }
    int64_t bad = 0;
    for (int64_t i = 0; i < m; ++i) {
        for (int64_t j = 0; j < n; ++j) {
            double ref = accumulate ? y0[i * ldy + j] : 0.0, mag = std::abs(ref);
            for (int64_t c = 0; c < k; ++c) {
                ref += x[i * ldx + c] * wd[j * k + c];
                mag += std::abs(x[i * ldx + c] * wd[j * k + c]);
            }
            const double got = y[i * ldy + j];
            if (!(std::abs(got - ref) <= 1e-5 * mag + 1e-30) && bad++ < 5) {
                ADD_FAILURE() << what << " m=" << m << " y[" << i << "," << j << "]=" << got << " ref=" << ref
                              << " mag=" << mag;
            }
        }
        // Padding between rows of y must be untouched.
        for (int64_t j = n; j < ldy && i + 1 < m; ++j) {
            ASSERT_EQ(y[i * ldy + j], y0[i * ldy + j]) << what << " wrote past n";
        }
    }
    EXPECT_EQ(bad, 0) << what << " m=" << m << " accumulate=" << accumulate;
}

struct Shape {
    int64_t rows, cols;
};

class MatmulTest : public ::testing::TestWithParam<DType> {};

TEST_P(MatmulTest, FullTensorsAllIsas) {
    IsaGuard guard;
    const Shape shapes[] = {{160, 512}, {192, 320}, {128, 128}, {37, 77}, {300, 1000}, {8, 5}, {1, 1}};
    for (Isa isa : runnable_isas()) {
        set_isa(isa);
        for (const Shape& s : shapes) {
            TestWeight tw(GetParam(), s.rows, s.cols, static_cast<uint32_t>(s.rows * 1000 + s.cols));
            for (int64_t m : {1, 2, 3, 7, 16, 33, 130}) {
                for (bool acc : {false, true}) {
                    check_matmul(tw.view(), m, acc,
                                 std::string(isa_name(isa)) + " " + dtype_name(GetParam()) + " " +
                                     std::to_string(s.rows) + "x" + std::to_string(s.cols));
                }
            }
        }
    }
}

TEST_P(MatmulTest, SlicedViewsAllIsas) {
    IsaGuard guard;
    TestWeight tw(GetParam(), 448, 704, 7);
    const WeightView full = tw.view();
    struct Slice {
        int64_t r0, nr, c0, nc;
    };
    // Column slices starting mid-block and off the SIMD grid, row slices crossing scale blocks.
    const Slice slices[] = {{0, 448, 128, 256}, {0, 448, 200, 300}, {131, 200, 0, 704}, {64, 256, 65, 511},
                            {300, 148, 703, 1}, {5, 3, 17, 600}};
    for (Isa isa : runnable_isas()) {
        set_isa(isa);
        for (const Slice& s : slices) {
            const WeightView v = full.slice_rows(s.r0, s.nr).slice_cols(s.c0, s.nc);
            for (int64_t m : {1, 2, 5, 33}) {
                check_matmul(v, m, m == 5, std::string(isa_name(isa)) + " " + dtype_name(GetParam()) + " slice r0=" +
                                               std::to_string(s.r0) + " c0=" + std::to_string(s.c0));
            }
        }
    }
}

INSTANTIATE_TEST_SUITE_P(AllDtypes, MatmulTest,
                         ::testing::Values(DType::kF8E4M3, DType::kBF16, DType::kF16, DType::kF32),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

// k > 1536 makes the prefill path block over k (partial sums accumulate into y across k blocks).
TEST_P(MatmulTest, LongRowsAllIsas) {
    IsaGuard guard;
    TestWeight tw(GetParam(), 70, 2600, 13);
    const WeightView v = tw.view().slice_cols(40, 2530);
    for (Isa isa : runnable_isas()) {
        set_isa(isa);
        for (int64_t m : {1, 9, 20}) {
            for (bool acc : {false, true}) {
                check_matmul(v, m, acc, std::string(isa_name(isa)) + " " + dtype_name(GetParam()) + " long rows");
            }
        }
    }
}

// Each FP8 weight is exactly float32(e4m3(q) * scale): a one-hot x reads single weights back.
TEST(MatmulExact, Fp8OneHotIsBitExact) {
    IsaGuard guard;
    TestWeight tw(DType::kF8E4M3, 256, 256, 3);
    const WeightView v = tw.view().slice_cols(100, 150);
    for (Isa isa : runnable_isas()) {
        set_isa(isa);
        for (int64_t c : {0, 1, 27, 28, 100, 149}) {
            std::vector<float> x(v.cols, 0.0f), y(v.rows);
            x[c] = 1.0f;
            matmul(x.data(), 1, v.cols, v, y.data(), v.rows);
            for (int64_t j = 0; j < v.rows; ++j) {
                ASSERT_EQ(y[j], v.at(j, c)) << isa_name(isa) << " j=" << j << " c=" << c;
            }
        }
    }
}

// The decode path (m up to 8) groups W rows and x rows into register tiles whose shape depends on m
// (8 W rows at batch 1, 4 x 3 or 4 x 4 tiles for batches), but every output is the same float32 sum
// in the same order: row i of a batch equals the batch-1 result bit for bit. Odd row counts and a
// column slice hit every tail of the tiles.
TEST_P(MatmulTest, DecodeTilesDoNotChangeSums) {
    IsaGuard guard;
    TestWeight tw(GetParam(), 203, 300, 17);
    const WeightView v = tw.view().slice_rows(3, 197).slice_cols(5, 290);
    const int64_t k = v.cols, n = v.rows;
    for (Isa isa : runnable_isas()) {
        set_isa(isa);
        for (int64_t m : {2, 3, 4, 5, 7, 8}) {
            const std::vector<float> x = random_vec(m * k, static_cast<uint32_t>(m + 40));
            std::vector<float> y(m * n), y1(n);
            matmul(x.data(), m, k, v, y.data(), n);
            for (int64_t i = 0; i < m; ++i) {
                matmul(x.data() + i * k, 1, k, v, y1.data(), n);
                ASSERT_EQ(0, std::memcmp(y1.data(), y.data() + i * n, n * sizeof(float)))
                    << isa_name(isa) << " " << dtype_name(GetParam()) << " m=" << m << " row " << i;
            }
        }
    }
}

TEST(MatmulIsa, DetectedIsReportedAndSettable) {
    IsaGuard guard;
    EXPECT_LE(static_cast<int>(active_isa()), static_cast<int>(detected_isa()));
    for (Isa isa : runnable_isas()) {
        set_isa(isa);
        EXPECT_EQ(active_isa(), isa);
        EXPECT_NE(std::string(isa_name(isa)), "?");
    }
}

}  // namespace
}  // namespace deepshard::kernels
