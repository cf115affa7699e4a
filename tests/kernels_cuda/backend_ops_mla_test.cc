// Every CUDA op against its CPU twin, part 2 (part 1: backend_ops_test.cc): the MLA ops at DeepSeek-V3's
// dimensions (latent-cache write into an fp32 and a BF16 cache, W_UK / W_UV absorption with the FP8
// kv_b_proj of 128 heads, decode attention with uniform and length-balanced splits, prefill with the
// causal mask), FP8 activation quantization, greedy argmax, and the GPU sampler against model::Sampler
// at the real vocabulary. Same "[op]" table lines. Skips visibly without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>

#include "common/dtype.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/mla_attention.h"
#include "kernels/cuda/mla_ops.h"
#include "kernels/cuda/sampling.h"
#include "kernels/kernels.h"
#include "kernels/mla.h"
#include "model/make_model.h"
#include "model/sampling.h"
#include "tests/kernels_cuda/cuda_test_util.h"

namespace deepshard::kernels::cuda {
namespace {

using testing::from_device;
using testing::to_device;

bool quick() {
    const char* q = std::getenv("DS_BACKEND_OPS_QUICK");
    return q != nullptr && q[0] == '1';
}

std::vector<float> randn(int64_t n, uint32_t seed, float scale = 1.0f) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.0f, scale);
    std::vector<float> v(static_cast<size_t>(n));
    for (float& f : v) f = nd(rng);
    return v;
}

double nmse(const float* got, const float* want, int64_t n) {
    double e = 0, w = 0;
    for (int64_t i = 0; i < n; ++i) {
        if (!std::isfinite(got[i])) return INFINITY;
        const double d = static_cast<double>(got[i]) - want[i];
        e += d * d;
        w += static_cast<double>(want[i]) * want[i];
    }
    return e / std::max(w, 1e-300);
}

std::string dims_str(int64_t a, int64_t b) { return std::to_string(a) + "x" + std::to_string(b); }

void report(const std::string& op, const std::string& shape, double err, double bound) {
    std::printf("[op] %-28s %-40s nmse %.3e (bound %.0e) %s\n", op.c_str(), shape.c_str(), err, bound,
                err <= bound ? "OK" : "FAIL");
    std::fflush(stdout);
    EXPECT_LE(err, bound) << op << " " << shape;
}

std::vector<float> rope_freqs(int64_t rd) {
    std::vector<float> f(static_cast<size_t>(rd / 2));
    for (int64_t i = 0; i < rd / 2; ++i) f[i] = std::pow(10000.0f, -2.0f * static_cast<float>(i) / static_cast<float>(rd));
    return f;
}

// A paged cache of `lens` sequences (one layer) on both sides: the CPU float pool and the device pool in
// `dtype`; with BF16 the CPU pool holds the BF16-rounded values, so both attend over identical numbers.
struct Cache {
    int32_t latent = 512, rope = 64, bs = 16, num_blocks = 0, max_blocks = 0;
    std::vector<int32_t> lens, tables;
    std::vector<float> pool;
    DeviceBuffer dpool, dtables;
    KvDType dtype = KvDType::kF32;
    int64_t stride() const { return latent + rope; }
    LatentCache cpu() {
        LatentCache c;
        c.data = pool.data();
        c.block_stride = bs * stride();
        c.token_stride = stride();
        c.block_size = bs;
        c.num_blocks = num_blocks;
        c.latent_dim = latent;
        c.rope_dim = rope;
        return c;
    }
    MlaCache gpu() const { return mla_cache_layer(dpool.get(), dtype, 1, 0, bs, num_blocks, latent, rope); }
};

