// make-model: the published layout (config, index, shards, dtypes, scales), the initialization
// statistics, determinism (same seed => same bytes, any thread count), presets and overrides.
#include "model/make_model.h"

#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "model/checkpoint.h"
#include "tests/model/loader_test_util.h"

namespace deepshard::model {
namespace {

using test::TempDir;
namespace fs = std::filesystem;

std::map<std::string, std::string> dir_bytes(const std::string& dir) {
    std::map<std::string, std::string> out;
    for (const auto& e : fs::directory_iterator(dir)) out[e.path().filename().string()] = test::read_bytes(e.path());
    return out;
}

TEST(MakeModel, WritesThePublishedLayout) {
    TempDir tmp;
    test::make_test_model(tmp.path, 1, 3);
    const ModelConfig c = test::small_test_config();
    auto files = dir_bytes(tmp.path);
    EXPECT_EQ(files.size(), 5u);  // config, index, 3 shards
    for (const char* f : {"config.json", "model.safetensors.index.json", "model-00001-of-00003.safetensors",
                          "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"}) {
        EXPECT_TRUE(files.count(f)) << f;
    }
    auto cfg = nlohmann::json::parse(files["config.json"]);
    EXPECT_EQ(cfg["quantization_config"]["quant_method"], "fp8");
    EXPECT_EQ(cfg["quantization_config"]["fmt"], "e4m3");
    EXPECT_EQ(cfg["quantization_config"]["activation_scheme"], "dynamic");
    EXPECT_EQ(cfg["quantization_config"]["weight_block_size"], nlohmann::json({128, 128}));
    EXPECT_EQ(cfg["hidden_size"], c.hidden_size);

    auto index = nlohmann::json::parse(files["model.safetensors.index.json"]);
    auto ck = Checkpoint::open(tmp.path);
    ASSERT_TRUE(ck.ok()) << ck.status().to_string();
    ASSERT_TRUE((*ck)->validate().ok()) << (*ck)->validate().to_string();
    uint64_t total = 0;
    for (const auto& t : (*ck)->tensors()) total += t.nbytes;
    EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), total);
    EXPECT_EQ(index["weight_map"].size(), (*ck)->tensors().size());
    std::set<std::string> used_files;
    for (const auto& e : expected_tensors(c)) {
        const TensorInfo* t = (*ck)->find(e.name);
        ASSERT_NE(t, nullptr) << e.name;
        EXPECT_EQ(t->dtype, e.dtype(c)) << e.name;
        used_files.insert(index["weight_map"][e.name].get<std::string>());
        if (e.quantizable()) {
            EXPECT_EQ(t->dtype, DType::kF8E4M3);
            EXPECT_EQ(index["weight_map"][scale_name(e.name)], index["weight_map"][e.name]) << "scale beside weight";
        }
    }
    EXPECT_EQ(used_files.size(), 3u);
    EXPECT_EQ((*ck)->find("model.embed_tokens.weight")->dtype, DType::kBF16);
    EXPECT_EQ((*ck)->find("lm_head.weight")->dtype, DType::kBF16);
    EXPECT_EQ((*ck)->find("model.layers.1.mlp.gate.weight")->dtype, DType::kBF16);
    EXPECT_EQ((*ck)->find("model.layers.1.mlp.gate.e_score_correction_bias")->dtype, DType::kF32);
    EXPECT_EQ((*ck)->find("model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv")->shape,
              (std::vector<int64_t>{1, 2}));
}

struct Stats {
    double mean = 0, stddev = 0;
};
template <typename F>
Stats stats(int64_t n, F f) {
    double s = 0, s2 = 0;
    for (int64_t i = 0; i < n; ++i) {
        const double x = f(i);
        s += x;
        s2 += x * x;
    }
    Stats r;
    r.mean = s / n;
    r.stddev = std::sqrt(std::max(0.0, s2 / n - r.mean * r.mean));
    return r;
}

TEST(MakeModel, InitializationKeepsActivationsOfOrderOne) {
    TempDir tmp;
    test::make_test_model(tmp.path, 3, 2);
    auto ck = std::move(Checkpoint::open(tmp.path)).value();
    const ModelConfig& c = ck->config();
    for (const auto& e : expected_tensors(c)) {
        if (e.shape.size() == 1) {
            auto v = ck->vector_f32(e.name, e.shape[0]);
            ASSERT_TRUE(v.ok());
            Stats st = stats(e.shape[0], [&](int64_t i) { return (*v)[i]; });
            const double mean = e.kind == TensorKind::kNorm ? 1.0 : 0.0;
            const double n = static_cast<double>(e.shape[0]);  // 5 sigma of the sample statistics
            EXPECT_NEAR(st.mean, mean, 5 * 0.1 / std::sqrt(n)) << e.name;
            EXPECT_NEAR(st.stddev, 0.1, 5 * 0.1 / std::sqrt(2 * n)) << e.name;
            continue;
        }
        auto w = ck->weight(e.name, e.shape[0], e.shape[1]);
        ASSERT_TRUE(w.ok()) << w.status().to_string();
        const int64_t cols = e.shape[1];
        Stats st = stats(e.numel(), [&](int64_t i) { return w->at(i / cols, i % cols); });
        const double want = e.kind == TensorKind::kEmbedding ? 1.0 : 1.0 / std::sqrt(static_cast<double>(cols));
        EXPECT_NEAR(st.stddev, want, want * 0.1) << e.name;
        EXPECT_NEAR(st.mean, 0.0, want * 0.1) << e.name;
        if (w->dtype == DType::kF8E4M3) {
            // amax/448 scales: the block maximum is stored as the +-448 code.
            const auto* q = static_cast<const uint8_t*>(w->data);
            bool has_max = false;
            for (int64_t i = 0; i < std::min<int64_t>(e.shape[0], 128) * std::min<int64_t>(cols, 128); ++i) {
                has_max = has_max || (q[(i / std::min<int64_t>(cols, 128)) * cols + i % std::min<int64_t>(cols, 128)] &
                                      0x7f) == 0x7e;
            }
            EXPECT_TRUE(has_max) << e.name;
            EXPECT_GT(w->scale[0], 0.f);
        }
    }
}

