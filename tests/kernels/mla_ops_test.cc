// The MLA ops of kernels/mla.h against double-precision references written from MODEL_SPEC §2: the
// rotation, the cache write, and above all absorbed attention (W_UK into the query, attention over the
// latent cache, W_UV on the way out) against the naive form that materializes per-head keys and values.
// Shapes include the real model's (kv_lora 512, rope 64, nope 128, v 128, a TP slice of its 128 heads).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kernels/kernels.h"
#include "kernels/mla.h"
#include "model/config.h"
#include "tests/kernels/kernel_test_util.h"

namespace deepshard::kernels {
namespace {

using testing::random_vec;
using testing::TestWeight;

model::ModelConfig real_config() {
    const char* src = std::getenv("DS_SOURCE_DIR");
    auto c = model::ModelConfig::load(std::string(src ? src : ".") + "/configs/deepseek-v3-671b.json");
    EXPECT_TRUE(c.ok()) << c.status().to_string();
    return c.ok() ? *c : model::ModelConfig{};
}

// The rotation of MODEL_SPEC §2 in double, from the same float angle the kernels use.
void rope_ref(std::vector<double>& v, size_t off, int64_t rd, int32_t pos, const std::vector<float>& inv_freq) {
    for (int64_t i = 0; i < rd / 2; ++i) {
        const float angle = static_cast<float>(pos) * inv_freq[i];
        const double cs = std::cos(static_cast<double>(angle)), sn = std::sin(static_cast<double>(angle));
        const double x0 = v[off + 2 * i], x1 = v[off + 2 * i + 1];
        v[off + 2 * i] = x0 * cs - x1 * sn;
        v[off + 2 * i + 1] = x0 * sn + x1 * cs;
    }
}

// A paged pool of `blocks` blocks (one layer) with a shuffled block table per sequence.
struct TestCache {
    int32_t block_size, num_blocks, latent, rope;
    std::vector<float> pool;
    std::vector<int32_t> tables;
    int32_t max_blocks;
    LatentCache view() {
        LatentCache c;
        c.data = pool.data();
        c.token_stride = latent + rope + 3;  // padded slots: strides must be honoured
        c.block_stride = block_size * c.token_stride;
        c.block_size = block_size;
        c.num_blocks = num_blocks;
        c.latent_dim = latent;
        c.rope_dim = rope;
        return c;
    }
    BlockTables bt() const { return {tables.data(), static_cast<int64_t>(tables.size()) / max_blocks, max_blocks}; }
    TestCache(int32_t bs, int32_t seqs, int32_t max_len, int32_t latent_dim, int32_t rope_dim, uint32_t seed)
        : block_size(bs), latent(latent_dim), rope(rope_dim) {
        max_blocks = (max_len + bs - 1) / bs;
        num_blocks = seqs * max_blocks + 2;
        pool = random_vec(static_cast<int64_t>(num_blocks) * bs * (latent + rope + 3), seed);
        std::vector<int32_t> ids(static_cast<size_t>(num_blocks));
        for (int32_t i = 0; i < num_blocks; ++i) ids[i] = i;
        std::shuffle(ids.begin(), ids.end(), std::mt19937(seed));
        tables.assign(ids.begin(), ids.begin() + seqs * max_blocks);
    }
    const float* at(int32_t row, int64_t pos) {
        return view().slot(tables[row * max_blocks + pos / block_size], pos % block_size);
    }
};

TEST(MlaOps, RopeInterleavedRotatesEveryHeadsSlice) {
    const model::ModelConfig c = real_config();
    const std::vector<float> inv_freq = c.rope_inv_freq();
    const int64_t T = 3, heads = 4, ld_head = 192, offset = 128, rd = 64, ld_token = heads * ld_head + 5;
    std::vector<float> x = random_vec(T * ld_token, 3);
    std::vector<double> ref(x.begin(), x.end());
    const std::vector<int32_t> pos = {0, 4097, 163839};
    for (int64_t t = 0; t < T; ++t) {
        for (int64_t h = 0; h < heads; ++h) rope_ref(ref, t * ld_token + h * ld_head + offset, rd, pos[t], inv_freq);
    }
    rope_interleaved(x.data(), T, ld_token, heads, ld_head, offset, rd, pos.data(), inv_freq.data());
    for (size_t i = 0; i < x.size(); ++i) {
        ASSERT_NEAR(x[i], ref[i], 1e-5 * (1 + std::fabs(ref[i]))) << "element " << i;
    }
}

TEST(MlaOps, CacheWriteNormalizesRotatesAndStoresInTheTablesBlock) {
    const model::ModelConfig c = real_config();
    const std::vector<float> inv_freq = c.rope_inv_freq();
    const int32_t R = 512, rd = 64, bs = 16;
    TestCache cache(bs, 2, 40, R, rd, 5);
    const int64_t T = 4, ld = R + rd + 7;
    std::vector<float> kv = random_vec(T * ld, 6);
    const std::vector<float> norm_w = random_vec(R, 7);
    const std::vector<int32_t> pos = {0, 17, 39, 16}, rows = {0, 1, 1, 0};
    std::vector<double> ref(kv.begin(), kv.end());
    for (int64_t t = 0; t < T; ++t) {
        double ss = 0;
        for (int32_t r = 0; r < R; ++r) ss += static_cast<double>(kv[t * ld + r]) * kv[t * ld + r];
        const double inv = 1.0 / std::sqrt(ss / R + 1e-6);
        for (int32_t r = 0; r < R; ++r) ref[t * ld + r] = kv[t * ld + r] * inv * norm_w[r];
        rope_ref(ref, t * ld + R, rd, pos[t], inv_freq);
    }
    mla_cache_write(kv.data(), T, ld, norm_w.data(), 1e-6f, pos.data(), inv_freq.data(), cache.view(), cache.bt(),
                    rows.data());
    for (int64_t t = 0; t < T; ++t) {
        const float* slot = cache.at(rows[t], pos[t]);
        for (int32_t i = 0; i < R + rd; ++i) {
            ASSERT_NEAR(slot[i], ref[t * ld + i], 2e-5 * (1 + std::fabs(ref[t * ld + i]))) << "token " << t << " " << i;
            ASSERT_EQ(slot[i], kv[t * ld + i]);  // the row is updated in place too
        }
    }
}

struct MlaShape {
    const char* name;
    int64_t heads, nope, rd, vd, R;
    int32_t block_size;
    DType dtype;
};

// Absorbed MLA through the ops == naive MLA (per-head k_nope = W_UK . c, v = W_UV . c) in double, for
// decode and for a causal prefill chunk, over a shuffled paged cache.
void check_absorbed_equals_naive(const MlaShape& s) {
    SCOPED_TRACE(s.name);
    const int64_t nh = s.heads, nope = s.nope, rd = s.rd, vd = s.vd, R = s.R, qk = nope + rd, hr = nope + vd;
    // wkv_b of the local heads plus one extra head before them: the ops must honour head_rows offsets.
    TestWeight full(s.dtype, (nh + 1) * hr, R, 11);
    const WeightView wkv_b = full.view().slice_rows(hr, nh * hr);
    const int32_t ctx = 37;
    TestCache cache(s.block_size, 2, ctx, static_cast<int32_t>(R), static_cast<int32_t>(rd), 12);
    // Queries: row 0 decodes at position 36, row 1 prefills positions 10..12 (causal).
    const std::vector<int32_t> qrow = {0, 1, 1, 1}, qpos = {36, 10, 11, 12};
    const int64_t T = static_cast<int64_t>(qrow.size());
    std::vector<float> q = random_vec(T * nh * qk, 13);
    const float scale = 0.1352338f;

    std::vector<float> qlat(T * nh * R), olat(T * nh * R), o(T * nh * vd);
    mla_absorb_q(q.data(), T, nh * qk, qk, nh, nope, wkv_b, hr, qlat.data());
    MlaAttentionArgs a;
    a.cache = cache.view();
    a.num_heads = static_cast<int32_t>(nh);
    a.softmax_scale = scale;
    a.num_queries = T;
    a.q_lat = qlat.data();
    a.q_lat_ld_token = nh * R;
    a.q_lat_ld_head = R;
    a.q_pe = q.data() + nope;
    a.q_pe_ld_token = nh * qk;
    a.q_pe_ld_head = qk;
    a.tables = cache.bt();
    a.out = olat.data();
    a.out_ld_token = nh * R;
    a.out_ld_head = R;
    mla_attention(a, qrow.data(), qpos.data());
    mla_absorb_out(olat.data(), T, nh, wkv_b, hr, nope, vd, o.data());

    double worst = 0, largest = 0;
    for (int64_t t = 0; t < T; ++t) {
        for (int64_t h = 0; h < nh; ++h) {
            const float* qh = q.data() + (t * nh + h) * qk;
            const int64_t n = qpos[t] + 1;
            std::vector<double> sc(n);
            std::vector<std::vector<double>> v(n, std::vector<double>(vd));
            double mx = -1e300;
            for (int64_t j = 0; j < n; ++j) {
                const float* slot = cache.at(qrow[t], j);
                double dot = 0;
                for (int64_t d = 0; d < nope; ++d) {
                    double k = 0;  // k_nope[j, h, d] = W_UK[h][d] . c[j]
                    for (int64_t r = 0; r < R; ++r) k += wkv_b.at(h * hr + d, r) * static_cast<double>(slot[r]);
                    dot += qh[d] * k;
                }
                for (int64_t d = 0; d < rd; ++d) dot += static_cast<double>(qh[nope + d]) * slot[R + d];
                for (int64_t e = 0; e < vd; ++e) {
                    double val = 0;
                    for (int64_t r = 0; r < R; ++r) val += wkv_b.at(h * hr + nope + e, r) * static_cast<double>(slot[r]);
                    v[j][e] = val;
                }
                sc[j] = dot * scale;
                mx = std::max(mx, sc[j]);
            }
            double sum = 0;
            for (double& x : sc) sum += (x = std::exp(x - mx));
            for (int64_t e = 0; e < vd; ++e) {
                double ref = 0;
                for (int64_t j = 0; j < n; ++j) ref += sc[j] / sum * v[j][e];
                worst = std::max(worst, std::fabs(ref - o[(t * nh + h) * vd + e]));
                largest = std::max(largest, std::fabs(ref));
            }
        }
    }
    EXPECT_GT(largest, 1e-3);
    EXPECT_LT(worst, 2e-4 * std::max(1.0, largest)) << "largest " << largest;
}

TEST(MlaOps, AbsorbedAttentionEqualsTheNaiveForm) {
    testing::IsaGuard guard;
    for (Isa isa : testing::runnable_isas()) {  // the blocked SIMD attention and the scalar loop
        set_isa(isa);
        SCOPED_TRACE(isa_name(isa));
        check_absorbed_equals_naive({"small-bf16", 3, 16, 8, 12, 32, 4, DType::kBF16});
        check_absorbed_equals_naive({"small-fp8", 2, 16, 8, 16, 48, 8, DType::kF8E4M3});
        // DeepSeek-V3's dimensions: two of the 128 heads (a TP slice), latent 512, rope 64, 128/128 heads.
        check_absorbed_equals_naive({"deepseek-v3-fp8", 2, 128, 64, 128, 512, 16, DType::kF8E4M3});
    }
}

// A long causal prefill (several key blocks, many query blocks and head groups) against a double
// reference of the absorbed attention itself, on every ISA.
TEST(MlaOps, LongPrefillAttentionMatchesDoubleReference) {
    testing::IsaGuard guard;
    const int32_t R = 48, rd = 16, bs = 16, ctx = 150;
    const int64_t nh = 6;
    TestCache cache(bs, 2, ctx, R, rd, 41);
    std::vector<int32_t> rows, pos;
    for (int32_t p = 0; p < ctx; ++p) {  // sequence 1 prefills everything; sequence 0 decodes at 149
        rows.push_back(1);
        pos.push_back(p);
    }
    rows.push_back(0);
    pos.push_back(ctx - 1);
    const int64_t T = static_cast<int64_t>(rows.size());
    const std::vector<float> qlat = random_vec(T * nh * R, 42), qpe = random_vec(T * nh * rd, 43);
    for (Isa isa : testing::runnable_isas()) {
        set_isa(isa);
        std::vector<float> out(T * nh * R);
        MlaAttentionArgs a;
        a.cache = cache.view();
        a.num_heads = static_cast<int32_t>(nh);
        a.softmax_scale = 0.15f;
        a.num_queries = T;
        a.q_lat = qlat.data();
        a.q_lat_ld_token = nh * R;
        a.q_lat_ld_head = R;
        a.q_pe = qpe.data();
        a.q_pe_ld_token = nh * rd;
        a.q_pe_ld_head = rd;
        a.tables = cache.bt();
        a.out = out.data();
        a.out_ld_token = nh * R;
        a.out_ld_head = R;
        mla_attention(a, rows.data(), pos.data());
        double worst = 0;
        for (int64_t t = 0; t < T; ++t) {
            for (int64_t h = 0; h < nh; ++h) {
                const float* q = qlat.data() + (t * nh + h) * R;
                const float* qp = qpe.data() + (t * nh + h) * rd;
                std::vector<double> sc(pos[t] + 1);
                double mx = -1e300, sum = 0;
                for (int32_t j = 0; j <= pos[t]; ++j) {
                    const float* slot = cache.at(rows[t], j);
                    double d = 0;
                    for (int32_t r = 0; r < R; ++r) d += double(q[r]) * slot[r];
                    for (int32_t r = 0; r < rd; ++r) d += double(qp[r]) * slot[R + r];
                    sc[j] = d * 0.15;
                    mx = std::max(mx, sc[j]);
                }
                for (double& x : sc) sum += (x = std::exp(x - mx));
                for (int32_t r = 0; r < R; ++r) {
                    double ref = 0;
                    for (int32_t j = 0; j <= pos[t]; ++j) ref += sc[j] / sum * cache.at(rows[t], j)[r];
                    worst = std::max(worst, std::fabs(ref - out[(t * nh + h) * R + r]));
                }
            }
        }
        EXPECT_LT(worst, 2e-5) << isa_name(isa);
    }
}

// Positions after a query's own are never read: poison them and the outputs stay finite and equal.
TEST(MlaOps, AttentionIsCausalAndReadsOnlyTheTable) {
    testing::IsaGuard guard;
    for (Isa isa : testing::runnable_isas()) {
    set_isa(isa);
    SCOPED_TRACE(isa_name(isa));
    const int32_t R = 32, rd = 8, bs = 4;
    TestCache cache(bs, 1, 24, R, rd, 21);
    const int64_t nh = 2;
    std::vector<float> qlat = random_vec(2 * nh * R, 22), qpe = random_vec(2 * nh * rd, 23);
    const std::vector<int32_t> rows = {0, 0}, pos = {5, 9};
    auto run = [&] {
        std::vector<float> out(2 * nh * R);
        MlaAttentionArgs a;
        a.cache = cache.view();
        a.num_heads = nh;
        a.softmax_scale = 0.2f;
        a.num_queries = 2;
        a.q_lat = qlat.data();
        a.q_lat_ld_token = nh * R;
        a.q_lat_ld_head = R;
        a.q_pe = qpe.data();
        a.q_pe_ld_token = nh * rd;
        a.q_pe_ld_head = rd;
        a.tables = cache.bt();
        a.out = out.data();
        a.out_ld_token = nh * R;
        a.out_ld_head = R;
        mla_attention(a, rows.data(), pos.data());
        return out;
    };
    const std::vector<float> before = run();
    // Poison positions 10.. of the sequence and every block outside its table.
    for (int64_t p = 10; p < 24; ++p) {
        float* s = const_cast<float*>(cache.at(0, p));
        for (int i = 0; i < R + rd; ++i) s[i] = NAN;
    }
    std::vector<bool> in_table(static_cast<size_t>(cache.num_blocks), false);
    for (int32_t b : cache.tables) in_table[b] = true;
    for (int32_t b = 0; b < cache.num_blocks; ++b) {
        if (!in_table[b]) {
            for (int64_t o = 0; o < bs; ++o) {
                float* s = cache.view().slot(b, o);
                for (int i = 0; i < R + rd; ++i) s[i] = NAN;
            }
        }
    }
    const std::vector<float> after = run();
    ASSERT_EQ(before.size(), after.size());
    for (size_t i = 0; i < before.size(); ++i) ASSERT_EQ(before[i], after[i]) << i;
    // And the query at position 9 does see position 9: changing it changes that output only.
    float* s9 = const_cast<float*>(cache.at(0, 9));
    s9[0] += 10.0f;
    const std::vector<float> changed = run();
    for (int64_t i = 0; i < nh * R; ++i) ASSERT_EQ(changed[i], before[i]);  // query at 5
    bool differs = false;
    for (int64_t i = nh * R; i < 2 * nh * R; ++i) differs = differs || changed[i] != before[i];
    EXPECT_TRUE(differs);
    }
}

TEST(MlaOpsDeathTest, PositionBeyondTheTableIsCaught) {
    TestCache cache(4, 1, 8, 16, 4, 31);
    std::vector<float> kv = random_vec(20, 32), w(16, 1.0f), inv(2, 0.1f);
    const std::vector<int32_t> pos = {8}, rows = {0};  // the table holds positions 0..7
    EXPECT_DEATH(mla_cache_write(kv.data(), 1, 20, w.data(), 1e-6f, pos.data(), inv.data(), cache.view(), cache.bt(),
                                 rows.data()),
                 "position 8 needs block 2");
}

}  // namespace
}  // namespace deepshard::kernels