Cache make_cache(const std::vector<int32_t>& lens, KvDType dtype, uint32_t seed) {
    Cache c;
    c.lens = lens;
    c.dtype = dtype;
    for (int32_t l : lens) c.max_blocks = std::max(c.max_blocks, (l + c.bs - 1) / c.bs);
    c.max_blocks += 1;
    for (int32_t l : lens) c.num_blocks += (l + c.bs - 1) / c.bs;
    c.num_blocks += 3;
    std::mt19937 rng(seed);
    std::vector<int32_t> ids(c.num_blocks);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    c.tables.assign(lens.size() * c.max_blocks, 0);
    int32_t next = 0;
    for (size_t r = 0; r < lens.size(); ++r) {
        for (int32_t k = 0; k < (lens[r] + c.bs - 1) / c.bs; ++k) c.tables[r * c.max_blocks + k] = ids[next++];
    }
    c.pool = randn(static_cast<int64_t>(c.num_blocks) * c.bs * c.stride(), seed + 1);
    if (dtype == KvDType::kBF16) {
        std::vector<uint16_t> bits(c.pool.size());
        for (size_t i = 0; i < bits.size(); ++i) {
            bits[i] = encode_bf16(c.pool[i]);
            c.pool[i] = decode_bf16(bits[i]);
        }
        c.dpool = to_device(bits);
    } else {
        c.dpool = to_device(c.pool);
    }
    c.dtables = to_device(c.tables);
    return c;
}

