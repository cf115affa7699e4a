// MLA attention (kernels/cuda/mla_attention.h). The reference is a double-precision transcription of
// MODEL_SPEC §2 "absorbed" attention over a paged cache (independent of kernels::mla_attention, the
// CPU twin); the reference itself is checked against the CPU model on the tiny-bf16
// golden checkpoint by recomputing a whole layer around it. Host-side logic (argument checks, scratch
// sizing, split ranges and their merge, block-table checks) runs everywhere; the GPU comparisons
// (decode with and without split-K, prefill with the causal mask, NaN poisoning) skip without a device.
#include "kernels/cuda/mla_attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "kernels/kernels.h"
#include "model/checkpoint.h"
#include "model/cpu_engine.h"
#include "tests/kernels_cuda/cuda_test_util.h"

namespace deepshard::kernels::cuda {
namespace {

using testing::from_device;
using testing::to_device;

// A random paged cache on the host: num_layers layers in model::KvCache's layout, padded slots
// (token_stride > latent + rope), block ids shuffled over the pool, ragged lengths. Table entries past
// a sequence's blocks hold garbage ids that must never be read.
struct HostCache {
    int32_t latent = 0, rope = 0, block_size = 0, num_blocks = 0, max_blocks = 0, layer = 1;
    int64_t num_layers = 2, token_stride = 0, block_stride = 0;
    std::vector<float> pool;
    std::vector<int32_t> tables;  // [rows, max_blocks]
    std::vector<int32_t> lens;

