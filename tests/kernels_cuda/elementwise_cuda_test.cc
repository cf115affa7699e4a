// CUDA elementwise ops against their CPU twins: embedding (gather_rows), rmsnorm, silu_mul, YaRN RoPE
// (the interleaved rotation of model/transformer.cc with ModelConfig::rope_inv_freq), greedy argmax
// (Sampler at temperature 0) and the BF16 conversions. Every test skips visibly without a device.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "common/dtype.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/kernels.h"
#include "model/config.h"
#include "model/sampling.h"
#include "tests/kernels/kernel_test_util.h"
#include "tests/kernels_cuda/cuda_test_util.h"

namespace deepshard::kernels::cuda {
namespace {

using kernels::testing::random_vec;
using kernels::testing::TestWeight;
using testing::from_device;
using testing::to_device;

// |a - b| <= atol + rtol * |b| elementwise; reports the first failure.
void expect_close(const std::vector<float>& got, const std::vector<float>& want, float atol, float rtol,
                  const std::string& what) {
    ASSERT_EQ(got.size(), want.size()) << what;
    for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_LE(std::fabs(got[i] - want[i]), atol + rtol * std::fabs(want[i]))
            << what << " [" << i << "]: gpu " << got[i] << " cpu " << want[i];
    }
}

TEST(CudaElementwise, EmbeddingEveryDtypeAndOutOfRangeRowsAreZero) {
    DS_REQUIRE_CUDA();
    for (DType t : {DType::kF32, DType::kBF16, DType::kF16, DType::kF8E4M3}) {
        TestWeight tw(t, 300, 200, 3);
        auto dw = upload_weight(tw.view());
        ASSERT_TRUE(dw.ok()) << dw.status().to_string();
        std::vector<int32_t> ids = {0, 299, 128, 127, 5, 300, -1, 42};
        auto d_ids = to_device(ids);
        const int64_t ldo = 210;
        auto d_out = to_device(std::vector<float>(ids.size() * ldo, -7.0f));
        ASSERT_TRUE(embedding(dw->view, d_ids.as<int32_t>(), 8, d_out.as<float>(), ldo, nullptr).ok());
        auto got = from_device<float>(d_out, ids.size() * ldo);
        std::vector<int32_t> valid = {0, 299, 128, 127, 5, 42};
        std::vector<float> want(ids.size() * ldo, -7.0f);
        for (size_t i = 0; i < ids.size(); ++i) {
            if (ids[i] < 0 || ids[i] >= 300) {
                std::fill(want.begin() + i * ldo, want.begin() + i * ldo + 200, 0.0f);
            } else {
                kernels::gather_rows(tw.view(), &ids[i], 1, want.data() + i * ldo, ldo);
            }
        }
        expect_close(got, want, 0.0f, 0.0f, std::string("embedding ") + dtype_name(t));  // exact
    }
}

TEST(CudaElementwise, RmsnormMatchesCpu) {
    DS_REQUIRE_CUDA();
    for (int64_t n : {7, 512, 7168}) {
        const int64_t m = 9, ld = n + 3;
        auto x = random_vec(m * ld, 1), w = random_vec(n, 2);
        std::vector<float> want(m * ld, 0.0f);
        kernels::rmsnorm(x.data(), m, n, ld, w.data(), 1e-6f, want.data(), ld);
        auto dx = to_device(x), dw = to_device(w), dy = to_device(std::vector<float>(m * ld, 0.0f));
        ASSERT_TRUE(cuda::rmsnorm(dx.as<float>(), m, n, ld, dw.as<float>(), 1e-6f, dy.as<float>(), ld, nullptr).ok());
        expect_close(from_device<float>(dy, m * ld), want, 1e-6f, 2e-6f * std::sqrt(static_cast<float>(n)), "rmsnorm");
        // In place.
        ASSERT_TRUE(cuda::rmsnorm(dx.as<float>(), m, n, ld, dw.as<float>(), 1e-6f, dx.as<float>(), ld, nullptr).ok());
        auto inplace = from_device<float>(dx, m * ld);
        for (int64_t i = 0; i < m; ++i) {
            for (int64_t c = 0; c < n; ++c) {
                ASSERT_NEAR(inplace[i * ld + c], want[i * ld + c], 1e-5f + 1e-4f * std::fabs(want[i * ld + c]));
            }
        }
    }
}

TEST(CudaElementwise, SiluMulMatchesCpu) {
    DS_REQUIRE_CUDA();
    const int64_t n = 100003;
    auto g = random_vec(n, 3), u = random_vec(n, 4);
    for (float& v : g) v *= 8.0f;  // reach the saturated tails of silu
    std::vector<float> want(n);
    kernels::silu_mul(g.data(), u.data(), n, want.data());
    auto dg = to_device(g), du = to_device(u);
    ASSERT_TRUE(cuda::silu_mul(dg.as<float>(), du.as<float>(), n, dg.as<float>(), nullptr).ok());  // out aliases gate
    expect_close(from_device<float>(dg, n), want, 1e-6f, 1e-6f, "silu_mul");
}

// The CPU rotation of model/transformer.cc (Impl::rope), applied to one rope_dim slice.
void rope_ref(float* v, int64_t pos, const std::vector<float>& inv_freq) {
    for (size_t i = 0; i < inv_freq.size(); ++i) {
        const float angle = static_cast<float>(pos) * inv_freq[i];
        const float cs = std::cos(angle), sn = std::sin(angle);
        const float x0 = v[2 * i], x1 = v[2 * i + 1];
        v[2 * i] = x0 * cs - x1 * sn;
        v[2 * i + 1] = x0 * sn + x1 * cs;
    }
}

TEST(CudaElementwise, YarnRopeInterleavedMatchesCpu) {
    DS_REQUIRE_CUDA();
    model::ModelConfig cfg;  // DeepSeek-V3's rope: theta 1e4, YaRN factor 40 over 4096, beta 32/1
    cfg.qk_nope_head_dim = 128;
    cfg.qk_rope_head_dim = 64;
    const std::vector<float> inv_freq = cfg.rope_inv_freq();
    ASSERT_EQ(inv_freq.size(), 32u);
    const int64_t T = 6, heads = 3, ld_head = 192, offset = 128, rd = 64, ld_token = heads * ld_head + 5;
    std::vector<int32_t> pos = {0, 1, 17, 4095, 4096, 163839};
    auto x = random_vec(T * ld_token, 5);
    std::vector<float> want = x;
    for (int64_t t = 0; t < T; ++t) {
        for (int64_t h = 0; h < heads; ++h) rope_ref(want.data() + t * ld_token + h * ld_head + offset, pos[t], inv_freq);
    }
    auto dx = to_device(x), dp = to_device(pos), df = to_device(inv_freq);
    ASSERT_TRUE(rope_interleaved(dx.as<float>(), T, ld_token, heads, ld_head, offset, rd, dp.as<int32_t>(),
                                 df.as<float>(), nullptr)
                    .ok());
    auto got = from_device<float>(dx, T * ld_token);
    // Untouched parts (nope dims, padding) bit-exact; rotated ones within sincosf's few ulp (the angle of
    // position 163839 is ~1.6e5 rad, where an ulp of the angle is ~0.008: both sides use the same fp32 angle).
    expect_close(got, want, 2e-6f, 2e-6f, "rope");
}

TEST(CudaElementwise, ArgmaxMatchesGreedySampler) {
    DS_REQUIRE_CUDA();
    const int64_t rows = 5, vocab = 129280, ld = vocab + 16;
    auto logits = random_vec(rows * ld, 6);
    logits[1 * ld + 77] = 50.0f;  // tie: lowest id wins
    logits[1 * ld + 7] = 50.0f;
    logits[2 * ld + 3] = NAN;  // NaN counts as -inf
    logits[2 * ld + 4] = 60.0f;
    for (int64_t j = 0; j < vocab; ++j) logits[3 * ld + j] = NAN;  // all NaN -> 0
    logits[4 * ld + vocab - 1] = 1e30f;
    auto dl = to_device(logits);
    auto dout = to_device(std::vector<int32_t>(rows, -5));
    ASSERT_TRUE(argmax(dl.as<float>(), rows, vocab, ld, dout.as<int32_t>(), nullptr).ok());
    auto got = from_device<int32_t>(dout, rows);
    for (int64_t r = 0; r < rows; ++r) {
        model::SamplingParams sp;  // temperature 0: greedy
        model::Sampler sampler(sp, {});
        const int32_t want =
            sampler.sample(std::span<const float>(logits.data() + r * ld, static_cast<size_t>(vocab))).token;
        EXPECT_EQ(got[r], want) << "row " << r;
    }
    EXPECT_EQ(got[1], 7);
    EXPECT_EQ(got[2], 4);
    EXPECT_EQ(got[4], vocab - 1);
}

TEST(CudaElementwise, Bf16ConversionsAreExactRne) {
    DS_REQUIRE_CUDA();
    for (DType t : {DType::kF8E4M3, DType::kF32, DType::kF16}) {
        TestWeight tw(t, 260, 300, 8);
        const WeightView slice = tw.view().slice_rows(3, 250).slice_cols(129, 150);
        auto dw = upload_weight(slice);
        ASSERT_TRUE(dw.ok()) << dw.status().to_string();
        auto dout = to_device(std::vector<uint16_t>(slice.rows * slice.cols));
        ASSERT_TRUE(dequant_to_bf16(dw->view, dout.as<uint16_t>(), nullptr).ok());
        auto got = from_device<uint16_t>(dout, slice.rows * slice.cols);
        for (int64_t r = 0; r < slice.rows; ++r) {
            for (int64_t c = 0; c < slice.cols; ++c) {
                ASSERT_EQ(got[r * slice.cols + c], deepshard::f32_to_bf16(slice.at(r, c)))
                    << dtype_name(t) << " " << r << "," << c;
            }
        }
    }
    const int64_t m = 3, k = 1000, ld = 1003;
    auto x = random_vec(m * ld, 9);
    auto dx = to_device(x), dout = to_device(std::vector<uint16_t>(m * k));
    ASSERT_TRUE(cuda::f32_to_bf16(dx.as<float>(), m, k, ld, dout.as<uint16_t>(), nullptr).ok());
    auto got = from_device<uint16_t>(dout, m * k);
    for (int64_t i = 0; i < m; ++i) {
        for (int64_t c = 0; c < k; ++c) ASSERT_EQ(got[i * k + c], deepshard::f32_to_bf16(x[i * ld + c]));
    }
}

}  // namespace
}  // namespace deepshard::kernels::cuda