TEST(BackendOpsMla, CacheWriteAndAbsorptions) {
    DS_REQUIRE_CUDA();
    const int64_t heads = quick() ? 16 : 128, nope = 128, rd = 64, vd = 128, R = 512, T = 7;
    const auto freqs = rope_freqs(rd);
    auto dfreq = to_device(freqs);
    for (KvDType dt : {KvDType::kF32, KvDType::kBF16}) {
        Cache c = make_cache({40, 3}, dt, 5);
        auto kv = randn(T * (R + rd), 6);
        auto norm = randn(R, 7, 0.2f);
        for (float& v : norm) v += 1.0f;
        std::vector<int32_t> pos = {0, 1, 17, 39, 0, 1, 2}, rows = {0, 0, 0, 0, 1, 1, 1};
        std::vector<float> kv_cpu = kv;
        kernels::BlockTables bt{c.tables.data(), static_cast<int64_t>(c.lens.size()), c.max_blocks};
        kernels::mla_cache_write(kv_cpu.data(), T, R + rd, norm.data(), 1e-6f, pos.data(), freqs.data(), c.cpu(), bt,
                                 rows.data());
        auto dkv = to_device(kv), dnorm = to_device(norm), dpos = to_device(pos), drows = to_device(rows);
        ASSERT_TRUE(mla_cache_write(dkv.as<float>(), T, R + rd, dnorm.as<float>(), 1e-6f, dpos.as<int32_t>(),
                                    dfreq.as<float>(), c.gpu(), c.dtables.as<int32_t>(),
                                    static_cast<int64_t>(c.lens.size()), c.max_blocks, drows.as<int32_t>(), nullptr)
                        .ok());
        report("mla_cache_write (row)", dims_str(T, R + rd), nmse(from_device<float>(dkv, kv.size()).data(), kv_cpu.data(),
                                                                  static_cast<int64_t>(kv.size())),
               1e-12);
        // The written slots, decoded, against the CPU cache (BF16: one rounding of the same value).
        std::vector<float> got(T * (R + rd)), want(T * (R + rd));
        const size_t esz = static_cast<size_t>(kv_dtype_size(dt));
        std::vector<uint8_t> raw(c.pool.size() * esz);
        ASSERT_EQ(cudaMemcpy(raw.data(), c.dpool.get(), raw.size(), cudaMemcpyDeviceToHost), cudaSuccess);
        for (int64_t t = 0; t < T; ++t) {
            const int32_t blk = c.tables[rows[t] * c.max_blocks + pos[t] / c.bs];
            const int64_t base = (static_cast<int64_t>(blk) * c.bs + pos[t] % c.bs) * c.stride();
            for (int64_t d = 0; d < R + rd; ++d) {
                want[t * (R + rd) + d] = c.pool[base + d];
                got[t * (R + rd) + d] = dt == KvDType::kF32
                                            ? reinterpret_cast<const float*>(raw.data())[base + d]
                                            : decode_bf16(reinterpret_cast<const uint16_t*>(raw.data())[base + d]);
            }
        }
        report(std::string("mla_cache_write (") + kv_dtype_name(dt) + ")", dims_str(T, R + rd),
               nmse(got.data(), want.data(), T * (R + rd)), dt == KvDType::kF32 ? 1e-12 : 2e-5);
    }
    // W_UK / W_UV absorption with kv_b_proj [heads * 256, 512] in FP8.
    std::vector<float> wf = randn(heads * (nope + vd) * R, 8, 0.05f);
    std::vector<uint8_t> q8(wf.size());
    std::vector<float> sc(static_cast<size_t>(((heads * (nope + vd) + 127) / 128) * 4));
    model::quantize_fp8_blocks(wf.data(), heads * (nope + vd), R, 128, 128, q8.data(), sc.data());
    WeightView w;
    w.dtype = DType::kF8E4M3;
    w.data = q8.data();
    w.rows = heads * (nope + vd);
    w.cols = R;
    w.ld = R;
    w.scale = sc.data();
    w.scale_ld = 4;
    auto dw = upload_weight(w);
    ASSERT_TRUE(dw.ok());
    const int64_t qk = nope + rd;
    auto q = randn(T * heads * qk, 9);
    std::vector<float> qlat(T * heads * R);
    kernels::mla_absorb_q(q.data(), T, heads * qk, qk, heads, nope, w, nope + vd, qlat.data());
    auto dq = to_device(q), dql = to_device(std::vector<float>(qlat.size(), NAN));
    ASSERT_TRUE(mla_absorb_q(dq.as<float>(), T, heads * qk, qk, heads, nope, dw->view, nope + vd, dql.as<float>(), nullptr).ok());
    report("mla_absorb_q", dims_str(T, heads) + "x" + std::to_string(nope),
           nmse(from_device<float>(dql, qlat.size()).data(), qlat.data(), static_cast<int64_t>(qlat.size())), 1e-10);
    auto ol = randn(T * heads * R, 10);
    std::vector<float> o(T * heads * vd);
    kernels::mla_absorb_out(ol.data(), T, heads, w, nope + vd, nope, vd, o.data());
    auto dol = to_device(ol), dout = to_device(std::vector<float>(o.size(), NAN));
    ASSERT_TRUE(mla_absorb_out(dol.as<float>(), T, heads, dw->view, nope + vd, nope, vd, dout.as<float>(), nullptr).ok());
    report("mla_absorb_out", dims_str(T, heads) + "x" + std::to_string(vd),
           nmse(from_device<float>(dout, o.size()).data(), o.data(), static_cast<int64_t>(o.size())), 1e-10);
}

