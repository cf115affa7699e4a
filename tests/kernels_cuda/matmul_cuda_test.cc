// CUDA GEMM paths against the CPU: matmul() (weights in their stored dtype, fp32 accumulation) vs
// kernels::matmul for every dtype, GEMV and tiled shapes, views that start mid scale block, and
// accumulate; matmul_bf16() (cuBLASLt) vs a double-precision reference over BF16-rounded x and W, the
// official DeepSeek bf16 path. Tolerances scale with sum_k |x||w| (test-backend-ops style).
#include <gtest/gtest.h>

#include <cmath>

#include "common/dtype.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/kernels.h"
#include "tests/kernels/kernel_test_util.h"
#include "tests/kernels_cuda/cuda_test_util.h"

namespace deepshard::kernels::cuda {
namespace {

using kernels::testing::random_vec;
using kernels::testing::TestWeight;
using testing::from_device;
using testing::to_device;

// sum_k |x[i,k]| |W[j,k]| (optionally over BF16-rounded values) and the exact dot in double.
void reference(const std::vector<float>& x, int64_t m, int64_t ldx, const WeightView& w, bool bf16,
               std::vector<double>* dot, std::vector<double>* mag) {
    auto r = [&](float v) { return bf16 ? bf16_to_f32(deepshard::f32_to_bf16(v)) : v; };
    dot->assign(m * w.rows, 0.0);
    mag->assign(m * w.rows, 0.0);
    for (int64_t j = 0; j < w.rows; ++j) {
        for (int64_t kk = 0; kk < w.cols; ++kk) {
            const double wv = r(w.at(j, kk));
            for (int64_t i = 0; i < m; ++i) {
                const double xv = r(x[i * ldx + kk]);
                (*dot)[i * w.rows + j] += xv * wv;
                (*mag)[i * w.rows + j] += std::fabs(xv * wv);
            }
        }
    }
}

struct Shape {
    int64_t m, n, k;
};

TEST(CudaMatmul, StoredDtypeMatchesCpuMatmul) {
    DS_REQUIRE_CUDA();
    const Shape shapes[] = {{1, 130, 200}, {3, 256, 384}, {8, 77, 129}, {9, 130, 300}, {70, 200, 260}};
    for (DType t : {DType::kF8E4M3, DType::kBF16, DType::kF16, DType::kF32}) {
        for (const Shape& sh : shapes) {
            // A view into a larger tensor starting mid scale block: exercises row/col offsets.
            TestWeight tw(t, sh.n + 140, sh.k + 60, static_cast<uint32_t>(sh.n * 7 + sh.k));
            auto full = upload_weight(tw.view());
            ASSERT_TRUE(full.ok()) << full.status().to_string();
            const WeightView hv = tw.view().slice_rows(70, sh.n).slice_cols(50, sh.k);
            const WeightView dv = full->view.slice_rows(70, sh.n).slice_cols(50, sh.k);
            const int64_t ldx = sh.k + 3, ldy = sh.n + 5;
            auto x = random_vec(sh.m * ldx, 17);
            auto y0 = random_vec(sh.m * ldy, 18);
            for (bool acc : {false, true}) {
                std::vector<float> want = y0;
                kernels::matmul(x.data(), sh.m, ldx, hv, want.data(), ldy, acc);
                auto dx = to_device(x), dy = to_device(y0);
                Status s = matmul(dx.as<float>(), sh.m, ldx, dv, dy.as<float>(), ldy, acc, nullptr);
                ASSERT_TRUE(s.ok()) << s.to_string();
                auto got = from_device<float>(dy, sh.m * ldy);
                std::vector<double> dot, mag;
                reference(x, sh.m, ldx, hv, false, &dot, &mag);
                for (int64_t i = 0; i < sh.m; ++i) {
                    for (int64_t j = 0; j < ldy; ++j) {
                        const size_t o = i * ldy + j;
                        if (j >= sh.n) {
                            ASSERT_EQ(got[o], y0[o]) << "padding written";
                            continue;
                        }
                        const double tol = 1e-5 * mag[i * sh.n + j] + 1e-6 + (acc ? 1e-6 * std::fabs(y0[o]) : 0.0);
                        ASSERT_NEAR(got[o], want[o], tol) << dtype_name(t) << " m=" << sh.m << " n=" << sh.n
                                                          << " k=" << sh.k << " acc=" << acc << " (" << i << "," << j
                                                          << ")";
                    }
                }
            }
        }
    }
}

TEST(CudaMatmul, CublasLtBf16PathMatchesBf16Reference) {
    DS_REQUIRE_CUDA();
    auto handle = CublasLtHandle::create();
    ASSERT_TRUE(handle.ok()) << handle.status().to_string();
    DeviceBuffer scratch;
    const Shape shapes[] = {{1, 256, 512}, {5, 130, 200}, {64, 384, 256}, {129, 200, 7168 / 16}};
    for (DType t : {DType::kF8E4M3, DType::kBF16, DType::kF32}) {
        for (const Shape& sh : shapes) {
            TestWeight tw(t, sh.n + 128, sh.k + 128, static_cast<uint32_t>(sh.m + sh.n));
            auto full = upload_weight(tw.view());
            ASSERT_TRUE(full.ok()) << full.status().to_string();
            const WeightView hv = tw.view().slice_rows(128, sh.n).slice_cols(128, sh.k);
            const WeightView dv = full->view.slice_rows(128, sh.n).slice_cols(128, sh.k);
            const int64_t ldx = sh.k, ldy = sh.n;
            auto x = random_vec(sh.m * ldx, 23);
            auto y0 = random_vec(sh.m * ldy, 24);
            std::vector<double> dot, mag;
            reference(x, sh.m, ldx, hv, true, &dot, &mag);
            for (bool acc : {false, true}) {
                auto dx = to_device(x), dy = to_device(y0);
                Status s = matmul_bf16(*handle, dx.as<float>(), sh.m, ldx, dv, dy.as<float>(), ldy, acc, scratch,
                                       nullptr);
                ASSERT_TRUE(s.ok()) << s.to_string();
                auto got = from_device<float>(dy, sh.m * ldy);
                for (int64_t i = 0; i < sh.m * sh.n; ++i) {
                    const double want = dot[i] + (acc ? y0[i] : 0.0);
                    ASSERT_NEAR(got[i], want, 1e-4 * mag[i] + 1e-5)
                        << dtype_name(t) << " m=" << sh.m << " n=" << sh.n << " k=" << sh.k << " acc=" << acc
                        << " [" << i << "]";
                }
            }
        }
    }
}

}  // namespace
}  // namespace deepshard::kernels::cuda