    const float* slot(int64_t row, int64_t pos) const {
        const int32_t id = tables[row * max_blocks + pos / block_size];
        return pool.data() + layer * block_size * token_stride + id * block_stride + (pos % block_size) * token_stride;
    }
    // The layer's view of a device copy of `pool` (float32, or converted to `dtype`).
    MlaCache view(const void* base, KvDType dtype = KvDType::kF32) const {
        MlaCache c;
        c.dtype = dtype;
        c.data = static_cast<const char*>(base) + layer * block_size * token_stride * kv_dtype_size(dtype);
        c.block_stride = block_stride;
        c.token_stride = token_stride;
        c.block_size = block_size;
        c.num_blocks = num_blocks;
        c.latent_dim = latent;
        c.rope_dim = rope;
        return c;
    }
};

HostCache make_cache(std::mt19937& rng,
                     const std::vector<int32_t>& lens,
                     int32_t latent,
                     int32_t rope,
                     int32_t block_size,
                     int32_t pad) {
    HostCache c;
    c.latent = latent;
    c.rope = rope;
    c.block_size = block_size;
    c.lens = lens;
    c.token_stride = latent + rope + pad;
    c.block_stride = c.num_layers * block_size * c.token_stride;
    int32_t used = 0;
    for (int32_t len : lens) {
        c.max_blocks = std::max(c.max_blocks, (len + block_size - 1) / block_size);
        used += (len + block_size - 1) / block_size;
    }
    c.max_blocks += 2;  // slack entries that must not be read
    c.num_blocks = used + 5;
    std::vector<int32_t> ids(c.num_blocks);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    c.tables.assign(lens.size() * c.max_blocks, 1 << 30);
    int32_t next = 0;
    for (size_t r = 0; r < lens.size(); ++r) {
        for (int32_t k = 0; k < (lens[r] + block_size - 1) / block_size; ++k)
            c.tables[r * c.max_blocks + k] = ids[next++];
    }
    std::normal_distribution<float> nd(0.0f, 1.0f);
    c.pool.resize(static_cast<size_t>(c.num_blocks) * c.block_stride);
    for (float& v : c.pool) v = nd(rng);
    return c;
}

// Queries [n, heads, latent] and [n, heads, rope], dense.
struct HostQueries {
    std::vector<float> lat, pe;
};
HostQueries make_queries(std::mt19937& rng, int64_t n, int32_t heads, int32_t latent, int32_t rope) {
    std::normal_distribution<float> nd(0.0f, 1.0f);
    HostQueries q;
    q.lat.resize(n * heads * latent);
    q.pe.resize(n * heads * rope);
    for (float& v : q.lat) v = nd(rng);
    for (float& v : q.pe) v = nd(rng);
    return q;
}

// MODEL_SPEC §2 absorbed attention of one (query, head) in double: softmax over [0, len) of
// (q_lat . latent_j + q_pe . rope_j) * scale, output sum_j p_j latent_j. `slot(j)` gives cached token j.
// When lse is given, it receives log(sum_j exp(s_j)) (for checking the split merge).
template <typename Slot>
std::vector<double> reference_attention(const float* q_lat,
                                        const float* q_pe,
                                        int32_t latent,
                                        int32_t rope,
                                        int64_t begin,
                                        int64_t end,
                                        double scale,
                                        Slot slot,
                                        double* lse = nullptr) {
    std::vector<double> s(static_cast<size_t>(std::max<int64_t>(end - begin, 0))), out(latent, 0.0);
    double mx = -INFINITY;
    for (int64_t j = begin; j < end; ++j) {
        const float* kv = slot(j);
        double dot = 0.0;
        for (int32_t d = 0; d < latent; ++d) dot += static_cast<double>(q_lat[d]) * kv[d];
        for (int32_t d = 0; d < rope; ++d) dot += static_cast<double>(q_pe[d]) * kv[latent + d];
        s[j - begin] = dot * scale;
        mx = std::max(mx, s[j - begin]);
    }
    double sum = 0.0;
    for (double& v : s) sum += (v = std::exp(v - mx));
    for (int64_t j = begin; j < end; ++j) {
        const float* kv = slot(j);
        for (int32_t d = 0; d < latent; ++d) out[d] += s[j - begin] / sum * kv[d];
    }
    if (lse != nullptr)
        *lse = end > begin ? mx + std::log(sum) : -INFINITY;
    return out;
}

constexpr double kScale = 0.1352338;  // DeepSeek-V3's 192^-0.5 * mscale^2

// ---------------------------------------------------------------------------------------------
// Host-side logic (runs without a GPU).

MlaAttentionArgs valid_args(const float* fake, const int32_t* fake_i, float* fake_out) {
    MlaAttentionArgs a;
    a.cache.data = fake;
    a.cache.latent_dim = 512;
    a.cache.rope_dim = 64;
    a.cache.block_size = 16;
    a.cache.num_blocks = 100;
    a.cache.token_stride = 576;
    a.cache.block_stride = 3 * 16 * 576;
    a.num_heads = 16;
    a.softmax_scale = static_cast<float>(kScale);
    a.num_queries = 4;
    a.q_lat = fake;
    a.q_lat_ld_head = 512;
    a.q_lat_ld_token = 16 * 512;
    a.q_pe = fake + 128;
    a.q_pe_ld_head = 192;
    a.q_pe_ld_token = 16 * 192;
    a.block_tables = fake_i;
    a.num_table_rows = 4;
    a.max_blocks_per_seq = 8;
    a.out = fake_out;
    a.out_ld_head = 512;
    a.out_ld_token = 16 * 512;
    return a;
}

TEST(MlaAttentionHost, ArgumentErrorsNameTheField) {
    // Host pointers stand in for device ones: every case below fails before any CUDA call.
    std::vector<float> fake(16), out(16);
    std::vector<int32_t> fake_i(16);
    const MlaAttentionArgs good = valid_args(fake.data(), fake_i.data(), out.data());
    ASSERT_TRUE(validate_mla_args("mla_decode", good).ok()) << validate_mla_args("mla_decode", good).to_string();

    struct Case {
        const char* field;
        void (*mutate)(MlaAttentionArgs&);
    };
    const Case cases[] = {
        {"num_heads", [](MlaAttentionArgs& a) { a.num_heads = 0; }},
        {"cache.latent_dim", [](MlaAttentionArgs& a) { a.cache.latent_dim = 513; }},
        {"cache.latent_dim", [](MlaAttentionArgs& a) { a.cache.latent_dim = 0; }},
        {"cache.rope_dim", [](MlaAttentionArgs& a) { a.cache.rope_dim = -1; }},
        {"cache.rope_dim", [](MlaAttentionArgs& a) { a.cache.rope_dim = 129; }},
        {"cache.block_size", [](MlaAttentionArgs& a) { a.cache.block_size = 0; }},
        {"cache.num_blocks", [](MlaAttentionArgs& a) { a.cache.num_blocks = 0; }},
        {"cache.token_stride", [](MlaAttentionArgs& a) { a.cache.token_stride = 575; }},
        {"cache.block_stride", [](MlaAttentionArgs& a) { a.cache.block_stride = 16 * 576 - 1; }},
        {"cache.data", [](MlaAttentionArgs& a) { a.cache.data = nullptr; }},
        {"softmax_scale", [](MlaAttentionArgs& a) { a.softmax_scale = NAN; }},
        {"softmax_scale", [](MlaAttentionArgs& a) { a.softmax_scale = 0.0f; }},
        {"num_queries", [](MlaAttentionArgs& a) { a.num_queries = -1; }},
        {"q_lat is null", [](MlaAttentionArgs& a) { a.q_lat = nullptr; }},
        {"q_pe is null", [](MlaAttentionArgs& a) { a.q_pe = nullptr; }},
        {"out is null", [](MlaAttentionArgs& a) { a.out = nullptr; }},
        {"block_tables is null", [](MlaAttentionArgs& a) { a.block_tables = nullptr; }},
        {"q_lat strides", [](MlaAttentionArgs& a) { a.q_lat_ld_head = 511; }},
        {"q_lat strides", [](MlaAttentionArgs& a) { a.q_lat_ld_token = 15 * 512; }},
        {"q_pe strides", [](MlaAttentionArgs& a) { a.q_pe_ld_head = 63; }},
        {"q_pe strides", [](MlaAttentionArgs& a) { a.q_pe_ld_token = 15 * 192 + 63; }},
        {"out strides", [](MlaAttentionArgs& a) { a.out_ld_token = 100; }},
        {"num_table_rows", [](MlaAttentionArgs& a) { a.num_table_rows = 0; }},
        {"max_blocks_per_seq", [](MlaAttentionArgs& a) { a.max_blocks_per_seq = 0; }},
        {"max_blocks_per_seq", [](MlaAttentionArgs& a) { a.max_blocks_per_seq = 1 << 28; }},
    };
    for (const Case& c : cases) {
        MlaAttentionArgs a = good;
        c.mutate(a);
        for (const Status& s : {mla_decode(a, fake_i.data(), 1, nullptr, 0, nullptr),
                                mla_prefill(a, fake_i.data(), fake_i.data(), nullptr)}) {
            EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << c.field << ": " << s.to_string();
            EXPECT_NE(s.message().find(c.field), std::string::npos)
                << "expected '" << c.field << "' in " << s.message();
        }
    }
    // Launcher-specific arguments.
    auto expect_names = [](const Status& s, const char* field) {
        EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
        EXPECT_NE(s.message().find(field), std::string::npos) << "expected '" << field << "' in " << s.message();
    };
    expect_names(mla_decode(good, nullptr, 1, nullptr, 0, nullptr), "seq_lens");
    expect_names(mla_decode(good, fake_i.data(), 0, nullptr, 0, nullptr), "num_splits");
    expect_names(mla_decode(good, fake_i.data(), kMlaMaxSplits + 1, nullptr, 0, nullptr), "num_splits");
    const size_t need = mla_decode_scratch_bytes(4, 16, 512, 3);
    expect_names(mla_decode(good, fake_i.data(), 3, nullptr, need, nullptr), "scratch");
    expect_names(mla_decode(good, fake_i.data(), 3, fake.data(), need - 1, nullptr), "scratch");
    MlaAttentionArgs few_rows = good;
    few_rows.num_table_rows = 3;  // decode needs a table row per batch entry
    expect_names(mla_decode(few_rows, fake_i.data(), 1, nullptr, 0, nullptr), "num_table_rows");
    expect_names(mla_prefill(good, nullptr, fake_i.data(), nullptr), "query_rows");
    expect_names(mla_prefill(good, fake_i.data(), nullptr, nullptr), "query_pos");
    // Nothing to do is fine without a device (no launch), and rope_dim 0 needs no q_pe.
    MlaAttentionArgs empty = good;
    empty.num_queries = 0;
    EXPECT_TRUE(mla_decode(empty, nullptr, 1, nullptr, 0, nullptr).ok());
    EXPECT_TRUE(mla_prefill(empty, nullptr, nullptr, nullptr).ok());
    MlaAttentionArgs no_rope = good;
    no_rope.cache.rope_dim = 0;
    no_rope.q_pe = nullptr;
    EXPECT_TRUE(validate_mla_args("mla_decode", no_rope).ok());
}

TEST(MlaAttentionHost, ScratchSizeAndSplitCount) {
    EXPECT_EQ(mla_decode_scratch_bytes(8, 128, 512, 1), 0u);
    EXPECT_EQ(mla_decode_scratch_bytes(8, 128, 512, 4), size_t{8} * 4 * 128 * 513 * sizeof(float));
    EXPECT_EQ(mla_decode_scratch_bytes(0, 128, 512, 4), 0u);
    // Enough (query, head group) blocks already: no split.
    EXPECT_EQ(mla_decode_num_splits(64, 128, 100000, 132), 1);
    // Short caches are never split below two tiles per split.
    EXPECT_EQ(mla_decode_num_splits(1, 16, 2 * kMlaTileTokens - 1, 132), 1);
    EXPECT_EQ(mla_decode_num_splits(1, 16, 4 * kMlaTileTokens, 132), 2);
    // One long sequence on a big GPU: as many splits as allowed, capped.
    EXPECT_EQ(mla_decode_num_splits(1, 16, 1 << 20, 132), kMlaMaxSplits);
    const int32_t s = mla_decode_num_splits(2, 128, 8192, 132);  // 16 blocks without splitting
    EXPECT_GE(s * 2 * 8, 2 * 132);
    EXPECT_LE(s, kMlaMaxSplits);
    EXPECT_EQ(mla_decode_num_splits(0, 0, 0, 0), 1);  // degenerate inputs still give a usable count
}

TEST(MlaAttentionHost, SplitRangesPartitionAndMergeToTheFullSoftmax) {
    std::mt19937 rng(7);
    const int32_t latent = 24, rope = 8, heads = 1;
    const HostCache cache = make_cache(rng, {1000}, latent, rope, 7, 1);
    const HostQueries q = make_queries(rng, 1, heads, latent, rope);
    auto slot = [&](int64_t j) { return cache.slot(0, j); };
    for (int32_t len : {0, 1, 5, 31, 32, 33, 95, 1000}) {
        const std::vector<double> full =
            reference_attention(q.lat.data(), q.pe.data(), latent, rope, 0, len, kScale, slot);
        for (int32_t splits : {1, 2, 3, 7, 31, kMlaMaxSplits}) {
            std::vector<float> lse(splits);
            std::vector<std::vector<double>> part(splits);
            int32_t expect_begin = 0;
            for (int32_t s = 0; s < splits; ++s) {
                int32_t b = -1, e = -1;
                mla_split_range(len, splits, s, &b, &e);
                ASSERT_LE(b, e);
                if (b < e) {  // consecutive, tile aligned, covering [0, len)
                    ASSERT_EQ(b, expect_begin) << "len " << len << " splits " << splits << " split " << s;
                    ASSERT_EQ(b % kMlaTileTokens, 0);
                    expect_begin = e;
                }
                double l = 0.0;
                part[s] = reference_attention(q.lat.data(), q.pe.data(), latent, rope, b, e, kScale, slot, &l);
                lse[s] = static_cast<float>(l);
            }
            ASSERT_EQ(expect_begin, len) << "splits " << splits;
            std::vector<float> w(splits);
            mla_combine_weights(lse.data(), 1, splits, w.data());
            for (int32_t d = 0; d < latent; ++d) {
                double merged = 0.0;
                for (int32_t s = 0; s < splits; ++s) merged += w[s] * part[s][d];
                ASSERT_NEAR(merged, full[d], 2e-6 * (1.0 + std::fabs(full[d])))
                    << "len " << len << " splits " << splits;
            }
        }
    }
    // Poison and empty rules of the merge.
    const float lse_nan[3] = {1.0f, NAN, 2.0f}, lse_empty[2] = {-INFINITY, -INFINITY};
    float w[3];
    mla_combine_weights(lse_nan, 1, 3, w);
    for (float v : w) EXPECT_TRUE(std::isnan(v));
    mla_combine_weights(lse_empty, 1, 2, w);
    EXPECT_EQ(w[0], 0.0f);
    EXPECT_EQ(w[1], 0.0f);
    EXPECT_EQ(mla_partial_lse(3.0f, 0.0f), -INFINITY);
    EXPECT_FLOAT_EQ(mla_partial_lse(3.0f, 2.0f), 3.0f + std::log(2.0f));
}

TEST(MlaAttentionHost, BlockTableCheckNamesTheEntry) {
    // Two rows, block size 4, 3 entries each; row 1 has 9 tokens (3 blocks).
    std::vector<int32_t> tables = {5, 2, -7, 0, 9, 1};
    std::vector<int32_t> lens = {8, 9};
    EXPECT_TRUE(check_mla_block_tables(tables.data(), 2, 3, lens.data(), 4, 10).ok());  // row 0's -7 unused
    Status s = check_mla_block_tables(tables.data(), 2, 3, lens.data(), 4, 9);          // id 9 >= 9 blocks
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("block_tables[1][1] = 9"), std::string::npos) << s.message();
    lens[0] = 9;  // now row 0 uses its third entry, -7
    s = check_mla_block_tables(tables.data(), 2, 3, lens.data(), 4, 10);
    EXPECT_NE(s.message().find("block_tables[0][2] = -7"), std::string::npos) << s.message();
    lens[0] = 13;  // more than 3 blocks of 4
    s = check_mla_block_tables(tables.data(), 2, 3, lens.data(), 4, 10);
    EXPECT_NE(s.message().find("kv_lens[0] = 13"), std::string::npos) << s.message();
    lens[0] = -1;
    s = check_mla_block_tables(tables.data(), 2, 3, lens.data(), 4, 10);
    EXPECT_NE(s.message().find("kv_lens[0] = -1"), std::string::npos) << s.message();
    EXPECT_EQ(check_mla_block_tables(nullptr, 2, 3, lens.data(), 4, 10).code(), StatusCode::kInvalidArgument);
}

// The reference above against the CPU model: a one-layer shard of the tiny-bf16 golden checkpoint runs
// three steps (two prefills, a mixed chunked-prefill + decode step, a decode step) over a cache of
// 4-token blocks; the test recomputes the layer (norms, projections, RoPE, W_UK absorption, W_UV, o_proj,
// dense MLP) with the CPU kernels around reference_attention() reading the model's own KvCache, and
// must reproduce the layer's output. A wrong mask, scale, cache walk or softmax changes it by O(1).
TEST(MlaAttentionHost, ReferenceMatchesCpuModelAttention) {
    const char* src = std::getenv("DS_SOURCE_DIR");
    auto ck = model::Checkpoint::open(std::string(src ? src : ".") + "/testdata/golden/tiny-bf16");
    ASSERT_TRUE(ck.ok()) << ck.status().to_string();
    std::shared_ptr<const model::Checkpoint> ckpt(std::move(ck).value());
    const model::ModelConfig& c = ckpt->config();
    ASSERT_FALSE(c.is_moe_layer(0));
    model::ShardSpec spec;
    spec.last_layer = 1;
    spec.has_embedding = false;
    spec.has_head = false;
    model::EngineOptions opt;
    opt.kv_block_size = 4;
    opt.kv_budget_bytes = 1 << 20;
    auto weights = model::ShardWeights::load(ckpt, spec);
    ASSERT_TRUE(weights.ok()) << weights.status().to_string();
    auto tr = model::CpuEngine::create(*weights, opt);
    ASSERT_TRUE(tr.ok()) << tr.status().to_string();
    model::CpuEngine& t = **tr;

    const int64_t H = c.hidden_size, nh = c.num_attention_heads, nope = c.qk_nope_head_dim, rd = c.qk_rope_head_dim;
    const int64_t vd = c.v_head_dim, qk = nope + rd, R = c.kv_lora_rank, qr = c.q_lora_rank, I = c.intermediate_size;
    const float eps = static_cast<float>(c.rms_norm_eps);
    const std::string p = "model.layers.0.";
    auto vec = [&](const std::string& n, int64_t len) { return ckpt->vector_f32(p + n, len).value(); };
    auto mat = [&](const std::string& n, int64_t rows, int64_t cols) {
        return ckpt->weight(p + n, rows, cols).value();
    };
    const auto attn_norm = vec("input_layernorm.weight", H), ffn_norm = vec("post_attention_layernorm.weight", H);
    const auto q_norm = vec("self_attn.q_a_layernorm.weight", qr);
    const WeightView wq_a = mat("self_attn.q_a_proj.weight", qr, H),
                     wq_b = mat("self_attn.q_b_proj.weight", nh * qk, qr);
    const WeightView wkv_b = mat("self_attn.kv_b_proj.weight", nh * (nope + vd), R);
    const WeightView wo = mat("self_attn.o_proj.weight", H, nh * vd);
    const WeightView w1 = mat("mlp.gate_proj.weight", I, H), w3 = mat("mlp.up_proj.weight", I, H),
                     w2 = mat("mlp.down_proj.weight", H, I);
    const std::vector<float> inv_freq = c.rope_inv_freq();
    const double scale = c.softmax_scale();

    // Steps: {seq, start, count}. Sequence 7's table ends up non-contiguous ({0, 1, 5}).
    struct Chunk {
        uint64_t seq;
        int64_t start, n;
    };
    const std::vector<std::vector<Chunk>> steps = {
        {{7, 0, 6}, {3, 0, 9}}, {{7, 6, 3}, {3, 9, 1}}, {{7, 9, 1}, {3, 10, 1}}};
    std::mt19937 rng(11);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<std::vector<float>> inputs, outputs;
    for (const auto& step : steps) {
        std::vector<model::SeqChunk> chunks;
        int64_t T = 0;
        for (const Chunk& ch : step) {
            model::SeqChunk sc;
            sc.seq_id = ch.seq;
            sc.num_tokens = ch.n;
            sc.start_pos = ch.start;
            sc.logits = model::LogitsMode::kNone;
            chunks.push_back(sc);
            T += ch.n;
        }
        std::vector<float> h(T * H);
        for (float& v : h) v = nd(rng);
        auto out = t.step(chunks, h);
        ASSERT_TRUE(out.ok()) << out.status().to_string();
        inputs.push_back(h);
        outputs.push_back(out->hidden);
    }
    const model::KvCache& kv = t.kv_cache();
    ASSERT_EQ(kv.blocks().block_table(7), (std::vector<int32_t>{0, 1, 5}));

    double worst = 0.0, largest = 0.0;
    for (size_t si = 0; si < steps.size(); ++si) {
        std::vector<uint64_t> tok_seq;
        std::vector<int64_t> tok_pos;
        for (const Chunk& ch : steps[si]) {
            for (int64_t i = 0; i < ch.n; ++i) {
                tok_seq.push_back(ch.seq);
                tok_pos.push_back(ch.start + i);
            }
        }
        const int64_t T = static_cast<int64_t>(tok_seq.size());
        const std::vector<float>& h = inputs[si];
        std::vector<float> a(T * H), qa(T * qr), q(T * nh * qk), o(T * nh * vd, 0.0f), attn(T * H);
        kernels::rmsnorm(h.data(), T, H, H, attn_norm.data(), eps, a.data(), H);
        kernels::matmul(a.data(), T, H, wq_a, qa.data(), qr);
        kernels::rmsnorm(qa.data(), T, qr, qr, q_norm.data(), eps, qa.data(), qr);
        kernels::matmul(qa.data(), T, qr, wq_b, q.data(), nh * qk);
        for (int64_t ti = 0; ti < T; ++ti) {
            const std::vector<int32_t>& table = kv.blocks().block_table(tok_seq[ti]);
            auto slot = [&](int64_t j) {
                return kv.block_slot(0, table[j / opt.kv_block_size], j % opt.kv_block_size);
            };
            for (int64_t hh = 0; hh < nh; ++hh) {
                float* qh = q.data() + (ti * nh + hh) * qk;
                for (size_t i = 0; i < inv_freq.size(); ++i) {  // interleaved YaRN RoPE, as the CPU model
                    const float angle = static_cast<float>(tok_pos[ti]) * inv_freq[i];
                    const float cs = std::cos(angle), sn = std::sin(angle), x0 = qh[nope + 2 * i],
                                x1 = qh[nope + 2 * i + 1];
                    qh[nope + 2 * i] = x0 * cs - x1 * sn;
                    qh[nope + 2 * i + 1] = x0 * sn + x1 * cs;
                }
                std::vector<float> qlat(R, 0.0f);  // q_nope . W_UK[h]
                for (int64_t d = 0; d < nope; ++d) {
                    for (int64_t r = 0; r < R; ++r) qlat[r] += qh[d] * wkv_b.at(hh * (nope + vd) + d, r);
                }
                const std::vector<double> olat =
                    reference_attention(qlat.data(), qh + nope, static_cast<int32_t>(R), static_cast<int32_t>(rd), 0,
                                        tok_pos[ti] + 1, scale, slot);
                for (int64_t e = 0; e < vd; ++e) {  // o_lat . W_UV[h]^T
                    double v = 0.0;
                    for (int64_t r = 0; r < R; ++r) v += olat[r] * wkv_b.at(hh * (nope + vd) + nope + e, r);
                    o[(ti * nh + hh) * vd + e] = static_cast<float>(v);
                }
            }
        }
        kernels::matmul(o.data(), T, nh * vd, wo, attn.data(), H);
        std::vector<float> h1(T * H), f(T * H), g(T * I), u(T * I), down(T * H);
        for (int64_t i = 0; i < T * H; ++i) h1[i] = h[i] + attn[i];
        kernels::rmsnorm(h1.data(), T, H, H, ffn_norm.data(), eps, f.data(), H);
        kernels::matmul(f.data(), T, H, w1, g.data(), I);
        kernels::matmul(f.data(), T, H, w3, u.data(), I);
        kernels::silu_mul(g.data(), u.data(), T * I, g.data());
        kernels::matmul(g.data(), T, I, w2, down.data(), H);
        for (int64_t i = 0; i < T * H; ++i) {
            const double delta_model = outputs[si][i] - h[i], delta_ref = h1[i] + down[i] - h[i];
            worst = std::max(worst, std::fabs(delta_model - delta_ref));
            largest = std::max(largest, std::fabs(delta_ref));
        }
    }
    EXPECT_GT(largest, 0.05);  // the layer does something
    EXPECT_LT(worst, 2e-5 * std::max(1.0, largest)) << "largest layer delta " << largest;
}

// ---------------------------------------------------------------------------------------------
// GPU against the reference.

// |got - want| <= tol * (1 + |want|) for every output of `rows` queries (out dense [n, heads, latent]).
void expect_matches(const std::vector<float>& got,
                    const std::vector<std::vector<double>>& want,
                    double tol,
                    const std::string& what) {
    double worst = 0.0;
    for (size_t i = 0; i < want.size(); ++i) {
        for (size_t d = 0; d < want[i].size(); ++d) {
            const double g = got[i * want[i].size() + d], w = want[i][d];
            ASSERT_FALSE(std::isnan(g)) << what << " row " << i << " col " << d;
            worst = std::max(worst, std::fabs(g - w) / (1.0 + std::fabs(w)));
        }
    }
    EXPECT_LE(worst, tol) << what;
}

struct DecodeCase {
    const char* name;
    int32_t heads, latent, rope, block_size, pad;
    std::vector<int32_t> lens;
};

// Decode arguments for dense queries [batch, heads, latent | rope] and outputs [batch, heads, latent].
MlaAttentionArgs decode_args(const MlaCache& view, const DecodeCase& dc, int64_t batch, int32_t max_blocks,
                             const DeviceBuffer& qlat, const DeviceBuffer& qpe, const DeviceBuffer& tables) {
    MlaAttentionArgs a;
    a.cache = view;
    a.num_heads = dc.heads;
    a.softmax_scale = static_cast<float>(kScale);
    a.num_queries = batch;
    a.q_lat = qlat.as<float>();
    a.q_lat_ld_head = dc.latent;
    a.q_lat_ld_token = int64_t{dc.heads} * dc.latent;
    a.q_pe = qpe.as<float>();
    a.q_pe_ld_head = dc.rope;
    a.q_pe_ld_token = int64_t{dc.heads} * dc.rope;
    a.block_tables = tables.as<int32_t>();
    a.num_table_rows = batch;
    a.max_blocks_per_seq = max_blocks;
    a.out_ld_head = dc.latent;
    a.out_ld_token = int64_t{dc.heads} * dc.latent;
    return a;
}

TEST(MlaAttentionCuda, DecodeMatchesReferenceWithAndWithoutSplits) {
    DS_REQUIRE_CUDA();
    const DecodeCase cases[] = {
        {"deepseek_v3_tp8", 16, 512, 64, 16, 0, {1, 16, 17, 300, 1000, 33}},
        {"two_head_groups", 20, 96, 16, 5, 3, {1, 7, 64, 65, 250}},
        {"all_heads", 128, 512, 64, 64, 0, {129, 1}},
        {"no_rope", 4, 40, 0, 3, 1, {2, 31, 32}},
    };
    for (const DecodeCase& dc : cases) {
        std::mt19937 rng(42);
        const HostCache cache = make_cache(rng, dc.lens, dc.latent, dc.rope, dc.block_size, dc.pad);
        ASSERT_TRUE(check_mla_block_tables(cache.tables.data(), static_cast<int64_t>(dc.lens.size()), cache.max_blocks,
                                           cache.lens.data(), cache.block_size, cache.num_blocks)
                        .ok());
        const int64_t batch = static_cast<int64_t>(dc.lens.size());
        const HostQueries q = make_queries(rng, batch, dc.heads, dc.latent, dc.rope);
        std::vector<std::vector<double>> want;
        for (int64_t b = 0; b < batch; ++b) {
            for (int32_t h = 0; h < dc.heads; ++h) {
                want.push_back(reference_attention(q.lat.data() + (b * dc.heads + h) * dc.latent,
                                                   q.pe.data() + (b * dc.heads + h) * dc.rope, dc.latent, dc.rope, 0,
                                                   dc.lens[b], kScale, [&](int64_t j) { return cache.slot(b, j); }));
            }
        }
        auto d_pool = to_device(cache.pool), d_tables = to_device(cache.tables), d_lens = to_device(cache.lens);
        auto d_qlat = to_device(q.lat), d_qpe = to_device(q.pe);
        const int64_t n_out = batch * dc.heads * dc.latent;
        MlaAttentionArgs a = decode_args(cache.view(d_pool.as<float>()), dc, batch, cache.max_blocks, d_qlat, d_qpe,
                                         d_tables);
        int device = 0, sms = 0;
        ASSERT_EQ(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), cudaSuccess);
        const int32_t auto_splits = mla_decode_num_splits(batch, dc.heads, 1000, sms);
        for (int32_t splits : {1, 2, 5, auto_splits, kMlaMaxSplits}) {
            auto d_out = to_device(std::vector<float>(n_out, -123.0f));
            a.out = d_out.as<float>();
            const size_t bytes = mla_decode_scratch_bytes(batch, dc.heads, dc.latent, splits);
            auto scratch = DeviceBuffer::create(std::max<size_t>(bytes, 1));
            ASSERT_TRUE(scratch.ok());
            Status s = mla_decode(a, d_lens.as<int32_t>(), splits, scratch->get(), bytes, nullptr);
            ASSERT_TRUE(s.ok()) << dc.name << ": " << s.to_string();
            expect_matches(from_device<float>(d_out, n_out), want, 5e-5,
                           std::string(dc.name) + " splits " + std::to_string(splits));
        }
    }
}