TEST(MakeModel, SameSeedSameBytesAnyThreadCount) {
    TempDir a, b, c;
    test::make_test_model(a.path, 42, 2);
    MakeModelOptions opt;
    opt.seed = 42;
    opt.shards = 2;
    ThreadPool one(1);
    opt.pool = &one;
    ASSERT_TRUE(make_model(test::small_test_config(), b.path, opt).ok());
    test::make_test_model(c.path, 43, 2);
    auto fa = dir_bytes(a.path), fb = dir_bytes(b.path), fc = dir_bytes(c.path);
    ASSERT_EQ(fa.size(), fb.size());
    for (const auto& [name, bytes] : fa) EXPECT_TRUE(bytes == fb[name]) << name << " differs between runs";
    EXPECT_TRUE(fa["model-00001-of-00002.safetensors"] != fc["model-00001-of-00002.safetensors"])
        << "a different seed must give different weights";
    EXPECT_EQ(fa["config.json"], fc["config.json"]);
}

TEST(MakeModel, SingleFileBf16AndStaleShardsRemoved) {
    TempDir tmp;
    test::make_test_model(tmp.path, 1, 3);
    test::make_test_model(tmp.path, 1, 1, /*fp8=*/false);
    EXPECT_FALSE(fs::exists(tmp.sub("model-00001-of-00003.safetensors")));
    EXPECT_TRUE(fs::exists(tmp.sub("model.safetensors")));
    auto cfg = nlohmann::json::parse(test::read_bytes(tmp.sub("config.json")));
    EXPECT_FALSE(cfg.contains("quantization_config"));
    auto ck = Checkpoint::open(tmp.path);
    ASSERT_TRUE(ck.ok()) << ck.status().to_string();
    EXPECT_TRUE((*ck)->validate().ok()) << (*ck)->validate().to_string();
    for (const auto& t : (*ck)->tensors()) {
        EXPECT_NE(t.dtype, DType::kF8E4M3) << t.name;
        EXPECT_EQ(t.name.find("_scale_inv"), std::string::npos);
    }
}

TEST(MakeModel, OddShapesStayAligned) {
    // FP8 tensors of odd byte size would misalign the F32 scale after them; the writer reorders.
    ModelConfig c = test::small_test_config();
    ASSERT_TRUE(apply_override(&c, "hidden_size=129").ok());
    ASSERT_TRUE(apply_override(&c, "kv_lora_rank=33").ok());
    TempDir tmp;
    MakeModelOptions opt;
    opt.shards = 2;
    ASSERT_TRUE(make_model(c, tmp.path, opt).ok());
    auto ck = std::move(Checkpoint::open(tmp.path)).value();
    EXPECT_TRUE(ck->validate().ok()) << ck->validate().to_string();  // validate() takes every weight view
    auto v = ck->weight("model.layers.0.self_attn.kv_a_proj_with_mqa.weight", 49, 129);
    ASSERT_TRUE(v.ok()) << v.status().to_string();
}

TEST(MakeModel, NoLowRankQueryPath) {
    ModelConfig c = test::small_test_config();
    ASSERT_TRUE(apply_override(&c, "q_lora_rank=0").ok());
    EXPECT_EQ(c.q_lora_rank, 0);
    TempDir tmp;
    ASSERT_TRUE(make_model(c, tmp.path, {}).ok());
    auto ck = std::move(Checkpoint::open(tmp.path)).value();
    EXPECT_TRUE(ck->validate().ok()) << ck->validate().to_string();
    EXPECT_NE(ck->find("model.layers.0.self_attn.q_proj.weight"), nullptr);
    EXPECT_EQ(ck->find("model.layers.0.self_attn.q_a_proj.weight"), nullptr);
}

