// inspect: counts by kind / dtype / layer agree with the headers and the config, and the
// `deepshard inspect` command passes a good model and rejects corrupted ones with a reason.
#include "model/inspect.h"

#include <gtest/gtest.h>

#include <sstream>

#include "tests/model/loader_test_util.h"

namespace deepshard::model {
namespace {

using test::TempDir;
namespace fs = std::filesystem;
using testing_util::run_command;

TEST(Inspect, GoldenSmallCounts) {
    auto ck = std::move(Checkpoint::open(test::golden_dir("small-fp8"))).value();
    const ModelConfig& c = ck->config();
    ModelSummary s = summarize(*ck);
    EXPECT_EQ(s.total.bytes, 35408848u);  // index total_size
    EXPECT_EQ(s.total.params, count_parameters(c));
    EXPECT_EQ(s.other.tensors, 0);
    int64_t kinds_params = 0;
    uint64_t kinds_bytes = 0;
    for (const auto& [k, r] : s.by_kind) {
        kinds_params += r.params;
        kinds_bytes += r.bytes;
    }
    EXPECT_EQ(kinds_params, s.total.params);
    EXPECT_EQ(kinds_bytes, s.total.bytes);
    // 4 MoE layers x 16 experts x 3 matrices of 128 x 512, FP8 with a 1x4 / 4x1 scale grid each.
    const auto& ex = s.by_kind.at(TensorKind::kExpert);
    EXPECT_EQ(ex.params, 4 * 16 * 3 * 128 * 512);
    EXPECT_EQ(ex.bytes, 4u * 16 * 3 * (128 * 512 + 4 * 4));
    EXPECT_EQ(ex.bytes_by_dtype.at(DType::kF8E4M3), 4u * 16 * 3 * 128 * 512);
    EXPECT_EQ(s.by_kind.at(TensorKind::kEmbedding).params, 8192 * 512);
    EXPECT_EQ(s.by_kind.at(TensorKind::kHead).bytes, 8192u * 512 * 2);
    EXPECT_EQ(s.by_kind.at(TensorKind::kRouterBias).bytes_by_dtype.at(DType::kF32), 4u * 16 * 4);
    EXPECT_EQ(s.active_params, s.total.params - 4 * (16 - 6) * 3 * 128 * 512);
    ASSERT_EQ(s.layers.size(), 5u);
    EXPECT_FALSE(s.layers[0].moe);
    EXPECT_TRUE(s.layers[1].moe);
    EXPECT_EQ(s.layers[0].by_kind.at(TensorKind::kDenseMlp).params, 3 * 1024 * 512);
    EXPECT_EQ(s.layers[0].by_kind.count(TensorKind::kExpert), 0u);
    int64_t layer_sum = 0;
    for (const auto& L : s.layers) layer_sum += L.total.params;
    EXPECT_EQ(layer_sum + 2 * 8192 * 512 + 512, s.total.params);  // + embedding, head, final norm

    std::ostringstream out;
    ASSERT_TRUE(inspect_model(test::golden_dir("small-fp8"), out).ok());
    const std::string text = out.str();
    for (const char* n : {"fingerprint", "experts", "shared experts", "router", "F8_E4M3", "validation: OK", "moe"}) {
        EXPECT_NE(text.find(n), std::string::npos) << n << " missing from:\n" << text;
    }
}

// ---- The CLI: run build/bin/deepshard ----

class InspectCli : public testing::Test {
protected:
    void SetUp() override {
        bin_ = test::deepshard_binary();
        if (!fs::exists(bin_)) {
            GTEST_SKIP() << bin_ << " not built";
        }
    }
    testing_util::CommandResult run(const std::vector<std::string>& args) {
        std::vector<std::string> argv = {bin_};
        argv.insert(argv.end(), args.begin(), args.end());
        return run_command(argv, std::chrono::seconds(300));
    }
    std::string bin_;
};

TEST_F(InspectCli, MakeModelThenInspect) {
    TempDir tmp;
    auto mk = run({"make-model", "--preset", "tiny", "--out", tmp.path, "--seed", "5", "--shards", "2", "--set",
                   "num_hidden_layers=2", "--tokenizer",
                   test::source_dir() + "/testdata/tokenizer"});
    ASSERT_EQ(mk.exit_code, 0) << mk.out << mk.err;
    EXPECT_TRUE(fs::exists(tmp.sub("tokenizer.json")));
    // The tiny preset's 4096-id vocabulary grew to hold the tokenizer's 128815 ids.
    EXPECT_NE(mk.out.find("vocab_size 4096 -> 128896"), std::string::npos) << mk.out;
    auto cfg = ModelConfig::load(tmp.path);
    ASSERT_TRUE(cfg.ok()) << cfg.status().to_string();
    EXPECT_EQ(cfg->vocab_size, 128896);
    auto in = run({"inspect", "--model", tmp.path});
    ASSERT_EQ(in.exit_code, 0) << in.out << in.err;
    EXPECT_NE(in.out.find("tokenizer: 128815 ids (model vocabulary 128896)"), std::string::npos) << in.out;
    EXPECT_NE(in.out.find("validation: OK"), std::string::npos) << in.out;
    EXPECT_NE(in.out.find("fingerprint"), std::string::npos);
    EXPECT_NE(in.out.find("layers 2"), std::string::npos) << in.out;

    // Corrupted variants: non-zero exit and the reason, naming the file / tensor.
    const std::string shard2 = tmp.sub("model-00002-of-00002.safetensors");
    const std::string saved = test::read_bytes(shard2);
    test::write_bytes(shard2, saved.substr(0, saved.size() / 2));
    auto trunc = run({"inspect", "--model", tmp.path});
    EXPECT_NE(trunc.exit_code, 0);
    EXPECT_NE(trunc.err.find("model-00002-of-00002.safetensors"), std::string::npos) << trunc.err;
    EXPECT_NE(trunc.err.find("truncated"), std::string::npos) << trunc.err;
    test::write_bytes(shard2, saved);

    const std::string qa = "model.layers.1.self_attn.q_a_proj.weight";
    const std::string qa_shard = tmp.sub(test::shard_of(tmp.path, qa));
    const std::string saved_qa = test::read_bytes(qa_shard);
    test::edit_header(qa_shard, [&](nlohmann::ordered_json& h) { h[qa + "_scale_inv"]["shape"] = {2, 1}; });
    auto scale = run({"inspect", "--model", tmp.path});
    EXPECT_NE(scale.exit_code, 0);
    EXPECT_NE(scale.err.find(qa + "_scale_inv"), std::string::npos) << scale.err;
    test::write_bytes(qa_shard, saved_qa);

    // The tokenizer is validated with the checkpoint: one whose ids do not fit the vocabulary (the
    // real DeepSeek tokenizer beside tiny's 4096 rows) or that is itself malformed fails inspect, and
    // make-model will not write such a pair.
    const std::string small = tmp.sub("small_vocab");
    auto mk_small = run({"make-model", "--preset", "tiny", "--out", small, "--set", "num_hidden_layers=1"});
    ASSERT_EQ(mk_small.exit_code, 0) << mk_small.out << mk_small.err;
    for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) {
        fs::copy_file(tmp.sub(f), small + "/" + f);
    }
    auto misfit = run({"inspect", "--model", small});
    EXPECT_NE(misfit.exit_code, 0);
    EXPECT_NE(misfit.err.find("but its tokenizer uses 128815"), std::string::npos) << misfit.err;
    const std::string saved_tok = test::read_bytes(tmp.sub("tokenizer.json"));
    auto tok = nlohmann::json::parse(saved_tok);
    tok["added_tokens"].push_back({{"id", 128900}, {"content", "<｜begin▁of▁sentence｜>"}});
    test::write_bytes(tmp.sub("tokenizer.json"), tok.dump());
    auto dup = run({"inspect", "--model", tmp.path});
    EXPECT_NE(dup.exit_code, 0);
    EXPECT_NE(dup.err.find("is already added_tokens[0]'s"), std::string::npos) << dup.err;
    test::write_bytes(tmp.sub("tokenizer.json"), saved_tok);
    auto refused = run({"make-model", "--preset", "tiny", "--out", tmp.sub("misfit"), "--set", "vocab_size=4096",
                        "--tokenizer", test::source_dir() + "/testdata/tokenizer"});
    EXPECT_NE(refused.exit_code, 0);
    EXPECT_NE(refused.err.find("vocab_size"), std::string::npos) << refused.err;