// A BF16 cache (the CUDA engine's fast precision): the tensor-core kernel against the double reference on
// the same (rounded) cache values, within the bound its own roundings imply, and the fp32 kernel on the
// same cache within fp32 noise. Derivation, per (query, head): rounding q to BF16 moves score j by at most
// e_j = 2^-8 * scale * sum_d |q_d k_jd| (2^-9 relative per element, doubled for the accumulation), so
// with E = max_j e_j every probability moves by a factor within [e^-2E, e^2E]; rounding the (unnormalized)
// probabilities to BF16 adds 2^-9 relative. Hence |out_d - ref_d| <= ((e^2E - 1)(1 + 2^-9) + 2^-9) *
// sum_j p_j |v_jd| (+ fp32 accumulation noise).
TEST(MlaAttentionCuda, Bf16CacheOnTensorCoresWithinTheirRoundingBound) {
    DS_REQUIRE_CUDA();
    const DecodeCase cases[] = {
        {"deepseek_v3_all_heads", 128, 512, 64, 64, 0, {1, 33, 700, 2000}},
        {"small_fp8_dims", 8, 128, 32, 4, 0, {1, 5, 24, 97}},
    };
    const bool default_tc = mla_tensor_cores();
    for (const DecodeCase& dc : cases) {
        std::mt19937 rng(7);
        HostCache cache = make_cache(rng, dc.lens, dc.latent, dc.rope, dc.block_size, dc.pad);
        std::vector<uint16_t> pool16(cache.pool.size());
        for (size_t i = 0; i < pool16.size(); ++i) {
            pool16[i] = ::deepshard::f32_to_bf16(cache.pool[i]);
            cache.pool[i] = ::deepshard::bf16_to_f32(pool16[i]);  // the reference sees exactly the cached values
        }
        const int64_t batch = static_cast<int64_t>(dc.lens.size());
        const HostQueries q = make_queries(rng, batch, dc.heads, dc.latent, dc.rope);
        std::vector<std::vector<double>> want, bound;
        for (int64_t b = 0; b < batch; ++b) {
            for (int32_t h = 0; h < dc.heads; ++h) {
                const float* ql = q.lat.data() + (b * dc.heads + h) * dc.latent;
                const float* qp = q.pe.data() + (b * dc.heads + h) * dc.rope;
                want.push_back(reference_attention(ql, qp, dc.latent, dc.rope, 0, dc.lens[b], kScale,
                                                   [&](int64_t j) { return cache.slot(b, j); }));
                std::vector<double> s(dc.lens[b]);
                double E = 0, mx = -INFINITY, sum = 0;
                for (int64_t j = 0; j < dc.lens[b]; ++j) {
                    const float* kv = cache.slot(b, j);
                    double dot = 0, mag = 0;
                    for (int32_t d = 0; d < dc.latent; ++d) {
                        dot += double(ql[d]) * kv[d];
                        mag += std::fabs(double(ql[d]) * kv[d]);
                    }
                    for (int32_t d = 0; d < dc.rope; ++d) {
                        dot += double(qp[d]) * kv[dc.latent + d];
                        mag += std::fabs(double(qp[d]) * kv[dc.latent + d]);
                    }
                    s[j] = dot * kScale;
                    E = std::max(E, 0x1p-8 * kScale * mag);
                    mx = std::max(mx, s[j]);
                }
                for (double& v : s) sum += (v = std::exp(v - mx));
                const double rel = (std::exp(2 * E) - 1) * (1 + 0x1p-9) + 0x1p-9;
                std::vector<double> bd(dc.latent, 0.0);
                for (int64_t j = 0; j < dc.lens[b]; ++j) {
                    const float* kv = cache.slot(b, j);
                    for (int32_t d = 0; d < dc.latent; ++d) bd[d] += s[j] / sum * std::fabs(kv[d]);
                }
                for (double& v : bd) v = rel * v + 1e-5 * (1 + v);
                bound.push_back(std::move(bd));
            }
        }
        auto d_pool = to_device(pool16), d_tables = to_device(cache.tables), d_lens = to_device(cache.lens);
        auto d_qlat = to_device(q.lat), d_qpe = to_device(q.pe);
        const int64_t n_out = batch * dc.heads * dc.latent;
        MlaAttentionArgs a = decode_args(cache.view(d_pool.get(), KvDType::kBF16), dc, batch, cache.max_blocks, d_qlat,
                                         d_qpe, d_tables);
        for (bool tc : {true, false}) {
            mla_set_tensor_cores(tc);
            for (int32_t splits : {1, 7}) {
                auto d_out = to_device(std::vector<float>(n_out, -123.0f));
                a.out = d_out.as<float>();
                const size_t bytes = mla_decode_scratch_bytes(batch, dc.heads, dc.latent, splits);
                auto scratch = DeviceBuffer::create(std::max<size_t>(bytes, 1));
                ASSERT_TRUE(scratch.ok());
                Status st = mla_decode(a, d_lens.as<int32_t>(), splits, scratch->get(), bytes, nullptr);
                ASSERT_TRUE(st.ok()) << dc.name << ": " << st.to_string();
                const std::string what = std::string(dc.name) + (tc ? " tensor cores" : " fp32 kernel") +
                                         " splits " + std::to_string(splits);
                const std::vector<float> got = from_device<float>(d_out, n_out);
                if (!tc) {
                    expect_matches(got, want, 5e-5, what);
                    continue;
                }
                double worst = 0, worst_err = 0;
                for (size_t i = 0; i < want.size(); ++i) {
                    for (size_t d = 0; d < want[i].size(); ++d) {
                        const double err = std::fabs(got[i * want[i].size() + d] - want[i][d]);
                        ASSERT_FALSE(std::isnan(got[i * want[i].size() + d])) << what;
                        worst = std::max(worst, err / bound[i][d]);
                        worst_err = std::max(worst_err, err);
                    }
                }
                EXPECT_LE(worst, 1.0) << what << ": error " << worst_err << " beyond the rounding bound";
                EXPECT_GT(worst_err, 0.0) << what << ": bit-equal to the double reference: are tensor cores off?";
                std::printf("[mla bf16] %s: max |err| %.3g = %.2f of the derived bound\n", what.c_str(), worst_err,
                            worst);
            }
        }
        mla_set_tensor_cores(default_tc);
    }
}

