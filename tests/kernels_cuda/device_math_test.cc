// CPU-side tests of the code the CUDA kernels run (device_math.h is __host__ __device__): exact weight
// decoding against dtype.h / WeightView::at, BF16 rounding, and MoE routing against the CPU routing of
// model/transformer.cc. These need no GPU and always run. Also: argument errors and CUDA error
// messages, which are produced before any device is touched.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "common/dtype.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_math.h"
#include "tests/kernels/kernel_test_util.h"
#include "tests/kernels_cuda/cuda_test_util.h"

namespace deepshard::kernels::cuda {
namespace {

using kernels::testing::TestWeight;
using testing::reference_route;
using testing::route_cases;

uint32_t bits(float f) {
    uint32_t b;
    std::memcpy(&b, &f, 4);
    return b;
}

TEST(DeviceMath, DecodeE4M3EveryCode) {
    for (int c = 0; c < 256; ++c) {
        const float want = e4m3_to_f32(static_cast<uint8_t>(c));
        const float got = decode_e4m3(static_cast<uint8_t>(c));
        if (std::isnan(want)) {
            EXPECT_TRUE(std::isnan(got)) << "code " << c;
        } else {
            EXPECT_EQ(bits(got), bits(want)) << "code " << c << ": " << got << " vs " << want;
        }
    }
    EXPECT_EQ(decode_e4m3(0x7e), 448.0f);
    EXPECT_EQ(decode_e4m3(0x01), 0.001953125f);
    EXPECT_EQ(decode_e4m3(0x80), -0.0f);
}

TEST(DeviceMath, DecodeF16AndBf16EveryCode) {
    for (uint32_t c = 0; c < 65536; ++c) {
        const auto h = static_cast<uint16_t>(c);
        const float want16 = f16_to_f32(h), got16 = decode_f16(h);
        if (std::isnan(want16)) {
            EXPECT_TRUE(std::isnan(got16)) << "f16 code " << c;
        } else {
            ASSERT_EQ(bits(got16), bits(want16)) << "f16 code " << c;
        }
        ASSERT_EQ(bits(decode_bf16(h)), bits(bf16_to_f32(h))) << "bf16 code " << c;
    }
}

TEST(DeviceMath, EncodeBf16MatchesHostRounding) {
    std::mt19937 rng(7);
    std::vector<float> vals = {0.0f, -0.0f, 1.0f, 1.00390625f, 1.005859375f, 3.4e38f, -3.4e38f, INFINITY, -INFINITY,
                               NAN, 1e-40f, -1e-45f};
    for (int i = 0; i < 200000; ++i) {
        uint32_t b = rng();
        float f;
        std::memcpy(&f, &b, 4);
        vals.push_back(f);
    }
    for (float f : vals) {
        ASSERT_EQ(encode_bf16(f), deepshard::f32_to_bf16(f)) << "bits " << std::hex << bits(f);
    }
}

TEST(DeviceMath, WeightAtMatchesWeightViewIncludingSlices) {
    for (DType t : {DType::kF32, DType::kBF16, DType::kF16, DType::kF8E4M3}) {
        TestWeight tw(t, 300, 330, 11);
        const WeightView full = tw.view();
        // A slice that starts mid-block in both directions exercises the scale-grid offsets.
        for (const WeightView& v : {full, full.slice_rows(100, 150).slice_cols(130, 190), full.slice_rows(256, 44)}) {
            DevWeight d{};
            ASSERT_TRUE(to_dev_weight(v, &d));
            for (int64_t r = 0; r < v.rows; ++r) {
                for (int64_t c = 0; c < v.cols; ++c) {
                    const float want = v.at(r, c), got = weight_at(d, r, c);
                    ASSERT_EQ(bits(got), bits(want)) << dtype_name(t) << " (" << r << "," << c << ")";
                }
            }
        }
    }
    WeightView bad;
    bad.dtype = DType::kI32;
    DevWeight d{};
    EXPECT_FALSE(to_dev_weight(bad, &d));
}

// Random router logits and biases of the size of DeepSeek's (bias ~ the e_score_correction_bias scale).
void random_router(int64_t T, int64_t E, uint32_t seed, std::vector<float>* logits, std::vector<float>* bias) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.0f, 2.0f);
    std::uniform_real_distribution<float> ub(-0.1f, 0.1f);
    logits->resize(T * E);
    bias->resize(E);
    for (float& f : *logits) f = nd(rng);
    for (float& f : *bias) f = ub(rng);
}

