// `--head-fp8`: the output head requantized to FP8 e4m3 with 128 x 128 block scales at load
// (ShardSpec::head_fp8 / EngineOptions::head_fp8). Checked here: every element is the original
// within e4m3's rounding at its block's scale, blocks are those of the shard's own vocabulary rows
// (partial edge blocks included), the view replaces lm_head in the byte accounting, the engine's
// logits really come from the FP8 head and stay within the bound that rounding implies for the
// actual hidden state, and a CUDA engine refuses the option.
#include <cmath>
#include <cstring>
#include <vector>

#include <gtest/gtest.h>

#include "model/checkpoint.h"
#include "model/engine.h"
#include "model/shard_weights.h"
#include "tests/model/loader_test_util.h"

namespace deepshard::model::test {
namespace {

using testing_util::make_temp_dir;

std::shared_ptr<const Checkpoint> open_model(const std::string& dir) {
    auto ck = Checkpoint::open(dir);
    EXPECT_TRUE(ck.ok()) << ck.status().to_string();
    return ck.ok() ? std::shared_ptr<const Checkpoint>(std::move(ck).value()) : nullptr;
}

// |e4m3 RNE rounding error| of v at scale s: half a step of v's binade (3 mantissa bits: 2^-4 |v|),
// at least half the subnormal step (2^-10 s), plus float32 rounding of v / s and q * s.
double rounding_bound(double v, double s) {
    return std::max(std::ldexp(std::fabs(v), -4), std::ldexp(s, -10)) + 1e-6 * std::fabs(v) + 1e-30;
}

class HeadFp8 : public ::testing::Test {
protected:
    void SetUp() override {
        dir_ = make_temp_dir("ds_head_fp8_");
        ModelConfig c = small_test_config(/*fp8=*/true);
        c.vocab_size = 1000;  // 7 full 128-row blocks and a partial one
        MakeModelOptions opt;
        opt.seed = 11;
        ASSERT_TRUE(make_model(c, dir_, opt).ok());
        ck_ = open_model(dir_);
        ASSERT_NE(ck_, nullptr);
    }
    std::string dir_;
    std::shared_ptr<const Checkpoint> ck_;
};

TEST_F(HeadFp8, EveryElementIsTheOriginalWithinE4m3RoundingOfItsBlock) {
    // A vocabulary slice that starts inside a 128-row block, as a tensor-parallel shard holds.
    ShardSpec spec;
    spec.vocab_begin = 300;
    spec.vocab_end = 1000;
    auto plain = ShardWeights::load(ck_, spec);
    ASSERT_TRUE(plain.ok()) << plain.status().to_string();
    spec.head_fp8 = true;
    auto quant = ShardWeights::load(ck_, spec);
    ASSERT_TRUE(quant.ok()) << quant.status().to_string();
    const kernels::WeightView& a = (*plain)->head();
    const kernels::WeightView& q = (*quant)->head();
    ASSERT_NE(a.dtype, DType::kF8E4M3) << "the test model's head should be in a 16-bit dtype";
    ASSERT_EQ(q.dtype, DType::kF8E4M3);
    ASSERT_EQ(q.rows, 700);
    ASSERT_EQ(q.cols, a.cols);
    EXPECT_FALSE((*plain)->head_requantized());
    EXPECT_TRUE((*quant)->head_requantized());
    int64_t changed = 0;
    for (int64_t r = 0; r < q.rows; ++r) {
        for (int64_t c = 0; c < q.cols; ++c) {
            const double v = a.at(r, c), got = q.at(r, c);
            const double s = q.scale[(r / 128) * q.scale_ld + c / 128];
            ASSERT_LE(std::fabs(got - v), rounding_bound(v, s)) << "row " << r << " col " << c;
            changed += got != v;
        }
    }
    EXPECT_GT(changed, 0) << "nothing was rounded: the head was not requantized";
    // Each block's largest magnitude maps to e4m3's largest finite value, 448 * scale.
    for (int64_t br = 0; br * 128 < q.rows; ++br) {
        for (int64_t bc = 0; bc * 128 < q.cols; ++bc) {
            double amax = 0, qmax = 0;
            for (int64_t r = br * 128; r < std::min<int64_t>(q.rows, br * 128 + 128); ++r) {
                for (int64_t c = bc * 128; c < std::min<int64_t>(q.cols, bc * 128 + 128); ++c) {
                    amax = std::max(amax, std::fabs(double(a.at(r, c))));
                    qmax = std::max(qmax, std::fabs(double(q.at(r, c))));
                }
            }
            EXPECT_NEAR(qmax, amax, 1e-6 * amax) << "block " << br << "," << bc;
        }
    }
    // Byte accounting: the head counts at one byte per element plus its scales, and lm_head's file
    // bytes are no longer listed for a device upload.
    const int64_t scales = ((700 + 127) / 128) * ((a.cols + 127) / 128) * 4;
    EXPECT_EQ((*plain)->held_bytes() - (*quant)->held_bytes(), a.bytes() - (700 * a.cols + scales));
    EXPECT_EQ((*plain)->weight_bytes_per_token() - (*quant)->weight_bytes_per_token(), a.bytes() - q.bytes());
    for (const HeldTensor& t : (*quant)->tensors()) EXPECT_NE(t.name, "lm_head.weight");
}

TEST_F(HeadFp8, LogitsComeFromTheFp8HeadWithinTheRoundingBound) {
    const ModelConfig& c = ck_->config();
    const std::vector<int32_t> prompt = {5, 9, 200, 7, 3, 11};
    struct Run {
        std::vector<float> logits, hidden;
    };
    auto run = [&](bool head_fp8) -> Run {
        EngineOptions opt;
        opt.kv_budget_bytes = int64_t{64} << 20;
        opt.numerics = kernels::Numerics::kExact;
        opt.head_fp8 = head_fp8;
        auto e = create_engine(Device::kCpu, ck_, ShardSpec{}, opt);
        EXPECT_TRUE(e.ok()) << e.status().to_string();
        if (!e.ok()) return {};
        SeqChunk ch;
        ch.seq_id = 1;
        ch.tokens = prompt;
        ch.num_tokens = static_cast<int64_t>(prompt.size());
        ch.keep_hidden = true;
        auto out = (*e)->step(std::span<const SeqChunk>(&ch, 1));
        EXPECT_TRUE(out.ok()) << out.status().to_string();
        if (!out.ok()) return {};
        EXPECT_EQ(out->rows, 1);
        return Run{out->logits, out->hidden};
    };
    const Run ref = run(false), q = run(true);
    ASSERT_EQ(ref.logits.size(), static_cast<size_t>(c.vocab_size));
    ASSERT_EQ(q.logits.size(), ref.logits.size());
    // The layers are untouched: the hidden state before the final norm is bit for bit the same.
    ASSERT_EQ(q.hidden.size(), ref.hidden.size());
    ASSERT_EQ(0, std::memcmp(q.hidden.data(), ref.hidden.data(), ref.hidden.size() * sizeof(float)));
    // h = RMSNorm(last position) * gamma, in double, as the head sees it.
    const int64_t H = c.hidden_size;
    const float* x = ref.hidden.data() + (static_cast<int64_t>(prompt.size()) - 1) * H;
    double ms = 0;
    for (int64_t k = 0; k < H; ++k) ms += double(x[k]) * x[k];
    const double inv = 1.0 / std::sqrt(ms / H + c.rms_norm_eps);
    auto plain = ShardWeights::load(ck_, ShardSpec{});
    ShardSpec qs;
    qs.head_fp8 = true;
    auto quant = ShardWeights::load(ck_, qs);
    ASSERT_TRUE(plain.ok() && quant.ok());
    const std::vector<float>& gamma = (*plain)->final_norm();
    const kernels::WeightView& a = (*plain)->head();
    const kernels::WeightView& w = (*quant)->head();
    double worst = 0, largest_change = 0;
    for (int64_t v = 0; v < c.vocab_size; ++v) {
        // |logit_q - logit| <= sum_k |h_k| |w_q - w| (the FP8 rounding), plus float32 summation of
        // both dot products (H terms each: H * 2^-24 * sum |h w|, taken twice, doubled for margin).
        double bound = 0, mag = 0;
        for (int64_t k = 0; k < H; ++k) {
            const double h = double(x[k]) * inv * gamma[k];
            bound += std::fabs(h) * std::fabs(double(w.at(v, k)) - a.at(v, k));
            mag += std::fabs(h) * std::fabs(double(a.at(v, k)));
        }
        bound += 4.0 * H * std::ldexp(mag, -24) + 1e-6;
        const double d = std::fabs(double(q.logits[v]) - ref.logits[v]);
        ASSERT_LE(d, bound) << "vocab row " << v;
        worst = std::max(worst, d / bound);
        largest_change = std::max(largest_change, d);
    }
    EXPECT_GT(largest_change, 0.0) << "the logits did not change: the FP8 head is not what computed them";
    std::printf("[head_fp8] largest logit change %.3g; worst change / bound %.3f\n", largest_change, worst);
}

TEST_F(HeadFp8, ACudaEngineRefusesIt) {
    EngineOptions opt;
    opt.head_fp8 = true;
    auto e = create_engine(Device::kCuda, ck_, ShardSpec{}, opt);
    ASSERT_FALSE(e.ok());
    EXPECT_NE(e.status().to_string().find("--head-fp8"), std::string::npos) << e.status().to_string();
    EXPECT_NE(e.status().to_string().find("CPU engine"), std::string::npos) << e.status().to_string();
}

}  // namespace
}  // namespace deepshard::model::test
