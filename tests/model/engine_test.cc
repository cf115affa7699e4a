// The engine seam: ShardWeights lists exactly the bytes a rank holds (a device backend copies those
// ranges), shards of a TP stage split the sliced tensors between them, create_engine gives the CPU
// engine and a clear error for a device this build lacks, and `deepshard generate --device` reaches it.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "common/npy.h"
#include "kernels/kernels.h"
#include "model/cpu_engine.h"
#include "model/engine.h"
#include "tests/util/subprocess.h"

namespace deepshard::model {
namespace {

using testing_util::binary_path;
using testing_util::run_command;
using testing_util::source_path;

std::shared_ptr<const Checkpoint> golden(const std::string& name) {
    auto ck = Checkpoint::open(source_path("testdata/golden/" + name));
    EXPECT_TRUE(ck.ok()) << ck.status().to_string();
    return ck.ok() ? std::shared_ptr<const Checkpoint>(std::move(ck).value()) : nullptr;
}

// Reads `n` bytes at `offset` of the checkpoint file `index`, with plain file I/O (not the mapping).
std::vector<uint8_t> read_file(const Checkpoint& ck, int index, uint64_t offset, size_t n) {
    std::ifstream in(ck.dir() + "/" + ck.file_names()[index], std::ios::binary);
    in.seekg(static_cast<std::streamoff>(offset));
    std::vector<uint8_t> out(n);
    in.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(n));
    EXPECT_TRUE(in.good()) << "short read at " << offset;
    return out;
}

TEST(ShardWeightsTest, HeldTensorsPointAtTheirFileBytes) {
    for (const char* name : {"tiny-bf16", "small-fp8"}) {
        SCOPED_TRACE(name);
        auto ck = golden(name);
        ASSERT_NE(ck, nullptr);
        ShardSpec spec;  // a TP slice: rank 1 of 2, so row and column slices both appear
        spec.head_begin = ck->config().num_attention_heads / 2;
        spec.tp_rank = 1;
        spec.tp_size = 2;
        auto w = ShardWeights::load(ck, spec);
        ASSERT_TRUE(w.ok()) << w.status().to_string();
        std::set<std::string> names;
        for (const HeldTensor& t : (*w)->tensors()) {
            names.insert(t.name);
            const kernels::WeightView& v = *t.view;
            const size_t es = dtype_size(v.dtype);
            // First and last row of the view, read from the file at the listed offset and stride.
            for (int64_t r : {int64_t{0}, v.rows - 1}) {
                const auto bytes = read_file(*ck, t.file_index, t.file_offset + r * v.ld * es, v.cols * es);
                ASSERT_EQ(std::memcmp(bytes.data(), static_cast<const uint8_t*>(v.data) + r * v.ld * es, bytes.size()),
                          0)
                    << t.name << " row " << r;
            }
            if (v.dtype == DType::kF8E4M3) {
                ASSERT_NE(t.scale_info, nullptr) << t.name;
                EXPECT_EQ(t.scale_row0, v.row_offset / 128);
                EXPECT_GE(t.scale_rows, 1);
            }
        }
        const ModelConfig& c = ck->config();
        EXPECT_EQ(names.count("model.embed_tokens.weight"), 1u);
        EXPECT_EQ(names.count("lm_head.weight"), 1u);
        EXPECT_EQ(names.count(layer_prefix(c.num_hidden_layers - 1) + "self_attn.o_proj.weight"), 1u);
        EXPECT_EQ((*w)->num_heads(), c.num_attention_heads / 2);
    }
}

TEST(ShardWeightsTest, TensorParallelShardsSplitTheSlicedBytes) {
    auto ck = golden("small-fp8");
    ASSERT_NE(ck, nullptr);
    const ModelConfig& c = ck->config();
    auto whole = ShardWeights::load(ck, ShardSpec{});
    ASSERT_TRUE(whole.ok());
    int64_t parts = 0;
    for (int r = 0; r < 2; ++r) {
        ShardSpec s;
        s.head_begin = r * c.num_attention_heads / 2;
        s.head_end = (r + 1) * c.num_attention_heads / 2;
        s.vocab_begin = r * c.vocab_size / 2;
        s.vocab_end = (r + 1) * c.vocab_size / 2;
        s.tp_rank = r;
        s.tp_size = 2;
        s.experts.assign(static_cast<size_t>(c.n_routed_experts), false);
        for (int64_t e = r; e < c.n_routed_experts; e += 2) s.experts[e] = true;
        auto w = ShardWeights::load(ck, s);
        ASSERT_TRUE(w.ok()) << w.status().to_string();
        parts += (*w)->held_bytes();
        EXPECT_LT((*w)->held_bytes(), (*whole)->held_bytes());
    }
    // Replicated per rank: wq_a, wkv_a and the router of every layer (FP8 scale rows of slices may be
    // counted twice where a 128-row block straddles the cut, so compare within their size).
    int64_t replicated = 0;
    for (const LayerWeights& L : (*whole)->layers()) {
        replicated += L.wq_a.valid() ? L.wq_a.bytes() : 0;
        replicated += L.wkv_a.bytes() + (L.gate.valid() ? L.gate.bytes() : 0);
    }
    EXPECT_NEAR(static_cast<double>(parts - replicated), static_cast<double>((*whole)->held_bytes()),
                0.01 * static_cast<double>((*whole)->held_bytes()));
}

TEST(ShardWeightsTest, BadSpecsNameTheProblem) {
    auto ck = golden("tiny-bf16");
    ASSERT_NE(ck, nullptr);
    ShardSpec s;
    s.last_layer = ck->config().num_hidden_layers + 1;
    auto w = ShardWeights::load(ck, s);
    ASSERT_FALSE(w.ok());
    EXPECT_NE(w.status().message().find("layer range"), std::string::npos) << w.status().message();
    s = ShardSpec{};
    s.experts.assign(3, true);
    w = ShardWeights::load(ck, s);
    ASSERT_FALSE(w.ok());
    EXPECT_NE(w.status().message().find("expert mask"), std::string::npos) << w.status().message();
}

TEST(EngineTest, CreateEngineGivesTheCpuEngineAndNamesMissingDevices) {
    auto ck = golden("tiny-bf16");
    ASSERT_NE(ck, nullptr);
    EngineOptions opt;
    opt.kv_budget_bytes = 4 << 20;
    auto cpu = create_engine(Device::kCpu, ck, ShardSpec{}, opt);
    ASSERT_TRUE(cpu.ok()) << cpu.status().to_string();
    EXPECT_EQ((*cpu)->device(), Device::kCpu);
    EXPECT_NE(dynamic_cast<CpuEngine*>(cpu->get()), nullptr);
    const KvUsage u = (*cpu)->kv_usage();
    EXPECT_GT(u.total_blocks, 0);
    EXPECT_EQ(u.free_blocks, u.total_blocks);
    EXPECT_EQ(u.block_size, opt.kv_block_size);
    auto cuda = create_engine(Device::kCuda, ck, ShardSpec{}, opt);
    ASSERT_FALSE(cuda.ok());
    EXPECT_EQ(cuda.status().code(), StatusCode::kUnavailable);
    EXPECT_NE(cuda.status().message().find("cuda"), std::string::npos) << cuda.status().message();
    EXPECT_EQ(parse_device("gpu").status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(*parse_device("cuda"), Device::kCuda);
}

TEST(EngineTest, GenerateDeviceFlag) {
    const std::string model = source_path("testdata/golden/tiny-bf16");
    auto cpu = run_command({binary_path("deepshard"), "generate", "--model", model, "--tokens", "0,5,9",
                            "--max-tokens", "3", "--json", "--device", "cpu"},
                           std::chrono::seconds(120));
    EXPECT_EQ(cpu.exit_code, 0) << cpu.err;
    EXPECT_NE(cpu.out.find("generated_tokens"), std::string::npos) << cpu.out;
    auto cuda = run_command({binary_path("deepshard"), "generate", "--model", model, "--tokens", "0,5,9",
                             "--max-tokens", "3", "--device", "cuda"},
                            std::chrono::seconds(120));
    EXPECT_EQ(cuda.exit_code, 1);
    EXPECT_NE(cuda.err.find("device cuda"), std::string::npos) << cuda.err;
    auto bad = run_command({binary_path("deepshard"), "generate", "--model", model, "--tokens", "0", "--device", "tpu"},
                           std::chrono::seconds(60));
    EXPECT_NE(bad.exit_code, 0);
    EXPECT_NE(bad.err.find("tpu"), std::string::npos) << bad.err;
}

// generate runs fast unless told exact: exact gives the golden prompt logits, fast (the default)
// differs from them where the CPU has BF16 dot products (golden_fast_test judges by how much).
TEST(EngineTest, GenerateNumericsFlag) {
    const std::string model = source_path("testdata/golden/tiny-bf16");
    const std::string dir = testing_util::make_temp_dir("ds_numerics_");
    std::ifstream tin(model + "/tokens.json");
    std::string prompt;
    const auto tokens = nlohmann::json::parse(tin);
    for (int t : tokens["tokens"]) prompt += (prompt.empty() ? "" : ",") + std::to_string(t);
    auto run = [&](const std::string& out, std::vector<std::string> extra) {
        std::vector<std::string> cmd = {binary_path("deepshard"), "generate", "--model", model, "--tokens", prompt,
                                        "--max-tokens", "1", "--dump-logits", out};
        cmd.insert(cmd.end(), extra.begin(), extra.end());
        return run_command(cmd, std::chrono::seconds(120));
    };
    auto fast = run(dir + "/fast.npy", {});
    ASSERT_EQ(fast.exit_code, 0) << fast.err;
    EXPECT_NE(fast.err.find("numerics fast"), std::string::npos) << fast.err;
    auto exact = run(dir + "/exact.npy", {"--numerics", "exact"});
    ASSERT_EQ(exact.exit_code, 0) << exact.err;
    EXPECT_NE(exact.err.find("numerics exact"), std::string::npos) << exact.err;
    auto golden = read_npy_f32(model + "/logits_prefill.npy");
    auto f = read_npy_f32(dir + "/fast.npy");
    auto e = read_npy_f32(dir + "/exact.npy");
    ASSERT_TRUE(golden.ok() && f.ok() && e.ok());
    ASSERT_EQ(f->shape, golden->shape);
    ASSERT_EQ(e->shape, golden->shape);
    float exact_err = 0, fast_err = 0;
    for (size_t i = 0; i < golden->data.size(); ++i) {
        exact_err = std::max(exact_err, std::fabs(e->data[i] - golden->data[i]));
        fast_err = std::max(fast_err, std::fabs(f->data[i] - golden->data[i]));
    }
    EXPECT_LE(exact_err, 1e-4f);
    if (kernels::fast_is_exact()) {
        EXPECT_LE(fast_err, 1e-4f);
    } else {
        EXPECT_GT(fast_err, 1e-4f) << "generate ran exact by default";
    }
    auto bad = run(dir + "/bad.npy", {"--numerics", "bf16"});
    EXPECT_NE(bad.exit_code, 0);
    EXPECT_NE(bad.err.find("bf16"), std::string::npos) << bad.err;
}

// --head-fp8 reaches the engine from the command line (the prompt logits move off the golden ones; by
// how much is bounded per vocabulary row in head_fp8_test.cc), and a CUDA device refuses it by name.
TEST(EngineTest, GenerateHeadFp8Flag) {
    const std::string model = source_path("testdata/golden/tiny-bf16");
    const std::string dir = testing_util::make_temp_dir("ds_head_fp8_cli_");
    auto q = run_command({binary_path("deepshard"), "generate", "--model", model, "--tokens", "0,5,9", "--max-tokens",
                          "1", "--numerics", "exact", "--head-fp8", "--dump-logits", dir + "/q.npy"},
                         std::chrono::seconds(120));
    ASSERT_EQ(q.exit_code, 0) << q.err;
    auto e = run_command({binary_path("deepshard"), "generate", "--model", model, "--tokens", "0,5,9", "--max-tokens",
                          "1", "--numerics", "exact", "--dump-logits", dir + "/e.npy"},
                         std::chrono::seconds(120));
    ASSERT_EQ(e.exit_code, 0) << e.err;
    auto lq = read_npy_f32(dir + "/q.npy");
    auto le = read_npy_f32(dir + "/e.npy");
    ASSERT_TRUE(lq.ok() && le.ok());
    ASSERT_EQ(lq->shape, le->shape);
    float diff = 0;
    for (size_t i = 0; i < le->data.size(); ++i) diff = std::max(diff, std::fabs(lq->data[i] - le->data[i]));
    EXPECT_GT(diff, 1e-4f) << "--head-fp8 did not change the logits";
    auto cuda = run_command({binary_path("deepshard"), "generate", "--model", model, "--tokens", "0,5,9",
                             "--max-tokens", "1", "--device", "cuda", "--head-fp8"},
                            std::chrono::seconds(120));
    EXPECT_EQ(cuda.exit_code, 1);
    EXPECT_NE(cuda.err.find("--head-fp8"), std::string::npos) << cuda.err;
}

}  // namespace
}  // namespace deepshard::model