TEST(DeviceMath, RouteTokenMatchesCpuRoutingExactly) {
    for (const auto& rc : route_cases()) {
        const int64_t T = 300, E = rc.p.num_experts, K = rc.p.top_k;
        std::vector<float> logits, bias;
        random_router(T, E, 42, &logits, &bias);
        // Force exact ties in some tokens: quantized logits make equal scores, so the lower-id rule matters.
        for (int64_t i = 0; i < 50 * E; ++i) logits[i] = std::round(logits[i]);
        ASSERT_TRUE(validate_route_params(rc.p).ok()) << rc.name;
        for (int64_t t = 0; t < T; ++t) {
            const float* b = rc.bias ? bias.data() : nullptr;
            const auto want = reference_route(rc.p, logits.data() + t * E, b);
            std::vector<int32_t> e(K);
            std::vector<float> w(K);
            route_token(rc.p, logits.data() + t * E, b, e.data(), w.data());
            ASSERT_EQ(e, want.experts) << rc.name << " token " << t;
            for (int64_t k = 0; k < K; ++k) ASSERT_EQ(bits(w[k]), bits(want.weights[k])) << rc.name << " token " << t;
        }
    }
}

TEST(DeviceMath, RouteParamsValidation) {
    RouteParams p;
    p.num_experts = 256;
    p.n_group = 8;
    p.topk_group = 4;
    p.top_k = 8;
    EXPECT_TRUE(validate_route_params(p).ok());
    auto expect_bad = [](RouteParams q, const char* field) {
        Status s = validate_route_params(q);
        EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << field;
        EXPECT_NE(s.message().find(field), std::string::npos) << s.message();
    };
    RouteParams q = p;
    q.n_group = 7;
    expect_bad(q, "divisible");
    q = p;
    q.topk_group = 9;
    expect_bad(q, "topk_group");
    q = p;
    q.top_k = 129;  // more than the 4 kept groups hold
    expect_bad(q, "top_k");
    q = p;
    q.n_group = 128;
    expect_bad(q, "n_group");
}

// Argument checks run before any CUDA call, so they are testable without a device.
TEST(CudaKernelsHost, ArgumentErrorsNameTheOp) {
    WeightView empty;
    Status s = matmul(nullptr, 1, 16, empty, nullptr, 16, false, nullptr);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("matmul"), std::string::npos) << s.message();

    TestWeight tw(DType::kF8E4M3, 64, 64, 1);
    WeightView v = tw.view();
    v.scale = nullptr;
    s = embedding(v, nullptr, 0, nullptr, 64, nullptr);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("scale"), std::string::npos) << s.message();

    s = rope_interleaved(nullptr, 1, 64, 1, 64, 0, 63, nullptr, nullptr, nullptr);  // odd rope_dim
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    s = rmsnorm(nullptr, 1, 0, 0, nullptr, 1e-6f, nullptr, 0, nullptr);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    s = argmax(nullptr, 1, 0, 0, nullptr, nullptr);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    RouteParams p;  // num_experts 0
    s = moe_gate(nullptr, 1, 1, nullptr, p, nullptr, nullptr, nullptr);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("moe_gate"), std::string::npos) << s.message();
}

TEST(CudaKernelsHost, CudaErrorsNameTheCall) {
    Status s = cuda_error(cudaErrorMemoryAllocation, "cudaMalloc(&p, 1 << 40)", "x.cc", 12);
    EXPECT_EQ(s.code(), StatusCode::kCuda);
    EXPECT_NE(s.message().find("cudaMalloc(&p, 1 << 40)"), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("cudaErrorMemoryAllocation"), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("x.cc:12"), std::string::npos) << s.message();
    s = cublas_error(CUBLAS_STATUS_NOT_SUPPORTED, "cublasLtMatmul", "y.cc", 3);
    EXPECT_EQ(s.code(), StatusCode::kCuda);
    EXPECT_NE(s.message().find("CUBLAS_STATUS_NOT_SUPPORTED"), std::string::npos) << s.message();
}

TEST(CudaKernelsHost, EmptyHandlesAreInertAndMovable) {
    DeviceBuffer b;
    EXPECT_EQ(b.get(), nullptr);
    DeviceBuffer b2 = std::move(b);
    EXPECT_EQ(b2.bytes(), 0u);
    CudaStream s = CudaStream::borrow(nullptr);
    EXPECT_FALSE(s.owned());
    CudaStream s2 = std::move(s);
    CudaEvent e;
    CudaEvent e2 = std::move(e);
    CublasLtHandle h;
    CublasLtHandle h2 = std::move(h);
    EXPECT_EQ(h2.get(), nullptr);
    // Reports, never aborts, on a machine without a device.
    std::string why;
    const int n = device_count(&why);
    if (n == 0) {
        EXPECT_FALSE(why.empty());
        std::printf("no CUDA device here (%s): GPU comparisons in this binary skip\n", why.c_str());
    }
}

}  // namespace
}  // namespace deepshard::kernels::cuda
