// Checkpoint: the golden checkpoints open and validate, FP8 block scales are applied exactly (the
// golden spot checks and a ragged 576-row tensor, through full views and row/column slices), every
// dtype round-trips, and every kind of defect is reported with the file and tensor named.
#include "model/checkpoint.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "model/safetensors.h"
#include "tests/model/loader_test_util.h"

namespace deepshard::model {
namespace {

using test::TempDir;
namespace fs = std::filesystem;

uint32_t bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

std::unique_ptr<Checkpoint> open_ok(const std::string& dir) {
    auto ck = Checkpoint::open(dir);
    EXPECT_TRUE(ck.ok()) << ck.status().to_string();
    return ck.ok() ? std::move(ck).value() : nullptr;
}

TEST(CheckpointGolden, OpenAndValidate) {
    for (const char* name : {"tiny-bf16", "small-fp8"}) {
        auto ck = open_ok(test::golden_dir(name));
        ASSERT_NE(ck, nullptr);
        Status v = ck->validate();
        EXPECT_TRUE(v.ok()) << name << ": " << v.to_string();
        EXPECT_EQ(ck->config().quantization.fp8, std::string(name) == "small-fp8");
    }
    auto ck = open_ok(test::golden_dir("small-fp8"));
    ASSERT_EQ(ck->file_names().size(), 3u);
    const TensorInfo* t = ck->find("lm_head.weight");
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(ck->file_names()[t->file_index], "model-00003-of-00003.safetensors");
    EXPECT_EQ(t->dtype, DType::kBF16);
    const TensorInfo* b = ck->find("model.layers.1.mlp.gate.e_score_correction_bias");
    ASSERT_NE(b, nullptr);
    EXPECT_EQ(b->dtype, DType::kF32);
    uint64_t total = 0;
    for (const auto& x : ck->tensors()) total += x.nbytes;
    EXPECT_EQ(total, 35408848u);  // the index's metadata.total_size
}

// The 56 published spot checks, including ragged-block corners, +-448 codes, subnormals and
// negative codes: bit-exact through the full view and through slices that start mid-block.
TEST(CheckpointGolden, Fp8SamplesBitExact) {
    const std::string dir = test::golden_dir("small-fp8");
    auto ck = open_ok(dir);
    ASSERT_NE(ck, nullptr);
    auto samples = nlohmann::json::parse(test::read_bytes(dir + "/fp8_samples.json"))["samples"];
    ASSERT_EQ(samples.size(), 56u);
    for (const auto& s : samples) {
        const std::string name = s["tensor"];
        const int64_t R = s["shape"][0], C = s["shape"][1], i = s["i"], j = s["j"];
        const uint32_t want = static_cast<uint32_t>(std::stoul(s["dequantized_bits"].get<std::string>(), nullptr, 16));
        auto full = ck->weight(name, R, C);
        ASSERT_TRUE(full.ok()) << full.status().to_string();
        EXPECT_EQ(static_cast<const uint8_t*>(full->data)[i * C + j],
                  std::stoul(s["code"].get<std::string>(), nullptr, 16));
        EXPECT_EQ(bits(full->at(i, j)), want) << name << " (" << i << ", " << j << ")";
        // A row slice starting 1 row before the sample (mid-block unless i == 0) and a column slice.
        const int64_t r0 = std::max<int64_t>(0, i - 1), c0 = std::max<int64_t>(0, j - 3);
        auto rows = ck->weight_rows(name, R, C, r0, R - r0);
        ASSERT_TRUE(rows.ok());
        EXPECT_EQ(bits(rows->at(i - r0, j)), want) << name << " row slice";
        auto cols = ck->weight_cols(name, R, C, c0, C - c0);
        ASSERT_TRUE(cols.ok());
        EXPECT_EQ(bits(cols->at(i, j - c0)), want) << name << " column slice";
        EXPECT_EQ(bits(rows->slice_cols(c0, C - c0).at(i - r0, j - c0)), want) << name << " both";
    }
}

TEST(CheckpointGolden, FingerprintLoadAndResidency) {
    auto a = open_ok(test::golden_dir("small-fp8"));
    auto a2 = open_ok(test::golden_dir("small-fp8"));
    auto b = open_ok(test::golden_dir("tiny-bf16"));
    ASSERT_TRUE(a && a2 && b);
    EXPECT_EQ(a->fingerprint(), a2->fingerprint());
    EXPECT_NE(a->fingerprint(), b->fingerprint());

    auto st = a->load();
    ASSERT_TRUE(st.ok()) << st.status().to_string();
    EXPECT_EQ(st->bytes, 35408848u);
    EXPECT_GE(a->resident_bytes(), st->bytes * 9 / 10);
    auto one = a->load({"model.layers.0.self_attn.o_proj.weight"});
    ASSERT_TRUE(one.ok());
    EXPECT_EQ(one->bytes, 512u * 512 + 4 * 4 * 4);  // the weight and its scale grid
    auto missing = a->load({"no.such.weight"});
    ASSERT_FALSE(missing.ok());
    EXPECT_NE(missing.status().message().find("no.such.weight"), std::string::npos);
}

// A checkpoint directory with the golden tiny config and hand-made tensors.
void write_model(const TempDir& tmp,
                 const std::vector<safetensors::TensorSpec>& specs,
                 const std::vector<const void*>& data) {
    test::write_bytes(tmp.sub("config.json"), test::read_bytes(test::golden_dir("small-fp8") + "/config.json"));
    ASSERT_TRUE(safetensors::write_file(tmp.sub("model.safetensors"), specs, data).ok());
}

TEST(Checkpoint, RaggedFp8BlocksAndSlices) {
    constexpr int64_t R = 576, C = 200;  // like kv_a_proj_with_mqa: the last row block holds 64 rows
    std::mt19937 gen(3);
    std::normal_distribution<float> nd(0.f, 0.05f);
    std::vector<float> w(R * C);
    for (auto& x : w) x = nd(gen);
    w[5] = 0.f;
    std::vector<uint8_t> q(R * C);
    std::vector<float> scale(5 * 2);
    quantize_fp8_blocks(w.data(), R, C, 128, 128, q.data(), scale.data());
    TempDir tmp;
    write_model(tmp, {{"x.weight", DType::kF8E4M3, {R, C}}, {"x.weight_scale_inv", DType::kF32, {5, 2}}},
                {q.data(), scale.data()});
    auto ck = open_ok(tmp.path);
    ASSERT_NE(ck, nullptr);
    auto v = ck->weight("x.weight", R, C);
    ASSERT_TRUE(v.ok()) << v.status().to_string();
    EXPECT_EQ(v->scale_ld, 2);
    // Every block's scale is its amax / 448, so each block holds a +-448 code.
    for (int64_t rb = 0; rb < 5; ++rb) {
        for (int64_t cb = 0; cb < 2; ++cb) {
            float amax = 0;
            bool has_max_code = false;
            for (int64_t r = rb * 128; r < std::min(R, rb * 128 + 128); ++r) {
                for (int64_t c = cb * 128; c < std::min(C, cb * 128 + 128); ++c) {
                    amax = std::max(amax, std::fabs(w[r * C + c]));
                    has_max_code = has_max_code || (q[r * C + c] & 0x7f) == 0x7e;
                }
            }
            EXPECT_EQ(scale[rb * 2 + cb], amax / 448.0f) << rb << "," << cb;
            EXPECT_TRUE(has_max_code) << rb << "," << cb;
        }
    }
    for (int64_t r = 0; r < R; ++r) {
        for (int64_t c = 0; c < C; ++c) {
            const float want = e4m3_to_f32(q[r * C + c]) * scale[(r / 128) * 2 + c / 128];
            ASSERT_EQ(bits(v->at(r, c)), bits(want)) << r << "," << c;
            // e4m3 keeps 3 mantissa bits: relative error <= 2^-4, plus the subnormal step.
            ASSERT_LE(std::fabs(v->at(r, c) - w[r * C + c]),
                      std::fabs(w[r * C + c]) / 16 + scale[(r / 128) * 2 + c / 128] / 512 + 1e-12f);
        }
    }
    EXPECT_EQ(v->at(0, 5), 0.f);
    // Slices that start mid-block and cover the ragged edge see the same values.
    for (int64_t r0 : {0, 1, 127, 130, 511, 512, 575}) {
        auto rows = ck->weight_rows("x.weight", R, C, r0, R - r0);
        ASSERT_TRUE(rows.ok());
        EXPECT_EQ(rows->row_offset, r0);
        for (int64_t r = r0; r < R; r += 7) {
            for (int64_t c = 0; c < C; c += 3) ASSERT_EQ(bits(rows->at(r - r0, c)), bits(v->at(r, c)));
        }
    }
    for (int64_t c0 : {0, 64, 127, 128, 199}) {
        auto cols = ck->weight_cols("x.weight", R, C, c0, C - c0);
        ASSERT_TRUE(cols.ok());
        for (int64_t r = 0; r < R; r += 5) {
            for (int64_t c = c0; c < C; ++c) ASSERT_EQ(bits(cols->at(r, c - c0)), bits(v->at(r, c)));
        }
    }
    EXPECT_EQ(v->bytes(), R * C + 10 * 4);
    // Ranges and shapes are checked.
    EXPECT_FALSE(ck->weight_rows("x.weight", R, C, 500, 77).ok());
    EXPECT_FALSE(ck->weight_cols("x.weight", R, C, -1, 10).ok());
    auto bad = ck->weight("x.weight", C, R);
    ASSERT_FALSE(bad.ok());
    EXPECT_NE(bad.status().message().find("model.safetensors: tensor 'x.weight' has shape [576, 200]"),
              std::string::npos)
        << bad.status().message();
}

TEST(Checkpoint, ScaleDefectsAreReported) {
    std::vector<uint8_t> q(200 * 130, 0x38);
    std::vector<float> s(8, 1.f);
    {
        TempDir tmp;  // missing scale
        write_model(tmp, {{"x.weight", DType::kF8E4M3, {200, 130}}}, {q.data()});
        auto ck = open_ok(tmp.path);
        auto v = ck->weight("x.weight", 200, 130);
        ASSERT_FALSE(v.ok());
        EXPECT_NE(v.status().message().find("x.weight_scale_inv"), std::string::npos) << v.status().message();
    }
    {
        TempDir tmp;  // grid [2, 1] instead of [2, 2]
        write_model(tmp, {{"x.weight", DType::kF8E4M3, {200, 130}}, {"x.weight_scale_inv", DType::kF32, {2, 1}}},
                    {q.data(), s.data()});
        auto v = open_ok(tmp.path)->weight("x.weight", 200, 130);
        ASSERT_FALSE(v.ok());
        EXPECT_NE(v.status().message().find("has shape [2, 1], expected [2, 2]"), std::string::npos)
            << v.status().message();
        EXPECT_NE(v.status().message().find("model.safetensors"), std::string::npos);
    }
    {
        TempDir tmp;  // BF16 scale
        write_model(tmp, {{"x.weight", DType::kF8E4M3, {200, 130}}, {"x.weight_scale_inv", DType::kBF16, {2, 2}}},
                    {q.data(), s.data()});
        auto v = open_ok(tmp.path)->weight("x.weight", 200, 130);
        ASSERT_FALSE(v.ok());
        EXPECT_NE(v.status().message().find("expected F32"), std::string::npos) << v.status().message();
    }
}

TEST(Checkpoint, EveryDtypeRoundTrips) {
    const std::vector<float> vals = {0.5f, -1.25f, 3.0f, -0.0078125f, 100.f, 2.5f};
    std::vector<uint16_t> bf(vals.size()), hf(vals.size());
    for (size_t i = 0; i < vals.size(); ++i) {
        bf[i] = f32_to_bf16(vals[i]);
        hf[i] = f32_to_f16(vals[i]);
    }
    std::vector<int32_t> ints(6, 1);
    TempDir tmp;
    write_model(tmp,
                {{"m.f32", DType::kF32, {2, 3}},
                 {"m.bf16", DType::kBF16, {2, 3}},
                 {"m.f16", DType::kF16, {2, 3}},
                 {"v.f32", DType::kF32, {6}},
                 {"v.bf16", DType::kBF16, {6}},
                 {"v.f16", DType::kF16, {6}},
                 {"v.i32", DType::kI32, {6}}},
                {vals.data(), bf.data(), hf.data(), vals.data(), bf.data(), hf.data(), ints.data()});
    auto ck = open_ok(tmp.path);
    ASSERT_NE(ck, nullptr);
    for (const char* n : {"m.f32", "m.bf16", "m.f16"}) {
        auto v = ck->weight(n, 2, 3);
        ASSERT_TRUE(v.ok()) << v.status().to_string();
        for (int64_t i = 0; i < 6; ++i) EXPECT_EQ(v->at(i / 3, i % 3), vals[i]) << n;  // all exactly representable
        auto r = ck->weight_rows(n, 2, 3, 1, 1);
        ASSERT_TRUE(r.ok());
        EXPECT_EQ(r->at(0, 2), vals[5]);
    }
    for (const char* n : {"v.f32", "v.bf16", "v.f16"}) {
        auto v = ck->vector_f32(n, 6);
        ASSERT_TRUE(v.ok()) << v.status().to_string();
        EXPECT_EQ(*v, vals) << n;
    }
    auto wrong_len = ck->vector_f32("v.f32", 5);
    ASSERT_FALSE(wrong_len.ok());
    EXPECT_NE(wrong_len.status().message().find("'v.f32'"), std::string::npos);
    auto ints_v = ck->vector_f32("v.i32", 6);
    ASSERT_FALSE(ints_v.ok());
    EXPECT_NE(ints_v.status().message().find("I32"), std::string::npos);
    auto missing = ck->weight("nope.weight", 1, 1);
    ASSERT_FALSE(missing.ok());
    EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
    EXPECT_NE(missing.status().message().find("'nope.weight'"), std::string::npos);
}

// ---- Corruption of a generated model: each defect fails open() or validate() with a reason ----

struct Corruption {
    const char* name;
    std::function<void(const std::string& dir)> apply;
    bool fails_at_open;
    std::vector<std::string> needles;  // each must appear in the error message
};

const char* kQa = "model.layers.0.self_attn.q_a_proj.weight";
const char* kNorm0 = "model.layers.0.input_layernorm.weight";
const char* kNorm1 = "model.layers.0.post_attention_layernorm.weight";

std::vector<Corruption> corruptions() {
    using nlohmann::ordered_json;
    auto shard = [](const std::string& dir, const std::string& t) { return dir + "/" + test::shard_of(dir, t); };
    return {
        {"truncated_shard",
         [=](const std::string& d) {
             const std::string p = shard(d, "lm_head.weight");
             fs::resize_file(p, fs::file_size(p) - 1000);
         },
         true,
         {"model-00002-of-00002.safetensors", "lm_head.weight", "truncated"}},
        {"header_length_past_eof",
         [=](const std::string& d) {
             std::string b = test::read_bytes(shard(d, kQa));
             b[6] = '\x7f';
             test::write_bytes(shard(d, kQa), b);
         },
         true,
         {"model-00001-of-00002.safetensors", "header length", "past the end"}},
        {"malformed_header_json",
         [=](const std::string& d) {
             std::string b = test::read_bytes(shard(d, kQa));
             b[8] = 'x';
             test::write_bytes(shard(d, kQa), b);
         },
         true,
         {"model-00001-of-00002.safetensors", "malformed header"}},
        {"offsets_out_of_range",
         [=](const std::string& d) {
             test::edit_header(shard(d, "lm_head.weight"), [](ordered_json& h) {
                 auto& o = h["lm_head.weight"]["data_offsets"];
                 o[0] = o[0].get<uint64_t>() + 4096;
                 o[1] = o[1].get<uint64_t>() + 4096;
             });
         },
         true,
         {"model-00002-of-00002.safetensors", "lm_head.weight", "past the end"}},
        {"overlapping_offsets",
         [=](const std::string& d) {
             test::edit_header(shard(d, kNorm1),
                               [](ordered_json& h) { h[kNorm1]["data_offsets"] = h[kNorm0]["data_offsets"]; });
         },
         true,
         {"model-00001-of-00002.safetensors", "overlap", kNorm0}},
        {"dtype_disagrees_with_config",
         [=](const std::string& d) {
             test::edit_header(shard(d, kQa), [](ordered_json& h) { h[kQa]["dtype"] = "U8"; });
         },
         false,
         {"model-00001-of-00002.safetensors", kQa, "U8", "F8_E4M3"}},
        {"shape_disagrees_with_config",
         [=](const std::string& d) {
             test::edit_header(shard(d, kQa), [](ordered_json& h) { h[kQa]["shape"] = {256, 96}; });
         },
         false,
         {"model-00001-of-00002.safetensors", kQa, "[256, 96]", "[96, 256]"}},
        {"missing_tensor",
         [=](const std::string& d) {
             const std::string t = "model.layers.1.mlp.experts.3.up_proj.weight";
             test::edit_header(shard(d, t), [&](ordered_json& h) { h.erase(t); });
             auto idx = nlohmann::json::parse(test::read_bytes(d + "/model.safetensors.index.json"));
             idx["weight_map"].erase(t);
             test::write_bytes(d + "/model.safetensors.index.json", idx.dump());
         },
         false,
         {"model.layers.1.mlp.experts.3.up_proj.weight", "missing"}},
        {"missing_scale",
         [=](const std::string& d) {
             const std::string t = "model.layers.0.mlp.down_proj.weight_scale_inv";
             test::edit_header(shard(d, t), [&](ordered_json& h) { h.erase(t); });
             auto idx = nlohmann::json::parse(test::read_bytes(d + "/model.safetensors.index.json"));
             idx["weight_map"].erase(t);
             test::write_bytes(d + "/model.safetensors.index.json", idx.dump());
         },
         false,
         {"model.layers.0.mlp.down_proj.weight_scale_inv", "no scale tensor"}},
        {"misshaped_scale",
         [=](const std::string& d) {
             const std::string t = std::string(kQa) + "_scale_inv";
             test::edit_header(shard(d, t), [&](ordered_json& h) { h[t]["shape"] = {2, 1}; });
         },
         false,
         {"model-00001-of-00002.safetensors", "q_a_proj.weight_scale_inv", "[2, 1]", "expected [1, 2]"}},
        {"negative_scale",
         [=](const std::string& d) {
             const std::string t = std::string(kQa) + "_scale_inv";
             std::string b = test::read_bytes(shard(d, t));
             uint64_t n = 0;
             for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(b[i]);
             auto h = nlohmann::json::parse(b.substr(8, n));
             const uint64_t off = 8 + n + h[t]["data_offsets"][0].get<uint64_t>();
             const float neg = -1.0f;
             std::memcpy(&b[off], &neg, 4);
             test::write_bytes(shard(d, t), b);
         },
         false,
         {"q_a_proj.weight_scale_inv", "block [0, 0]"}},
        {"index_names_missing_shard",
         [=](const std::string& d) {
             auto idx = nlohmann::json::parse(test::read_bytes(d + "/model.safetensors.index.json"));
             idx["weight_map"]["model.norm.weight"] = "model-00007-of-00009.safetensors";
             test::write_bytes(d + "/model.safetensors.index.json", idx.dump());
         },
         true,
         {"model.safetensors.index.json", "model-00007-of-00009.safetensors", "does not exist"}},
        {"index_maps_tensor_to_wrong_shard",
         [=](const std::string& d) {
             auto idx = nlohmann::json::parse(test::read_bytes(d + "/model.safetensors.index.json"));
             idx["weight_map"]["lm_head.weight"] = "model-00001-of-00002.safetensors";
             test::write_bytes(d + "/model.safetensors.index.json", idx.dump());
         },
         true,
         {"model.safetensors.index.json", "lm_head.weight", "model-00001-of-00002.safetensors"}},
        {"malformed_index",
         [=](const std::string& d) { test::write_bytes(d + "/model.safetensors.index.json", "{\"weight_map\": 3}"); },
         true,
         {"model.safetensors.index.json", "weight_map"}},
        {"malformed_config",
         [=](const std::string& d) { test::write_bytes(d + "/config.json", "{\"hidden_size\": 256,"); },
         true,
         {"config.json", "malformed"}},
        {"config_disagrees",
         [=](const std::string& d) {
             auto c = nlohmann::json::parse(test::read_bytes(d + "/config.json"));
             c["moe_intermediate_size"] = 64;
             test::write_bytes(d + "/config.json", c.dump());
         },
         false,
         {"experts.0.gate_proj.weight", "[128, 256]", "[64, 256]"}},
        {"bf16_where_config_says_fp8",
         [=](const std::string& d) {
             auto c = nlohmann::json::parse(test::read_bytes(d + "/config.json"));
             c.erase("quantization_config");
             test::write_bytes(d + "/config.json", c.dump());
         },
         false,
         {kQa, "F8_E4M3", "no quantization_config"}},
    };
}

class CorruptionTest : public testing::TestWithParam<size_t> {
protected:
    static void SetUpTestSuite() {
        pristine_ = new TempDir("ds_pristine_");
        test::make_test_model(pristine_->path, 7, 2);
    }
    static void TearDownTestSuite() {
        delete pristine_;
        pristine_ = nullptr;
    }
    static TempDir* pristine_;
};
TempDir* CorruptionTest::pristine_ = nullptr;

TEST_F(CorruptionTest, PristineModelValidates) {
    auto ck = open_ok(pristine_->path);
    ASSERT_NE(ck, nullptr);
    EXPECT_TRUE(ck->validate().ok()) << ck->validate().to_string();
}

TEST_P(CorruptionTest, IsReportedWithFileAndTensor) {
    const Corruption c = corruptions()[GetParam()];
    SCOPED_TRACE(c.name);
    TempDir tmp;
    fs::copy(pristine_->path, tmp.path, fs::copy_options::recursive | fs::copy_options::overwrite_existing);
    c.apply(tmp.path);
    auto ck = Checkpoint::open(tmp.path);
    Status s = ck.ok() ? ck.value()->validate() : ck.status();
    EXPECT_EQ(!ck.ok(), c.fails_at_open) << (ck.ok() ? "opened" : ck.status().to_string());
    ASSERT_FALSE(s.ok()) << "defect went unnoticed";
    for (const auto& n : c.needles) {
        EXPECT_NE(s.message().find(n), std::string::npos) << "'" << n << "' not in: " << s.message();
    }
}

INSTANTIATE_TEST_SUITE_P(All,
                         CorruptionTest,
                         testing::Range<size_t>(0, corruptions().size()),
                         [](const testing::TestParamInfo<size_t>& i) { return corruptions()[i.param].name; });

TEST(Checkpoint, MissingDirectoryAndFiles) {
    auto a = Checkpoint::open("/nonexistent/model/dir");
    ASSERT_FALSE(a.ok());
    EXPECT_NE(a.status().message().find("/nonexistent/model/dir"), std::string::npos);
    TempDir tmp;
    test::write_bytes(tmp.sub("config.json"), test::read_bytes(test::golden_dir("tiny-bf16") + "/config.json"));
    auto b = Checkpoint::open(tmp.path);
    ASSERT_FALSE(b.ok());
    EXPECT_NE(b.status().message().find("model.safetensors"), std::string::npos);
    test::write_bytes(tmp.sub("model.safetensors"), "");
    auto c = Checkpoint::open(tmp.path);
    ASSERT_FALSE(c.ok());
    EXPECT_NE(c.status().message().find("too short"), std::string::npos) << c.status().message();
}

}  // namespace
}  // namespace deepshard::model