TEST(MakeModel, TokenizerFilesAreCopied) {
    TempDir tmp;
    MakeModelOptions opt;
    opt.tokenizer_dir = test::source_dir() + "/testdata/tokenizer";
    // The tokenizer's 128815 ids need the real vocabulary; with fewer rows make-model refuses.
    ModelConfig c = test::small_test_config();
    auto refused = make_model(c, tmp.sub("misfit"), opt);
    ASSERT_FALSE(refused.ok());
    EXPECT_NE(refused.status().message().find("does not belong to this model"), std::string::npos)
        << refused.status().to_string();
    c.vocab_size = 129280;
    ASSERT_TRUE(make_model(c, tmp.path, opt).ok());
    EXPECT_EQ(test::read_bytes(tmp.sub("tokenizer.json")), test::read_bytes(opt.tokenizer_dir + "/tokenizer.json"));
    EXPECT_TRUE(fs::exists(tmp.sub("tokenizer_config.json")));
    opt.tokenizer_dir = tmp.sub("nowhere");
    auto r = make_model(c, tmp.sub("m2"), opt);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("tokenizer.json"), std::string::npos);
}

TEST(MakeModel, Presets) {
    int64_t prev = 0;
    for (const char* p : {"tiny", "small", "medium"}) {
        auto c = preset_config(p);
        ASSERT_TRUE(c.ok()) << c.status().to_string();
        EXPECT_TRUE(c->quantization.fp8);
        const int64_t n = count_parameters(*c);
        EXPECT_GT(n, prev) << p;
        prev = n;
    }
    EXPECT_GE(count_parameters(preset_config("medium").value()), 1000000000);
    EXPECT_EQ(preset_config("small")->vocab_size, 129280);  // fits the real DeepSeek-V3 tokenizer
    // The tiny preset has the golden tiny-bf16 checkpoint's shapes.
    auto golden = ModelConfig::load(test::golden_dir("tiny-bf16"));
    ASSERT_TRUE(golden.ok());
    auto tiny = preset_config("tiny").value();
    tiny.quantization.fp8 = false;
    EXPECT_EQ(tiny.hash(), golden->hash());
    auto bad = preset_config("huge");
    ASSERT_FALSE(bad.ok());
    EXPECT_NE(bad.status().message().find("huge"), std::string::npos);
}

TEST(MakeModel, Overrides) {
    ModelConfig c = preset_config("tiny").value();
    ASSERT_TRUE(apply_override(&c, "hidden_size=320").ok());
    ASSERT_TRUE(apply_override(&c, "rope_scaling.factor=8").ok());
    ASSERT_TRUE(apply_override(&c, "scoring_func=softmax").ok());
    ASSERT_TRUE(apply_override(&c, "quantization_config.weight_block_size=[64,64]").ok());
    EXPECT_EQ(c.hidden_size, 320);
    EXPECT_EQ(c.rope_scaling.factor, 8.0);
    EXPECT_EQ(c.scoring_func, "softmax");
    EXPECT_EQ(c.quantization.block_rows, 64);
    EXPECT_EQ(scale_shape(c, 320, 96), (std::vector<int64_t>{5, 2}));

    auto expect_bad = [&](const std::string& kv, const std::string& needle) {
        ModelConfig d = preset_config("tiny").value();
        Status s = apply_override(&d, kv);
        ASSERT_FALSE(s.ok()) << kv;
        EXPECT_NE(s.message().find(needle), std::string::npos) << s.message();
        EXPECT_EQ(d.hidden_size, 256) << "a failed override must leave the config alone";
    };
    expect_bad("hiden_size=3", "hiden_size");
    expect_bad("rope_scaling.nope=3", "rope_scaling.nope");
    expect_bad("hidden_size", "key=value");
    expect_bad("hidden_size=abc", "hidden_size");
    expect_bad("n_group=3", "n_group");
    expect_bad("topk_group=9", "topk_group");
    expect_bad("rope_scaling.factor=0.5", "rope_scaling.factor");
}

TEST(MakeModel, QuantizerRaggedEdges) {
    // 3 x 5 with 2 x 2 blocks: edge blocks use only their real elements for amax.
    const std::vector<float> w = {1, -2, 3, 4, 448, 0.5f, 0.25f, -8, 1, 0, 0, 0, 0, 0, -0.001f};
    std::vector<uint8_t> q(15);
    std::vector<float> s(6);
    quantize_fp8_blocks(w.data(), 3, 5, 2, 2, q.data(), s.data());
    EXPECT_EQ(s, (std::vector<float>{2.0f / 448, 8.0f / 448, 448.0f / 448, 0, 0, 0.001f / 448}));
    EXPECT_EQ(q[1], 0xfe);   // -2 is its block's amax: -448
    EXPECT_EQ(q[4], 0x7e);   // 448 alone in its column block
    EXPECT_EQ(q[10], 0x00);  // an all-zero block: scale 0, codes 0
    EXPECT_EQ(q[14], 0xfe);
    for (int i = 0; i < 15; ++i) {
        const float back = e4m3_to_f32(q[i]) * s[(i / 5 / 2) * 3 + (i % 5) / 2];
        EXPECT_NEAR(back, w[i], std::fabs(w[i]) / 16 + 1e-9) << i;
    }
}

}  // namespace
}  // namespace deepshard::model