TEST(BackendOpsMla, DecodeAndPrefillAttention) {
    DS_REQUIRE_CUDA();
    const int32_t heads = quick() ? 16 : 128;
    const std::vector<int32_t> lens = quick() ? std::vector<int32_t>{1, 17, 300} : std::vector<int32_t>{1, 17, 1000, 4096, 33};
    const int64_t B = static_cast<int64_t>(lens.size()), R = 512, rd = 64;
    const float scale = 0.1352338f;
    int sms = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
    for (KvDType dt : {KvDType::kF32, KvDType::kBF16}) {
        Cache c = make_cache(lens, dt, 21);
        auto qlat = randn(B * heads * R, 22), qpe = randn(B * heads * rd, 23);
        // CPU twin: query b attends to [0, lens[b]) with table row b.
        kernels::MlaAttentionArgs ca;
        ca.cache = c.cpu();
        ca.num_heads = heads;
        ca.softmax_scale = scale;
        ca.num_queries = B;
        ca.q_lat = qlat.data();
        ca.q_lat_ld_token = heads * R;
        ca.q_lat_ld_head = R;
        ca.q_pe = qpe.data();
        ca.q_pe_ld_token = heads * rd;
        ca.q_pe_ld_head = rd;
        ca.tables = {c.tables.data(), B, c.max_blocks};
        std::vector<float> want(B * heads * R);
        ca.out = want.data();
        ca.out_ld_token = heads * R;
        ca.out_ld_head = R;
        std::vector<int32_t> rows(B), qpos(B);
        std::iota(rows.begin(), rows.end(), 0);
        for (int64_t b = 0; b < B; ++b) qpos[b] = lens[b] - 1;
        kernels::mla_attention(ca, rows.data(), qpos.data());
        auto dql = to_device(qlat), dqp = to_device(qpe), dlens = to_device(lens);
        auto dout = to_device(std::vector<float>(want.size(), NAN));
        MlaAttentionArgs ga;
        ga.cache = c.gpu();
        ga.num_heads = heads;
        ga.softmax_scale = scale;
        ga.num_queries = B;
        ga.q_lat = dql.as<float>();
        ga.q_lat_ld_token = heads * R;
        ga.q_lat_ld_head = R;
        ga.q_pe = dqp.as<float>();
        ga.q_pe_ld_token = heads * rd;
        ga.q_pe_ld_head = rd;
        ga.block_tables = c.dtables.as<int32_t>();
        ga.num_table_rows = B;
        ga.max_blocks_per_seq = c.max_blocks;
        ga.out = dout.as<float>();
        ga.out_ld_token = heads * R;
        ga.out_ld_head = R;
        const std::string shape = "B" + std::to_string(B) + " h" + std::to_string(heads) + " max " +
                                  std::to_string(*std::max_element(lens.begin(), lens.end())) + " " + kv_dtype_name(dt);
        for (int32_t splits : {1, 7}) {
            const size_t bytes = mla_decode_scratch_bytes(B, heads, static_cast<int32_t>(R), splits);
            auto scratch = DeviceBuffer::create(std::max<size_t>(bytes, 4));
            ASSERT_TRUE(scratch.ok());
            ASSERT_TRUE(mla_decode(ga, dlens.as<int32_t>(), splits, scratch->get(), bytes, nullptr).ok());
            report("mla_decode splits " + std::to_string(splits), shape,
                   nmse(from_device<float>(dout, want.size()).data(), want.data(), static_cast<int64_t>(want.size())),
                   1e-10);
        }
        const int32_t ctas = std::max(1, 2 * sms / ((heads + 15) / 16));
        const size_t sbytes = mla_scheduled_scratch_bytes(B, heads, static_cast<int32_t>(R), ctas);
        auto scratch = DeviceBuffer::create(sbytes);
        auto doff = to_device(std::vector<int32_t>(B + 1));
        ASSERT_TRUE(scratch.ok());
        ASSERT_TRUE(mla_plan_decode(dlens.as<int32_t>(), B, ctas, doff.as<int32_t>(), nullptr).ok());
        ASSERT_TRUE(mla_decode_scheduled(ga, dlens.as<int32_t>(), doff.as<int32_t>(), ctas, scratch->get(), sbytes, nullptr).ok());
        std::vector<int32_t> want_off(B + 1);
        mla_plan_splits(lens.data(), static_cast<int32_t>(B), ctas, want_off.data());
        EXPECT_EQ(from_device<int32_t>(doff, B + 1), want_off) << "the device schedule is the host function's";
        report("mla_decode balanced", shape,
               nmse(from_device<float>(dout, want.size()).data(), want.data(), static_cast<int64_t>(want.size())), 1e-10);
        // Prefill: every position of sequence 2 (causal), plus the last token of the others.
        std::vector<int32_t> prow, ppos;
        for (int32_t p = 0; p < lens[2]; p += lens[2] > 64 ? 13 : 1) {
            prow.push_back(2);
            ppos.push_back(p);
        }
        prow.push_back(0);
        ppos.push_back(0);
        const int64_t Tq = static_cast<int64_t>(prow.size());
        auto pql = randn(Tq * heads * R, 24), pqp = randn(Tq * heads * rd, 25);
        ca.num_queries = Tq;
        ca.q_lat = pql.data();
        ca.q_pe = pqp.data();
        std::vector<float> pwant(Tq * heads * R);
        ca.out = pwant.data();
        kernels::mla_attention(ca, prow.data(), ppos.data());
        auto dpql = to_device(pql), dpqp = to_device(pqp), dprow = to_device(prow), dppos = to_device(ppos);
        auto dpout = to_device(std::vector<float>(pwant.size(), NAN));
        ga.num_queries = Tq;
        ga.q_lat = dpql.as<float>();
        ga.q_pe = dpqp.as<float>();
        ga.out = dpout.as<float>();
        ASSERT_TRUE(mla_prefill(ga, dprow.as<int32_t>(), dppos.as<int32_t>(), nullptr).ok());
        report("mla_prefill causal", "T" + std::to_string(Tq) + " " + shape,
               nmse(from_device<float>(dpout, pwant.size()).data(), pwant.data(), static_cast<int64_t>(pwant.size())),
               1e-10);
    }
}

