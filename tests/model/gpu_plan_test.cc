// The CUDA engine's host-side planning, run on the CPU (model/gpu/plan.h, model/gpu/upload.h): the
// staged upload reads exactly every held tensor's bytes (dense rows, FP8 scale rows) into its arena
// place through small staging buffers (chunking, strided column slices, round-robin buffers); workspace
// sizing at DeepSeek-V3's real dimensions; graph buckets; step splitting.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <numeric>
#include <set>

#include "model/gpu/plan.h"
#include "model/gpu/upload.h"

namespace deepshard::model::gpu {
namespace {

std::shared_ptr<const Checkpoint> golden(const std::string& name) {
    const char* src = std::getenv("DS_SOURCE_DIR");
    auto ck = Checkpoint::open(std::string(src ? src : ".") + "/testdata/golden/" + name);
    EXPECT_TRUE(ck.ok()) << ck.status().to_string();
    return ck.ok() ? std::shared_ptr<const Checkpoint>(std::move(ck).value()) : nullptr;
}

// Uploads `spec` of `name` into a host arena through `buffers` staging buffers of `bytes` and checks
// every held tensor's dense rows and scale rows against the checkpoint mapping.
void check_upload(const std::string& name, const ShardSpec& spec, int buffers, uint64_t bytes) {
    auto ck = golden(name);
    ASSERT_NE(ck, nullptr);
    auto w = ShardWeights::load(ck, spec);
    ASSERT_TRUE(w.ok()) << w.status().to_string();
    ArenaPlan plan;
    auto placed = plan_weights(**w, &plan);
    ASSERT_TRUE(placed.ok()) << placed.status().to_string();
    const float marker[3] = {1.5f, -2.0f, 3.25f};
    const uint64_t host_off = plan.add_host("marker", marker, sizeof(marker));
    const uint64_t reserved = plan.reserve("tables", 100);
    for (const ArenaEntry& e : plan.entries()) EXPECT_EQ(e.arena_offset % kArenaAlignment, 0u) << e.name;
    std::vector<uint8_t> arena(plan.total_bytes(), 0xAB);
    HostUploadSink sink(&arena, buffers, bytes);
    int reports = 0;
    auto stats = upload(plan, *ck, sink, [&](const UploadProgress& p) {
        ++reports;
        EXPECT_LE(p.done, p.total);
    });
    ASSERT_TRUE(stats.ok()) << stats.status().to_string();
    EXPECT_EQ(stats->bytes, plan.file_bytes() + sizeof(marker));
    EXPECT_GE(reports, 1);
    // Chunks were at most `bytes` each: at least total / bytes copies.
    EXPECT_GE(static_cast<uint64_t>(sink.copies()), stats->bytes / bytes);
    EXPECT_EQ(std::memcmp(arena.data() + host_off, marker, sizeof(marker)), 0);
    EXPECT_EQ(arena[reserved], 0xAB) << "reserved space must not be written";
    int fp8 = 0, sliced = 0;
    for (const PlacedTensor& p : *placed) {
        const kernels::WeightView& host = *p.tensor->view;
        const kernels::WeightView dev = placed_view(p, arena.data());
        ASSERT_EQ(dev.ld, dev.cols) << p.tensor->name;
        sliced += host.ld != host.cols;
        // Every element decodes to the same value through the re-based view (scales included).
        for (int64_t r : {int64_t{0}, host.rows / 2, host.rows - 1}) {
            for (int64_t c : {int64_t{0}, host.cols / 3, host.cols - 1}) {
                ASSERT_EQ(dev.at(r, c), host.at(r, c)) << p.tensor->name << " (" << r << ", " << c << ")";
            }
        }
        const size_t es = dtype_size(host.dtype);
        for (int64_t r = 0; r < host.rows; ++r) {
            ASSERT_EQ(std::memcmp(static_cast<const uint8_t*>(dev.data) + r * dev.ld * es,
                                  static_cast<const uint8_t*>(host.data) + r * host.ld * es, host.cols * es),
                      0)
                << p.tensor->name << " row " << r;
        }
        if (host.dtype == DType::kF8E4M3) {
            ++fp8;
            const int64_t sr0 = p.tensor->scale_row0;
            for (int64_t sr = 0; sr < p.tensor->scale_rows; ++sr) {
                for (int64_t sc = 0; sc < host.scale_ld; ++sc) {
                    ASSERT_EQ(dev.scale[sr * host.scale_ld + sc], host.scale[(sr0 + sr) * host.scale_ld + sc])
                        << p.tensor->name;
                }
            }
        }
    }
    if (name == "small-fp8") {
        EXPECT_GT(fp8, 0);
    }
    if (spec.tp_size > 1) {
        EXPECT_GT(sliced, 0) << "a TP shard has column slices (strided reads)";
    }
}

TEST(GpuUploadTest, WholeModelThroughSmallStagingBuffers) {
    check_upload("tiny-bf16", ShardSpec{}, 2, 64 << 10);
    check_upload("small-fp8", ShardSpec{}, 3, 100000);  // not a multiple of any row size
}

TEST(GpuUploadTest, TensorParallelSliceReadsOnlyItsColumns) {
    for (const char* name : {"tiny-bf16", "small-fp8"}) {
        auto ck = golden(name);
        ASSERT_NE(ck, nullptr);
        ShardSpec s;
        s.head_begin = ck->config().num_attention_heads / 2;
        s.vocab_begin = ck->config().vocab_size / 2;
        s.tp_rank = 1;
        s.tp_size = 2;
        s.first_layer = 1;
        check_upload(name, s, 2, 8192);
    }
}

TEST(GpuUploadTest, ChunksCoverEntriesAndRejectOversizedRows) {
    ArenaPlan plan;
    plan.add_file("contiguous", 0, 0, 10, 1000, 1000);
    plan.add_file("strided", 0, 0, 7, 300, 900);
    plan.add_host("host", "abc", 3);
    plan.reserve("gap", 50);
    auto chunks = plan.chunks(2048);
    ASSERT_TRUE(chunks.ok());
    std::vector<uint64_t> covered(plan.entries().size(), 0);
    for (const UploadChunk& c : *chunks) {
        EXPECT_LE(c.bytes, 2048u);
        EXPECT_EQ(c.entry_offset, covered[c.entry]) << "chunks of an entry are consecutive";
        covered[c.entry] += c.bytes;
        if (plan.entries()[c.entry].name == "strided") {
            EXPECT_EQ(c.bytes % 300, 0u) << "strided chunks hold whole rows";
        }
    }
    EXPECT_EQ(covered[0], 10000u);
    EXPECT_EQ(covered[1], 2100u);
    EXPECT_EQ(covered[2], 3u);
    EXPECT_EQ(covered[3], 0u) << "reserved entries are not uploaded";
    auto bad = plan.chunks(256);  // a 300-byte strided row does not fit
    ASSERT_FALSE(bad.ok());
    EXPECT_NE(bad.status().message().find("strided"), std::string::npos) << bad.status().message();
    EXPECT_FALSE(plan.chunks(0).ok());
}

TEST(GpuUploadTest, MissingFileIsAnIoErrorNamingIt) {
    auto ck = golden("tiny-bf16");
    ASSERT_NE(ck, nullptr);
    ArenaPlan plan;
    plan.add_file("beyond", 0, uint64_t{1} << 40, 1, 16, 16);  // past the end of the file
    std::vector<uint8_t> arena(plan.total_bytes());
    HostUploadSink sink(&arena, 2, 4096);
    auto s = upload(plan, *ck, sink);
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.status().code(), StatusCode::kIo);
    EXPECT_NE(s.status().message().find("beyond"), std::string::npos) << s.status().message();
}

// DeepSeek-V3 / R1 at TP 8: 16 local heads, a column slice of the dense MLP, vocab slice.
EngineDims deepseek_tp8() {
    EngineDims d;
    d.hidden = 7168;
    d.q_lora = 1536;
    d.heads = 16;
    d.nope = 128;
    d.rope = 64;
    d.v_head = 128;
    d.kv_lora = 512;
    d.dense_inter = 18432 / 8;
    d.moe_inter = 2048;
    d.shared_inter = 2048 / 8;
    d.experts = 256;
    d.top_k = 8;
    d.has_moe = true;
    d.vocab = 129280;
    d.vocab_local = 129280 / 8;
    d.has_embedding = d.has_head = true;
    d.num_layers = 61;
    return d;
}

TEST(GpuPlanTest, WorkspaceAtDeepSeekDimensions) {
    const EngineDims d = deepseek_tp8();
    StepLimits lim;
    lim.max_tokens = 2048;
    lim.max_seqs = 256;
    lim.max_logits_rows = 256;
    lim.max_blocks_per_seq = 163840 / 16;
    lim.mla_max_ctas = 264;
    auto w = plan_workspace(d, lim);
    ASSERT_TRUE(w.ok()) << w.status().to_string();
    // Disjoint, aligned, inside the total.
    std::vector<std::pair<uint64_t, uint64_t>> ranges;
    for (const auto& [name, s] : w->named) {
        EXPECT_EQ(s.offset % 256, 0u) << name;
        EXPECT_LE(s.offset + s.bytes, w->total) << name;
        ranges.emplace_back(s.offset, s.offset + s.bytes);
    }
    std::sort(ranges.begin(), ranges.end());
    for (size_t i = 1; i < ranges.size(); ++i) EXPECT_LE(ranges[i - 1].second, ranges[i].first);
    // The big ones, exactly: q [2048, 16 * 192] fp32; the permuted expert activations [2048 * 8, 7168];
    // logits [256, 129280 / 8]; the block tables [256, 10240] int32.
    EXPECT_EQ(w->q.bytes, uint64_t{2048} * 16 * 192 * 4);
    EXPECT_EQ(w->x_perm.bytes, uint64_t{2048} * 8 * 7168 * 4);
    EXPECT_EQ(w->logits.bytes, uint64_t{256} * 16160 * 4);
    EXPECT_EQ(w->logits_full.bytes, uint64_t{256} * 129280 * 4);
    EXPECT_EQ(w->tables.bytes, uint64_t{256} * 10240 * 4);
    EXPECT_EQ(w->mla_scratch.bytes, uint64_t{256 + 264} * 16 * 513 * 4);
    // Fits an H200 next to its share of the weights (a few GB, not tens).
    EXPECT_LT(w->total, uint64_t{4} << 30);
    EXPECT_GT(w->total, uint64_t{1} << 30);
    // Larger limits grow it; silly ones are rejected with the field named.
    StepLimits big = lim;
    big.max_tokens = 4096;
    EXPECT_GT(plan_workspace(d, big)->total, w->total);
    StepLimits bad = lim;
    bad.max_seqs = 0;
    auto e = plan_workspace(d, bad);
    ASSERT_FALSE(e.ok());
    EXPECT_NE(e.status().message().find("max_seqs"), std::string::npos);
    bad = lim;
    bad.max_tokens = int64_t{1} << 22;  // x 8 experts per token > 2^24 pairs
    EXPECT_FALSE(plan_workspace(d, bad).ok());
    // A stage without the head or MoE has neither buffer.
    EngineDims mid = d;
    mid.has_head = false;
    mid.has_moe = false;
    auto m = plan_workspace(mid, lim);
    ASSERT_TRUE(m.ok());
    EXPECT_EQ(m->logits.bytes, 0u);
    EXPECT_EQ(m->x_perm.bytes, 0u);
    EXPECT_LT(m->total, w->total);
}

TEST(GpuPlanTest, DimsOfGoldenShards) {
    auto ck = golden("small-fp8");
    ASSERT_NE(ck, nullptr);
    ShardSpec s;
    s.tp_rank = 1;
    s.tp_size = 2;
    s.head_begin = 4;
    s.vocab_begin = 4096;
    auto w = ShardWeights::load(ck, s);
    ASSERT_TRUE(w.ok());
    const EngineDims d = dims_of(**w);
    const ModelConfig& c = ck->config();
    EXPECT_EQ(d.heads, c.num_attention_heads - 4);
    EXPECT_EQ(d.vocab_local, c.vocab_size - 4096);
    EXPECT_EQ(d.dense_inter, c.intermediate_size / 2);
    EXPECT_EQ(d.moe_inter, c.moe_intermediate_size);
    EXPECT_EQ(d.shared_inter, c.moe_intermediate_size * c.n_shared_experts / 2);
    EXPECT_TRUE(d.has_moe);
    EXPECT_EQ(d.mlp_inter(), std::max(d.dense_inter, std::max(d.shared_inter, d.moe_inter)));
}

TEST(GpuPlanTest, GraphBuckets) {
    EXPECT_EQ(decode_buckets(256), (std::vector<int64_t>{1, 2, 4, 8, 16, 32, 64, 128, 256}));
    EXPECT_EQ(decode_buckets(100), (std::vector<int64_t>{1, 2, 4, 8, 16, 32, 64, 100}));
    EXPECT_EQ(decode_buckets(1), (std::vector<int64_t>{1}));
    const auto b = decode_buckets(100);
    EXPECT_EQ(choose_bucket(b, 1), 1);
    EXPECT_EQ(choose_bucket(b, 3), 4);
    EXPECT_EQ(choose_bucket(b, 64), 64);
    EXPECT_EQ(choose_bucket(b, 65), 100);
    EXPECT_EQ(choose_bucket(b, 100), 100);
    EXPECT_EQ(choose_bucket(b, 101), -1);
    EXPECT_EQ(choose_bucket(b, 0), -1);
    // Every batch up to the largest bucket pads by less than 2x.
    for (int64_t n = 1; n <= 100; ++n) EXPECT_LT(choose_bucket(b, n), 2 * n);
}

TEST(GpuPlanTest, SplitStepKeepsTokensOrderAndLogits) {
    std::vector<int32_t> a(10), b(3), c(1);
    std::iota(a.begin(), a.end(), 100);
    std::iota(b.begin(), b.end(), 200);
    c[0] = 300;
    std::vector<SeqChunk> chunks = {
        {.seq_id = 1, .tokens = a, .num_tokens = 10, .start_pos = 5, .logits = LogitsMode::kLast},
        {.seq_id = 2, .tokens = b, .num_tokens = 3, .start_pos = 0, .logits = LogitsMode::kAll},
        {.seq_id = 3, .tokens = c, .num_tokens = 1, .start_pos = 7, .logits = LogitsMode::kSample},
    };
    for (int64_t max_tokens : {1, 2, 3, 4, 7, 14, 100}) {
        for (int64_t max_seqs : {1, 2, 3}) {
            SCOPED_TRACE("max_tokens " + std::to_string(max_tokens) + " max_seqs " + std::to_string(max_seqs));
            const auto subs = split_step(chunks, max_tokens, max_seqs);
            std::vector<int32_t> flat;
            std::map<uint64_t, int64_t> next_pos = {{1, 5}, {2, 0}, {3, 7}};
            std::map<uint64_t, int> last_modes, rows;
            int64_t logits_rows = 0;
            for (const auto& sub : subs) {
                int64_t n = 0;
                std::set<uint64_t> ids;
                for (const SeqChunk& p : sub) {
                    EXPECT_TRUE(ids.insert(p.seq_id).second) << "a sequence twice in one sub-step";
                    EXPECT_EQ(p.start_pos, next_pos[p.seq_id]) << "pieces continue their sequence";
                    next_pos[p.seq_id] += p.num_tokens;
                    EXPECT_EQ(static_cast<int64_t>(p.tokens.size()), p.num_tokens);
                    flat.insert(flat.end(), p.tokens.begin(), p.tokens.end());
                    n += p.num_tokens;
                    if (p.logits == LogitsMode::kAll) logits_rows += p.num_tokens;
                    if (p.logits == LogitsMode::kLast || p.logits == LogitsMode::kSample) ++rows[p.seq_id];
                    last_modes[p.seq_id] = static_cast<int>(p.logits);
                }
                EXPECT_LE(n, max_tokens);
                EXPECT_LE(static_cast<int64_t>(sub.size()), max_seqs);
                EXPECT_FALSE(sub.empty());
            }
            std::vector<int32_t> want = a;
            want.insert(want.end(), b.begin(), b.end());
            want.push_back(300);
            EXPECT_EQ(flat, want);
            EXPECT_EQ(logits_rows, 3);  // sequence 2's kAll rows, all of them
            EXPECT_EQ(rows[1], 1);      // kLast once, on the last piece
            EXPECT_EQ(rows[3], 1);
            EXPECT_EQ(last_modes[1], static_cast<int>(LogitsMode::kLast));
            EXPECT_EQ(last_modes[3], static_cast<int>(LogitsMode::kSample));
        }
    }
    EXPECT_TRUE(is_decode_step(std::span<const SeqChunk>(&chunks[2], 1)));
    EXPECT_FALSE(is_decode_step(chunks));
    EXPECT_FALSE(is_decode_step({}));
}

}  // namespace
}  // namespace deepshard::model::gpu
