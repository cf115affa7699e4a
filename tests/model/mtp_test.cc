// The MTP module in the checkpoint and on the CPU engine: make-model writes it under the release's
// names (its embedding and head are copies of the main ones), ShardWeights loads it only on the
// shard with the head and names a missing or misshaped tensor, and the engine drafts from it within
// the sequence's reserved KV blocks (with the mirrored module the drafts follow the main model).
#include <algorithm>
#include <cstring>
#include <filesystem>

#include <gtest/gtest.h>

#include "model/checkpoint.h"
#include "model/engine.h"
#include "tests/model/loader_test_util.h"

namespace deepshard::model::test {
namespace {

using testing_util::make_temp_dir;

ModelConfig mtp_config() {
    ModelConfig c = small_test_config(/*fp8=*/true);
    c.num_hidden_layers = 1;
    c.first_k_dense_replace = 0;
    c.num_nextn_predict_layers = 1;
    return c;
}

std::shared_ptr<const Checkpoint> open(const std::string& dir) {
    auto ck = Checkpoint::open(dir);
    EXPECT_TRUE(ck.ok()) << ck.status().to_string();
    return ck.ok() ? std::shared_ptr<const Checkpoint>(std::move(ck).value()) : nullptr;
}

TEST(Mtp, MakeModelWritesTheReleaseLayoutAndShardWeightsLoadsItOnTheLastShard) {
    const std::string dir = make_temp_dir("ds_mtp_layout_");
    MakeModelOptions opt;
    opt.seed = 3;
    ASSERT_TRUE(make_model(mtp_config(), dir, opt).ok());
    auto ck = open(dir);
    ASSERT_NE(ck, nullptr);
    ASSERT_TRUE(ck->validate().ok());
    const ModelConfig& c = ck->config();
    const std::string p = "model.layers." + std::to_string(c.num_hidden_layers) + ".";
    for (const char* name : {"embed_tokens.weight", "enorm.weight", "hnorm.weight", "eh_proj.weight",
                             "shared_head.norm.weight", "shared_head.head.weight", "self_attn.q_a_proj.weight",
                             "mlp.gate.weight", "mlp.experts.0.down_proj.weight", "mlp.shared_experts.up_proj.weight"}) {
        EXPECT_NE(ck->find(p + name), nullptr) << p + name;
    }
    EXPECT_EQ(ck->find(p + "eh_proj.weight")->shape, (std::vector<int64_t>{c.hidden_size, 2 * c.hidden_size}));
    // The module's embedding and head are byte copies of the main ones, like the release's.
    auto same_bytes = [&](const std::string& a, const std::string& b) {
        const TensorInfo* x = ck->find(a);
        const TensorInfo* y = ck->find(b);
        auto vx = ck->weight(a, x->shape[0], x->shape[1]);
        auto vy = ck->weight(b, y->shape[0], y->shape[1]);
        return vx.ok() && vy.ok() && vx->bytes() == vy->bytes() &&
               std::memcmp(vx->data, vy->data, static_cast<size_t>(vx->bytes())) == 0;
    };
    EXPECT_TRUE(same_bytes("model.embed_tokens.weight", p + "embed_tokens.weight"));
    EXPECT_TRUE(same_bytes("lm_head.weight", p + "shared_head.head.weight"));

    ShardSpec spec;
    spec.has_mtp = true;
    auto w = ShardWeights::load(ck, spec);
    ASSERT_TRUE(w.ok()) << w.status().to_string();
    ASSERT_NE((*w)->mtp(), nullptr);
    EXPECT_EQ((*w)->mtp()->block.index, c.num_hidden_layers);
    EXPECT_TRUE((*w)->mtp()->block.moe);
    EXPECT_EQ((*w)->mtp()->eh_proj.cols, 2 * c.hidden_size);
    spec.has_mtp = false;
    auto plain = ShardWeights::load(ck, spec);
    ASSERT_TRUE(plain.ok());
    EXPECT_EQ((*plain)->mtp(), nullptr) << "held only when asked for";
    // Not on a shard without the head (an earlier pipeline stage).
    spec.has_mtp = true;
    spec.has_head = false;
    auto early = ShardWeights::load(ck, spec);
    ASSERT_FALSE(early.ok());
    EXPECT_NE(early.status().message().find("last pipeline stage"), std::string::npos) << early.status().to_string();
    std::filesystem::remove_all(dir);
}

TEST(Mtp, AMissingOrMisshapedTensorIsNamed) {
    const std::string dir = make_temp_dir("ds_mtp_missing_");
    MakeModelOptions opt;
    opt.shards = 1;
    ASSERT_TRUE(make_model(mtp_config(), dir, opt).ok());
    const std::string file = dir + "/" + open(dir)->file_names()[0];
    {
        // Misshaped: eh_proj declared [2H, H] instead of [H, 2H] (same bytes).
        const std::string copy = make_temp_dir("ds_mtp_shape_");
        std::filesystem::copy(dir, copy, std::filesystem::copy_options::recursive);
        const std::string f = copy + "/" + std::filesystem::path(file).filename().string();
        edit_header(f, [](nlohmann::ordered_json& h) {
            for (auto& [name, t] : h.items()) {
                if (name.find("eh_proj.weight") != std::string::npos) {
                    const int64_t rows = t["shape"][0], cols = t["shape"][1];
                    t["shape"] = {cols, rows};
                }
            }
        });
        ShardSpec spec;
        spec.has_mtp = true;
        auto w = ShardWeights::load(open(copy), spec);
        ASSERT_FALSE(w.ok());
        EXPECT_NE(w.status().message().find("eh_proj.weight"), std::string::npos) << w.status().to_string();
        std::filesystem::remove_all(copy);
    }
    // Missing: a config that promises an MTP module over a checkpoint without one.
    const std::string bare = make_temp_dir("ds_mtp_bare_");
    ModelConfig c = mtp_config();
    c.num_nextn_predict_layers = 0;
    ASSERT_TRUE(make_model(c, bare, opt).ok());
    auto j = nlohmann::json::parse(read_bytes(bare + "/config.json"));
    j["num_nextn_predict_layers"] = 1;
    write_bytes(bare + "/config.json", j.dump(2));
    ShardSpec spec;
    spec.has_mtp = true;
    auto w = ShardWeights::load(open(bare), spec);
    ASSERT_FALSE(w.ok());
    EXPECT_NE(w.status().message().find("model.layers.1.embed_tokens.weight"), std::string::npos)
        << w.status().to_string();
    std::filesystem::remove_all(bare);
    std::filesystem::remove_all(dir);
}

TEST(Mtp, TheCpuEngineDraftsWithinTheReservedBlocks) {
    const std::string dir = make_temp_dir("ds_mtp_engine_");
    MakeModelOptions opt;
    opt.mtp_init = MakeModelOptions::MtpInit::kMirror;
    ModelConfig cfg = mtp_config();
    cfg.quantization.fp8 = false;
    ASSERT_TRUE(make_model(cfg, dir, opt).ok());
    auto ck = open(dir);
    ShardSpec spec;
    spec.has_mtp = true;
    EngineOptions eo;
    eo.kv_block_size = 16;
    eo.kv_max_blocks = 8;
    auto engine = create_engine(Device::kCpu, ck, spec, eo);
    ASSERT_TRUE(engine.ok()) << engine.status().to_string();
    Engine& e = **engine;
    ASSERT_TRUE(e.has_mtp());
    const int64_t H = cfg.hidden_size, V = cfg.vocab_size;

    // Greedy decoding of 12 tokens with the main model alone (the reference).
    std::vector<int32_t> tokens = {5, 77, 300, 12, 9, 41, 8};
    const size_t plen = tokens.size();
    for (int i = 0; i < 12; ++i) {
        SeqChunk ch;
        ch.seq_id = 1;
        ch.tokens = std::span<const int32_t>(tokens).subspan(i == 0 ? 0 : tokens.size() - 1);
        ch.start_pos = i == 0 ? 0 : static_cast<int64_t>(tokens.size()) - 1;
        auto out = e.step(std::span<const SeqChunk>(&ch, 1));
        ASSERT_TRUE(out.ok()) << out.status().to_string();
        const float* row = out->logits.data();
        tokens.push_back(static_cast<int32_t>(std::max_element(row, row + V) - row));
    }
    e.release(1);

    // The prompt with its hidden states kept and 3 positions held past it, then drafts after the
    // first generated token: with the mirrored module they mostly follow the reference.
    SeqChunk ch;
    ch.seq_id = 2;
    ch.tokens = std::span<const int32_t>(tokens).first(plen);
    ch.keep_hidden = true;
    ch.reserve_ahead = 2;
    auto out = e.step(std::span<const SeqChunk>(&ch, 1));
    ASSERT_TRUE(out.ok()) << out.status().to_string();
    ASSERT_EQ(out->hidden.size(), plen * H);
    std::vector<int32_t> next(tokens.begin() + 1, tokens.begin() + static_cast<int64_t>(plen) + 1);
    MtpChunk m;
    m.seq_id = 2;
    m.start_pos = 0;
    m.hidden = out->hidden;
    m.next_tokens = next;
    m.drafts = 3;
    auto drafts = e.mtp_draft(std::span<const MtpChunk>(&m, 1));
    ASSERT_TRUE(drafts.ok()) << drafts.status().to_string();
    ASSERT_EQ(drafts->size(), 1u);
    ASSERT_EQ((*drafts)[0].size(), 3u);
    int right = 0;
    for (int i = 0; i < 3; ++i) right += (*drafts)[0][i] == tokens[plen + 1 + i] ? 1 : 0;
    EXPECT_GE(right, 1) << "the mirrored module predicts like the main model";
    // Rows past the reserved blocks are refused before anything runs.
    m.start_pos = 16 * 8;
    auto bad = e.mtp_draft(std::span<const MtpChunk>(&m, 1));
    ASSERT_FALSE(bad.ok());
    EXPECT_NE(bad.status().message().find("outside its reserved KV blocks"), std::string::npos);
    // A rejected draft's blocks go when the sequence continues from an earlier position.
    const int64_t used = e.kv_usage().used_blocks();
    SeqChunk again;
    again.seq_id = 2;
    again.tokens = std::span<const int32_t>(tokens).subspan(plen, 1);
    again.start_pos = static_cast<int64_t>(plen);
    ASSERT_TRUE(e.step(std::span<const SeqChunk>(&again, 1)).ok());
    EXPECT_LE(e.kv_usage().used_blocks(), used);
    std::filesystem::remove_all(dir);
}

TEST(Mtp, AShardWithoutTheModuleSaysSo) {
    auto ck = open(golden_dir("tiny-bf16"));
    ASSERT_NE(ck, nullptr);
    ShardSpec spec;
    spec.has_mtp = true;  // the golden model has none: nothing to hold
    auto engine = create_engine(Device::kCpu, ck, spec, EngineOptions{});
    ASSERT_TRUE(engine.ok());
    EXPECT_FALSE((*engine)->has_mtp());
    auto r = (*engine)->mtp_draft({});
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kUnimplemented);
    EXPECT_NE(r.status().message().find("no MTP module"), std::string::npos) << r.status().to_string();
}

}  // namespace
}  // namespace deepshard::model::test
