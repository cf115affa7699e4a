// Agreement with the official implementation (testdata/golden/*, from shared/golden): prefill
// logits at every position, hidden states after every block, final norm, expert choices, greedy
// continuation through the KV cache, and incremental == prefill.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "common/npy.h"
#include "model/checkpoint.h"
#include "model/engine.h"
#include "tests/model/routing_judge.h"

namespace deepshard::model {
namespace {

using golden::golden_dir;
using golden::read_json;

float max_abs_diff(const float* a, const float* b, int64_t n) {
    float m = 0;
    for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(a[i] - b[i]));
    return m;
}

int64_t argmax(const float* v, int64_t n) {
    return std::max_element(v, v + n) - v;
}

class GoldenTest : public testing::TestWithParam<std::string> {
protected:
    void SetUp() override {
        dir_ = golden_dir(GetParam());
        auto ck = Checkpoint::open(dir_);
        ASSERT_TRUE(ck.ok()) << ck.status().to_string();
        ckpt_ = std::shared_ptr<const Checkpoint>(std::move(ck).value());
        tokens_ = read_json(dir_ + "/tokens.json");
    }
    // The CPU engine through the engine seam (create_engine), as generate and the shard job use it.
    std::unique_ptr<Engine> make() {
        EngineOptions opt;
        opt.kv_budget_bytes = 64 << 20;
        opt.kv_block_size = 4;  // several blocks per sequence: exercises the block tables
        auto t = create_engine(Device::kCpu, ckpt_, ShardSpec{}, opt);
        EXPECT_TRUE(t.ok()) << t.status().to_string();
        return t.ok() ? std::move(t).value() : nullptr;
    }
    std::string dir_;
    std::shared_ptr<const Checkpoint> ckpt_;
    nlohmann::json tokens_;
};

TEST_P(GoldenTest, PrefillLogitsHiddenAndRoutingMatch) {
    auto model = make();
    ASSERT_NE(model, nullptr);
    const auto prompt = tokens_["tokens"].get<std::vector<int32_t>>();
    const int64_t T = static_cast<int64_t>(prompt.size());
    const int64_t H = ckpt_->config().hidden_size, V = ckpt_->config().vocab_size;

    std::vector<float> hidden;  // [layers+1, T, H]
    std::vector<float> final_norm;
    std::map<int64_t, std::vector<std::vector<int32_t>>> routing;
    ForwardHooks hooks;
    hooks.on_hidden = [&](int64_t, const float* h, int64_t n, int64_t d) { hidden.insert(hidden.end(), h, h + n * d); };
    hooks.on_final_norm = [&](const float* h, int64_t n, int64_t d) { final_norm.assign(h, h + n * d); };
    hooks.on_routing = [&](int64_t layer, int64_t, std::span<const int32_t> e, std::span<const float>) {
        routing[layer].emplace_back(e.begin(), e.end());
    };
    model->set_hooks(&hooks);
    SeqChunk chunk{.seq_id = 1, .tokens = prompt, .num_tokens = T, .start_pos = 0, .logits = LogitsMode::kAll};
    auto out = model->step(std::span<const SeqChunk>(&chunk, 1));
    ASSERT_TRUE(out.ok()) << out.status().to_string();
    ASSERT_EQ(out->rows, T);

    auto ref = read_npy_f32(dir_ + "/logits_prefill.npy");
    ASSERT_TRUE(ref.ok());
    ASSERT_EQ(ref->data.size(), static_cast<size_t>(T * V));
    EXPECT_LE(max_abs_diff(out->logits.data(), ref->data.data(), T * V), 1e-4f);
    const auto top1 = tokens_["prefill_top1"].get<std::vector<int64_t>>();
    for (int64_t t = 0; t < T; ++t) {
        EXPECT_EQ(argmax(out->logits.data() + t * V, V), top1[t]) << "position " << t;
    }

    auto href = read_npy_f32(dir_ + "/hidden_prefill.npy");
    ASSERT_TRUE(href.ok());
    ASSERT_EQ(hidden.size(), href->data.size());
    for (int64_t l = 0; l < href->shape[0]; ++l) {
        EXPECT_LE(max_abs_diff(hidden.data() + l * T * H, href->data.data() + l * T * H, T * H), 2e-4f)
            << "after block " << l - 1;
    }
    auto fref = read_npy_f32(dir_ + "/hidden_final_norm.npy");
    ASSERT_TRUE(fref.ok());
    ASSERT_EQ(final_norm.size(), fref->data.size());
    EXPECT_LE(max_abs_diff(final_norm.data(), fref->data.data(), T * H), 2e-4f);

    const auto moe = read_json(dir_ + "/moe_routing.json");
    ASSERT_FALSE(moe.empty());
    for (const auto& entry : moe) {
        const int64_t layer = entry["layer"].get<int64_t>();
        const auto& expected = entry["experts"];
        ASSERT_EQ(routing[layer].size(), expected.size()) << "layer " << layer;
        for (size_t t = 0; t < expected.size(); ++t) {
            const auto want = expected[t].get<std::set<int32_t>>();
            const std::set<int32_t> got(routing[layer][t].begin(), routing[layer][t].end());
            EXPECT_EQ(got, want) << "layer " << layer << " position " << t;
        }
    }
}

TEST_P(GoldenTest, GreedyContinuationThroughKvCacheMatches) {
    auto model = make();
    ASSERT_NE(model, nullptr);
    auto prompt = tokens_["prompt_for_generation"].get<std::vector<int32_t>>();
    const auto expected = tokens_["greedy_generated"].get<std::vector<int32_t>>();
    auto ref = read_npy_f32(dir_ + "/logits_gen.npy");
    ASSERT_TRUE(ref.ok());
    const int64_t V = ckpt_->config().vocab_size;

    std::vector<int32_t> generated;
    std::vector<int32_t> next = prompt;
    int64_t pos = 0;
    float worst = 0;
    for (size_t i = 0; i < expected.size(); ++i) {
        SeqChunk chunk{.seq_id = 7, .tokens = next, .num_tokens = static_cast<int64_t>(next.size()), .start_pos = pos};
        auto out = model->step(std::span<const SeqChunk>(&chunk, 1));
        ASSERT_TRUE(out.ok()) << out.status().to_string();
        worst = std::max(worst, max_abs_diff(out->logits.data(), ref->data.data() + i * V, V));
        const int32_t tok = static_cast<int32_t>(argmax(out->logits.data(), V));
        generated.push_back(tok);
        pos += static_cast<int64_t>(next.size());
        next = {tok};
    }
    EXPECT_EQ(generated, expected);
    EXPECT_LE(worst, 1e-4f);
}

TEST_P(GoldenTest, IncrementalEqualsPrefillAndBatchesMix) {
    auto model = make();
    ASSERT_NE(model, nullptr);
    const auto prompt = tokens_["tokens"].get<std::vector<int32_t>>();
    const int64_t T = static_cast<int64_t>(prompt.size());
    const int64_t V = ckpt_->config().vocab_size;
    auto ref = read_npy_f32(dir_ + "/logits_prefill.npy");
    ASSERT_TRUE(ref.ok());

    // Sequence 1 goes token by token. Sequence 2 goes in ragged chunks (5, 1, 7, ...) in the same
    // steps, so every step mixes a decode with a prefill chunk of another length.
    const std::vector<int64_t> chunk_sizes = {5, 1, 7, 3, 8};
    int64_t pos2 = 0;
    size_t ci = 0;
    float worst1 = 0, worst2 = 0;
    for (int64_t t = 0; t < T; ++t) {
        std::vector<SeqChunk> chunks;
        chunks.push_back({.seq_id = 1, .tokens = std::span<const int32_t>(prompt.data() + t, 1), .num_tokens = 1,
                          .start_pos = t, .logits = LogitsMode::kLast});
        int64_t n2 = 0;
        if (pos2 < T) {
            n2 = std::min<int64_t>(chunk_sizes[ci++ % chunk_sizes.size()], T - pos2);
            chunks.push_back({.seq_id = 2, .tokens = std::span<const int32_t>(prompt.data() + pos2, n2),
                              .num_tokens = n2, .start_pos = pos2, .logits = LogitsMode::kAll});
        }
        auto out = model->step(chunks);
        ASSERT_TRUE(out.ok()) << out.status().to_string();
        ASSERT_EQ(out->rows, 1 + n2);
        worst1 = std::max(worst1, max_abs_diff(out->logits.data(), ref->data.data() + t * V, V));
        for (int64_t i = 0; i < n2; ++i) {
            worst2 = std::max(worst2,
                              max_abs_diff(out->logits.data() + (1 + i) * V, ref->data.data() + (pos2 + i) * V, V));
        }
        pos2 += n2;
    }
    EXPECT_LE(worst1, 1e-4f);
    EXPECT_LE(worst2, 1e-4f);
    // Freed sequences return every block.
    model->release(1);
    model->release(2);
    EXPECT_EQ(model->kv_usage().free_blocks, model->kv_usage().total_blocks);
    EXPECT_EQ(model->kv_usage().sequences, 0);
}

// Prefix caching at the engine: sequence 2 starts from sequence 1's published prompt blocks and
// computes only the rest. Its logits are those of a cold prefill up to float32 summation order:
// the blocked GEMM and attention kernels tile rows by the chunk's size, so a different chunking may
// round differently (the same 1e-4 bound as incremental vs whole-prompt prefill below); the cached
// KV itself is bit for bit the cold one (it is the cold sequence's own blocks).
TEST_P(GoldenTest, ForkFromCachedPrefixEqualsColdPrefill) {
    auto model = make();
    ASSERT_NE(model, nullptr);
    const auto prompt = tokens_["tokens"].get<std::vector<int32_t>>();
    const int64_t T = static_cast<int64_t>(prompt.size());
    const int64_t V = ckpt_->config().vocab_size;
    const int64_t bs = model->kv_usage().block_size;
    ASSERT_GE(T, 2 * bs + 1);

    SeqChunk cold{.seq_id = 1, .tokens = prompt, .num_tokens = T, .start_pos = 0, .logits = LogitsMode::kAll};
    auto ref = model->step(std::span<const SeqChunk>(&cold, 1));
    ASSERT_TRUE(ref.ok()) << ref.status().to_string();
    KvBlockManager& blocks = model->kv_blocks();
    const int64_t cached = (T - 1) / bs;  // full blocks, leaving at least one token to compute
    std::vector<uint64_t> entries;
    for (int64_t k = 0; k < cached; ++k) {
        ASSERT_TRUE(blocks.publish(1000 + k, 1, k).ok());
        entries.push_back(1000 + k);
    }
    model->release(1);
    EXPECT_EQ(model->kv_usage().cached_blocks, cached);

    ASSERT_TRUE(blocks.fork(2, entries).ok());
    const int64_t start = cached * bs;
    // Writing into the cached prefix is refused before anything changes.
    SeqChunk overwrite{.seq_id = 2, .tokens = std::span<const int32_t>(prompt.data() + start - 1, T - start + 1),
                       .num_tokens = T - start + 1, .start_pos = start - 1, .logits = LogitsMode::kAll};
    EXPECT_EQ(model->step(std::span<const SeqChunk>(&overwrite, 1)).status().code(), StatusCode::kInvalidArgument);
    SeqChunk warm{.seq_id = 2, .tokens = std::span<const int32_t>(prompt.data() + start, T - start),
                  .num_tokens = T - start, .start_pos = start, .logits = LogitsMode::kAll};
    auto out = model->step(std::span<const SeqChunk>(&warm, 1));
    ASSERT_TRUE(out.ok()) << out.status().to_string();
    ASSERT_EQ(out->rows, T - start);
    float worst = 0;
    for (int64_t i = 0; i < T - start; ++i) {
        const float* a = out->logits.data() + i * V;
        const float* b = ref->logits.data() + (start + i) * V;
        for (int64_t v = 0; v < V; ++v) worst = std::max(worst, std::fabs(a[v] - b[v]));
    }
    EXPECT_LE(worst, 1e-4f);
    // The fork took no new blocks for the prefix: only the computed tail.
    EXPECT_EQ(model->kv_usage().used_blocks(), cached + (T - start + bs - 1) / bs);
    model->release(2);
    for (int64_t k = 0; k < cached; ++k) ASSERT_TRUE(blocks.evict(1000 + k).ok());
    EXPECT_EQ(model->kv_usage().free_blocks, model->kv_usage().total_blocks);
}

INSTANTIATE_TEST_SUITE_P(Golden, GoldenTest, testing::Values("tiny-bf16", "small-fp8"),
                         [](const testing::TestParamInfo<std::string>& i) {
                             std::string n = i.param;
                             std::replace(n.begin(), n.end(), '-', '_');
                             return n;
                         });

}  // namespace
}  // namespace deepshard::model