TEST(BackendOpsMla, QuantizeArgmaxAndSampling) {
    DS_REQUIRE_CUDA();
    // FP8 activations: codes and scales exactly as the host quantizer (encode_e4m3).
    const int64_t m = 5, mp = 16, k = 7168;
    auto x = randn(m * k, 31);
    for (int64_t i = 0; i < 128; ++i) x[i] = 0.0f;  // an all-zero block: scale 1, codes 0
    auto dx = to_device(x);
    auto dq = to_device(std::vector<uint8_t>(mp * k, 0xff)), ds = to_device(std::vector<float>(mp * (k / 128), NAN));
    ASSERT_TRUE(quantize_fp8_act(dx.as<float>(), m, mp, k, k, dq.as<uint8_t>(), ds.as<float>(), true, nullptr).ok());
    const auto q = from_device<uint8_t>(dq, mp * k);
    const auto s = from_device<float>(ds, mp * (k / 128));
    int64_t bad = 0;
    for (int64_t i = 0; i < mp; ++i) {
        for (int64_t b = 0; b < k / 128; ++b) {
            float amax = 0;
            for (int64_t j = 0; j < 128; ++j) amax = std::max(amax, i < m ? std::fabs(x[i * k + b * 128 + j]) : 0.0f);
            const float sc = amax > 0 ? amax / 448.0f : 1.0f;
            bad += s[b * mp + i] != sc;
            for (int64_t j = 0; j < 128; ++j) {
                const float v = i < m ? x[i * k + b * 128 + j] : 0.0f;
                bad += q[i * k + b * 128 + j] != f32_to_e4m3(v / sc);
            }
        }
    }
    EXPECT_EQ(bad, 0);
    std::printf("[op] %-28s %-40s mismatching codes/scales: %lld %s\n", "quantize_fp8_act", "16x7168", static_cast<long long>(bad),
                bad == 0 ? "OK" : "FAIL");
    // Greedy argmax and the sampler at the real vocabulary.
    const int64_t V = 129280, rows = 24;
    std::vector<float> logits = randn(rows * V, 32, 2.0f);
    for (int64_t r = 0; r < rows; r += 3) logits[r * V + (r * 7919) % V] += 9.0f;  // some peaked rows
    auto dl = to_device(logits);
    auto dam = to_device(std::vector<int32_t>(rows, -1));
    ASSERT_TRUE(argmax(dl.as<float>(), rows, V, V, dam.as<int32_t>(), nullptr).ok());
    const auto am = from_device<int32_t>(dam, rows);
    for (int64_t r = 0; r < rows; ++r) {
        EXPECT_EQ(am[r], std::max_element(logits.begin() + r * V, logits.begin() + (r + 1) * V) - (logits.begin() + r * V));
    }
    std::mt19937_64 rng(33);
    std::vector<SampleParams> params(rows);
    std::vector<int32_t> pen_ids;
    std::vector<float> pen_counts;
    std::vector<model::SampleResult> want;
    for (int64_t r = 0; r < rows; ++r) {
        model::SamplingParams sp;
        sp.has_seed = true;
        sp.seed = rng();
        sp.temperature = r % 6 == 0 ? 0.0f : 0.6f + 0.1f * static_cast<float>(r % 5);
        if (r % 6 == 1) sp.top_k = 40;
        if (r % 6 == 2) sp.top_p = 0.9f;
        if (r % 6 == 3) sp.min_p = 0.05f;
        if (r % 6 == 4) {
            sp.top_k = 100;
            sp.top_p = 0.8f;
            sp.min_p = 0.02f;
            sp.repetition_penalty = 1.2f;
            sp.frequency_penalty = 0.3f;
            sp.presence_penalty = 0.2f;
        }
        sp.logprobs = static_cast<int>(r % 4) * 5;
        std::vector<int32_t> prompt;
        for (int i = 0; i < 50; ++i) prompt.push_back(static_cast<int32_t>(rng() % V));
        model::Sampler smp(sp, prompt);
        for (int i = 0; i < 10; ++i) smp.accept(static_cast<int32_t>(rng() % V));
        const uint64_t key = rng();
        SampleParams& p = params[r];
        p.temperature = smp.params().temperature;
        p.top_k = smp.params().top_k;
        p.top_p = smp.params().top_p;
        p.min_p = smp.params().min_p;
        p.repetition_penalty = smp.params().repetition_penalty;
        p.frequency_penalty = smp.params().frequency_penalty;
        p.presence_penalty = smp.params().presence_penalty;
        p.logprobs = smp.params().logprobs;
        p.step_key = key;
        p.row = static_cast<int32_t>(r);
        p.penalty_begin = static_cast<int32_t>(pen_ids.size());
        for (int32_t id : smp.seen()) {
            auto it = smp.generated().find(id);
            pen_ids.push_back(id);
            pen_counts.push_back(it == smp.generated().end() ? 0.0f : static_cast<float>(it->second));
        }
        p.penalty_end = static_cast<int32_t>(pen_ids.size());
        want.push_back(smp.sample_with_key(std::span<const float>(logits.data() + r * V, V), key));
    }
    auto dparams = to_device(params), dids = to_device(pen_ids), dcounts = to_device(pen_counts);
    auto douts = to_device(std::vector<SampleOut>(rows));
    ASSERT_TRUE(sample_rows(dl.as<float>(), V, V, dparams.as<SampleParams>(), rows, dids.as<int32_t>(),
                            dcounts.as<float>(), douts.as<SampleOut>(), nullptr).ok());
    const auto got = from_device<SampleOut>(douts, rows);
    int same = 0;
    for (int64_t r = 0; r < rows; ++r) {
        same += got[r].token == want[r].token;
        EXPECT_EQ(got[r].token, want[r].token) << "row " << r;
        EXPECT_NEAR(got[r].logprob, want[r].logprob, 1e-4f * (1.0f + std::fabs(want[r].logprob))) << "row " << r;
        ASSERT_EQ(got[r].num_top, static_cast<int32_t>(want[r].top_logprobs.size())) << "row " << r;
        for (int32_t a = 0; a < got[r].num_top; ++a) EXPECT_EQ(got[r].top_ids[a], want[r].top_logprobs[a].first);
    }
    std::printf("[op] %-28s %-40s same token as model::Sampler: %d/%lld %s\n", "sample_rows", "24x129280", same,
                static_cast<long long>(rows), same == rows ? "OK" : "FAIL");
}

}  // namespace
}  // namespace deepshard::kernels::cuda