TEST(MlaAttentionCuda, PrefillIsCausalOverTheCache) {
    DS_REQUIRE_CUDA();
    // Two sequences; their new tokens are positions [start, len) (already in the cache), with queries
    // laid out like the CPU twin's buffers: q_pe inside a [T, heads, nope + rope] q, strided output.
    std::mt19937 rng(5);
    const int32_t heads = 18, latent = 512, rope = 64, nope = 128, block = 16;
    const HostCache cache = make_cache(rng, {70, 21}, latent, rope, block, 0);
    struct Tok {
        int32_t row, pos;
    };
    std::vector<Tok> toks;
    for (int32_t pos = 0; pos < 70; ++pos) toks.push_back({0, pos});   // fresh prefill from 0
    for (int32_t pos = 13; pos < 21; ++pos) toks.push_back({1, pos});  // chunk after a cached prefix
    const int64_t T = static_cast<int64_t>(toks.size());
    const HostQueries qd = make_queries(rng, T, heads, latent, rope);
    std::vector<float> qbuf(T * heads * (nope + rope), 0.0f);
    for (int64_t t = 0; t < T; ++t) {
        for (int32_t h = 0; h < heads; ++h) {
            std::copy_n(qd.pe.data() + (t * heads + h) * rope, rope,
                        qbuf.data() + (t * heads + h) * (nope + rope) + nope);
        }
    }
    std::vector<std::vector<double>> want;
    std::vector<int32_t> rows, pos;
    for (int64_t t = 0; t < T; ++t) {
        rows.push_back(toks[t].row);
        pos.push_back(toks[t].pos);
        for (int32_t h = 0; h < heads; ++h) {
            want.push_back(reference_attention(qd.lat.data() + (t * heads + h) * latent,
                                               qd.pe.data() + (t * heads + h) * rope, latent, rope, 0, toks[t].pos + 1,
                                               kScale, [&](int64_t j) { return cache.slot(toks[t].row, j); }));
        }
    }
    auto d_pool = to_device(cache.pool), d_tables = to_device(cache.tables);
    auto d_qlat = to_device(qd.lat), d_q = to_device(qbuf), d_rows = to_device(rows), d_pos = to_device(pos);
    const int64_t ld_out_head = latent + 8, ld_out_token = heads * ld_out_head;
    auto d_out = to_device(std::vector<float>(T * ld_out_token, -5.0f));
    MlaAttentionArgs a;
    a.cache = cache.view(d_pool.as<float>());
    a.num_heads = heads;
    a.softmax_scale = static_cast<float>(kScale);
    a.num_queries = T;
    a.q_lat = d_qlat.as<float>();
    a.q_lat_ld_head = latent;
    a.q_lat_ld_token = int64_t{heads} * latent;
    a.q_pe = d_q.as<float>() + nope;
    a.q_pe_ld_head = nope + rope;
    a.q_pe_ld_token = int64_t{heads} * (nope + rope);
    a.block_tables = d_tables.as<int32_t>();
    a.num_table_rows = 2;
    a.max_blocks_per_seq = cache.max_blocks;
    a.out = d_out.as<float>();
    a.out_ld_head = ld_out_head;
    a.out_ld_token = ld_out_token;
    Status s = mla_prefill(a, d_rows.as<int32_t>(), d_pos.as<int32_t>(), nullptr);
    ASSERT_TRUE(s.ok()) << s.to_string();
    const std::vector<float> raw = from_device<float>(d_out, T * ld_out_token);
    std::vector<float> got;
    for (int64_t t = 0; t < T; ++t) {
        for (int32_t h = 0; h < heads; ++h) {
            const float* src = raw.data() + t * ld_out_token + h * ld_out_head;
            got.insert(got.end(), src, src + latent);
            for (int64_t pad = latent; pad < ld_out_head; ++pad) ASSERT_EQ(src[pad], -5.0f) << "padding written";
        }
    }
    expect_matches(got, want, 5e-5, "prefill");
}