    auto idx = nlohmann::json::parse(test::read_bytes(tmp.sub("model.safetensors.index.json")));
    idx["weight_map"]["model.norm.weight"] = "model-00003-of-00003.safetensors";
    test::write_bytes(tmp.sub("model.safetensors.index.json"), idx.dump());
    auto missing = run({"inspect", "--model", tmp.path});
    EXPECT_NE(missing.exit_code, 0);
    EXPECT_NE(missing.err.find("model-00003-of-00003.safetensors"), std::string::npos) << missing.err;

    auto bad_set = run({"make-model", "--preset", "tiny", "--out", tmp.sub("x"), "--set", "n_group=3"});
    EXPECT_NE(bad_set.exit_code, 0);
    EXPECT_NE(bad_set.err.find("n_group"), std::string::npos) << bad_set.err;
}

// The acceptance check: the small FP8 preset (real vocabulary, ~0.6 GB) passes inspect.
TEST_F(InspectCli, SmallFp8PresetPassesInspect) {
    TempDir tmp;
    auto mk = run({"make-model", "--preset", "small", "--dtype", "fp8", "--out", tmp.path, "--seed", "1"});
    ASSERT_EQ(mk.exit_code, 0) << mk.out << mk.err;
    auto in = run({"inspect", "--model", tmp.path});
    ASSERT_EQ(in.exit_code, 0) << in.out << in.err;
    EXPECT_NE(in.out.find("validation: OK"), std::string::npos) << in.out;
    EXPECT_NE(in.out.find("vocab 129280"), std::string::npos) << in.out;
}

// make-model refuses an explicit vocabulary its tokenizer overflows; inspect and generate refuse a
// model whose tokenizer was put next to it afterwards. Every refusal names both numbers.
TEST_F(InspectCli, VocabularySmallerThanTokenizerIsRefused) {
    TempDir tmp;
    const std::string tokenizer = test::source_dir() + "/testdata/tokenizer";
    auto mk = run({"make-model", "--preset", "tiny", "--out", tmp.sub("explicit"), "--set", "num_hidden_layers=1",
                   "--set", "vocab_size=4096", "--tokenizer", tokenizer});
    EXPECT_NE(mk.exit_code, 0);
    EXPECT_NE(mk.err.find("4096"), std::string::npos) << mk.err;
    EXPECT_NE(mk.err.find("128815"), std::string::npos) << mk.err;
    EXPECT_FALSE(fs::exists(tmp.sub("explicit/config.json")));

    mk = run({"make-model", "--preset", "tiny", "--out", tmp.path, "--set", "num_hidden_layers=1"});
    ASSERT_EQ(mk.exit_code, 0) << mk.out << mk.err;
    for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) {
        fs::copy_file(tokenizer + "/" + f, tmp.sub(f));
    }
    auto in = run({"inspect", "--model", tmp.path});
    EXPECT_NE(in.exit_code, 0);
    EXPECT_NE(in.err.find("4096"), std::string::npos) << in.err;
    EXPECT_NE(in.err.find("128815"), std::string::npos) << in.err;
    auto gen = run({"generate", "--model", tmp.path, "--tokens", "1,2,3", "--max-tokens", "1"});
    EXPECT_NE(gen.exit_code, 0);
    EXPECT_NE(gen.err.find("4096"), std::string::npos) << gen.err;
    EXPECT_NE(gen.err.find("128815"), std::string::npos) << gen.err;
}

}  // namespace
}  // namespace deepshard::model