TEST(MlaAttentionCuda, BadTableEntriesPoisonOnlyTheirQuery) {
    DS_REQUIRE_CUDA();
    std::mt19937 rng(3);
    const int32_t heads = 16, latent = 64, rope = 16;
    HostCache cache = make_cache(rng, {40, 40, 40, 40}, latent, rope, 8, 0);
    const HostQueries q = make_queries(rng, 4, heads, latent, rope);
    std::vector<int32_t> lens = cache.lens;
    cache.tables[1 * cache.max_blocks + 2] = cache.num_blocks;  // row 1: block id out of the pool
    lens[2] = 0;                                                // row 2: empty -> zeros
    lens[3] = cache.max_blocks * cache.block_size + 1;          // row 3: longer than its table -> NaN
    auto d_pool = to_device(cache.pool), d_tables = to_device(cache.tables), d_lens = to_device(lens);
    auto d_qlat = to_device(q.lat), d_qpe = to_device(q.pe);
    MlaAttentionArgs a;
    a.cache = cache.view(d_pool.as<float>());
    a.num_heads = heads;
    a.softmax_scale = static_cast<float>(kScale);
    a.num_queries = 4;
    a.q_lat = d_qlat.as<float>();
    a.q_lat_ld_head = latent;
    a.q_lat_ld_token = heads * latent;
    a.q_pe = d_qpe.as<float>();
    a.q_pe_ld_head = rope;
    a.q_pe_ld_token = heads * rope;
    a.block_tables = d_tables.as<int32_t>();
    a.num_table_rows = 4;
    a.max_blocks_per_seq = cache.max_blocks;
    a.out_ld_head = latent;
    a.out_ld_token = heads * latent;
    const int64_t per_query = int64_t{heads} * latent;
    for (int32_t splits : {1, 3}) {
        auto d_out = to_device(std::vector<float>(4 * per_query, 7.0f));
        a.out = d_out.as<float>();
        const size_t bytes = mla_decode_scratch_bytes(4, heads, latent, splits);
        auto scratch = DeviceBuffer::create(std::max<size_t>(bytes, 1));
        ASSERT_TRUE(scratch.ok());
        ASSERT_TRUE(mla_decode(a, d_lens.as<int32_t>(), splits, scratch->get(), bytes, nullptr).ok());
        const std::vector<float> got = from_device<float>(d_out, 4 * per_query);
        for (int64_t i = 0; i < per_query; ++i) {
            ASSERT_FALSE(std::isnan(got[i])) << "row 0 must be unaffected, splits " << splits;
            ASSERT_TRUE(std::isnan(got[per_query + i])) << "row 1 (bad block id), splits " << splits;
            ASSERT_EQ(got[2 * per_query + i], 0.0f) << "row 2 (empty), splits " << splits;
            ASSERT_TRUE(std::isnan(got[3 * per_query + i])) << "row 3 (too long), splits " << splits;
        }
        const std::vector<double> row0 = reference_attention(q.lat.data(), q.pe.data(), latent, rope, 0, 40, kScale,
                                                             [&](int64_t j) { return cache.slot(0, j); });
        for (int32_t d = 0; d < latent; ++d) ASSERT_NEAR(got[d], row0[d], 5e-5 * (1.0 + std::fabs(row0[d])));
    }
}

}  // namespace
}  // namespace deepshard::kernels::cuda
