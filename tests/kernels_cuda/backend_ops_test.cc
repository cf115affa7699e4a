// Every CUDA op against its CPU twin (ggml's test-backend-ops style): random inputs, the CPU op
// (kernels/kernels.h, mla.h, moe.h, model::Sampler) and the CUDA op (kernels/cuda/) on the same data,
// the normalized mean squared error NMSE = sum (gpu - cpu)^2 / sum cpu^2 against a bound that follows
// the path's arithmetic (fp32 paths: reordering only; BF16 tensor cores: BF16 rounding of both operands;
// FP8 x FP8: FP8 rounding of the activations). Shapes include DeepSeek-V3's: hidden 7168, 128 heads,
// q_lora 1536, kv_lora 512, rope 64, 256 experts top-8 in 8 groups, moe_inter 2048, inter 18432, vocab
// 129280. DS_BACKEND_OPS_QUICK=1 keeps only the small shapes (the compute-sanitizer run).
// Every line printed starts with "[op]" so a GPU log reads as a table. Skips visibly without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>

#include "common/dtype.h"
#include "kernels/cuda/cublaslt_fp8.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/launch_util.h"
#include "kernels/cuda/mla_attention.h"
#include "kernels/cuda/mla_ops.h"
#include "kernels/cuda/moe_ops.h"
#include "kernels/cuda/sampling.h"
#include "kernels/kernels.h"
#include "kernels/mla.h"
#include "kernels/moe.h"
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

// Fast deterministic normals (large tensors: mt19937 + normal_distribution is too slow for 10^9 values).
class Rng {
public:
    explicit Rng(uint64_t seed) : s_(seed * 0x9E3779B97F4A7C15ull + 1) {}
    uint64_t next() {
        s_ ^= s_ << 13;
        s_ ^= s_ >> 7;
        s_ ^= s_ << 17;
        return s_;
    }
    float uniform() { return static_cast<float>((next() >> 40) * 0x1.0p-24); }
    float normal() {  // sum of 4 uniforms, scaled to unit variance
        return (uniform() + uniform() + uniform() + uniform() - 2.0f) * 1.7320508f;
    }

private:
    uint64_t s_;
};

std::vector<float> randn(int64_t n, uint64_t seed, float scale = 1.0f) {
    Rng r(seed);
    std::vector<float> v(static_cast<size_t>(n));
    for (float& f : v) f = r.normal() * scale;
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

void report(const std::string& op, const std::string& shape, double err, double bound) {
    std::printf("[op] %-28s %-40s nmse %.3e (bound %.0e) %s\n", op.c_str(), shape.c_str(), err, bound,
                err <= bound ? "OK" : "FAIL");
    std::fflush(stdout);
    EXPECT_LE(err, bound) << op << " " << shape;
}

// A host weight [rows, cols] in `t` with realistic magnitudes; FP8 quantized with DeepSeek's block scheme.
struct HostWeight {
    DType dtype;
    int64_t rows, cols;
    std::vector<uint8_t> bytes;
    std::vector<float> scale;
    WeightView view() const {
        WeightView v;
        v.dtype = dtype;
        v.data = bytes.data();
        v.rows = rows;
        v.cols = cols;
        v.ld = cols;
        if (dtype == DType::kF8E4M3) {
            v.scale = scale.data();
            v.scale_ld = (cols + 127) / 128;
        }
        return v;
    }
};

HostWeight make_weight(DType t, int64_t rows, int64_t cols, uint64_t seed) {
    HostWeight w{t, rows, cols, {}, {}};
    const std::vector<float> f = randn(rows * cols, seed, 0.05f);
    w.bytes.resize(static_cast<size_t>(rows * cols) * dtype_size(t));
    if (t == DType::kF8E4M3) {
        w.scale.resize(static_cast<size_t>(((rows + 127) / 128) * ((cols + 127) / 128)));
        model::quantize_fp8_blocks(f.data(), rows, cols, 128, 128, w.bytes.data(), w.scale.data());
    } else if (t == DType::kBF16) {
        auto* p = reinterpret_cast<uint16_t*>(w.bytes.data());
        for (int64_t i = 0; i < rows * cols; ++i) p[i] = deepshard::f32_to_bf16(f[i]);
    } else {
        std::memcpy(w.bytes.data(), f.data(), f.size() * 4);
    }
    return w;
}

std::string dims(std::initializer_list<int64_t> d) {
    std::string s;
    for (int64_t v : d) s += (s.empty() ? "" : "x") + std::to_string(v);
    return s;
}

// ---- elementwise ----

TEST(BackendOps, Elementwise) {
    DS_REQUIRE_CUDA();
    for (int64_t n : {512, 1536, 7168}) {
        const int64_t m = 5;
        auto x = randn(m * n, 1 + n), w = randn(n, 2 + n), d = randn(m * n, 3 + n);
        std::vector<float> want(m * n);
        kernels::rmsnorm(x.data(), m, n, n, w.data(), 1e-6f, want.data(), n);
        auto dx = to_device(x), dw = to_device(w), dy = to_device(std::vector<float>(m * n, NAN));
        ASSERT_TRUE(rmsnorm(dx.as<float>(), m, n, n, dw.as<float>(), 1e-6f, dy.as<float>(), n, nullptr).ok());
        report("rmsnorm", dims({m, n}), nmse(from_device<float>(dy, m * n).data(), want.data(), m * n), 1e-12);
        // add_rmsnorm == residual_add then rmsnorm (h updated too).
        std::vector<float> h = x;
        kernels::residual_add(h.data(), d.data(), m * n);
        kernels::rmsnorm(h.data(), m, n, n, w.data(), 1e-6f, want.data(), n);
        auto dd = to_device(d);
        ASSERT_TRUE(add_rmsnorm(dx.as<float>(), dd.as<float>(), m, n, dw.as<float>(), 1e-6f, dy.as<float>(), nullptr).ok());
        report("add_rmsnorm", dims({m, n}), nmse(from_device<float>(dy, m * n).data(), want.data(), m * n), 1e-12);
        report("add_rmsnorm (residual)", dims({m, n}), nmse(from_device<float>(dx, m * n).data(), h.data(), m * n), 0.0);
    }
    const int64_t n = quick() ? 4096 : 18432 * 4;
    auto g = randn(n, 7), u = randn(n, 8);
    std::vector<float> want(n);
    kernels::silu_mul(g.data(), u.data(), n, want.data());
    auto dg = to_device(g), du = to_device(u);
    ASSERT_TRUE(silu_mul(dg.as<float>(), du.as<float>(), n, dg.as<float>(), nullptr).ok());
    report("silu_mul", dims({n}), nmse(from_device<float>(dg, n).data(), want.data(), n), 1e-12);
    std::vector<float> h = randn(n, 9), x = randn(n, 10);
    auto dh = to_device(h), dxx = to_device(x);
    kernels::residual_add(h.data(), x.data(), n);
    ASSERT_TRUE(residual_add(dh.as<float>(), dxx.as<float>(), n, nullptr).ok());
    report("residual_add", dims({n}), nmse(from_device<float>(dh, n).data(), h.data(), n), 0.0);
}

TEST(BackendOps, RopeAndEmbedding) {
    DS_REQUIRE_CUDA();
    // q_pe of 128 heads (qk 192 = nope 128 + rope 64) and k_pe (1 head at offset kv_lora 512).
    const std::vector<float> inv_freq = [] {
        std::vector<float> f(32);
        for (int i = 0; i < 32; ++i) f[i] = std::pow(10000.0f, -2.0f * i / 64.0f);
        return f;
    }();
    for (auto [heads, ld_head, offset] : {std::tuple<int64_t, int64_t, int64_t>{128, 192, 128}, {1, 576, 512}}) {
        const int64_t T = 6, ld = heads * ld_head;
        auto x = randn(T * ld, 11 + heads);
        std::vector<int32_t> pos = {0, 1, 7, 4095, 32767, 163839};
        std::vector<float> want = x;
        kernels::rope_interleaved(want.data(), T, ld, heads, ld_head, offset, 64, pos.data(), inv_freq.data());
        auto dx = to_device(x), dp = to_device(pos), df = to_device(inv_freq);
        ASSERT_TRUE(rope_interleaved(dx.as<float>(), T, ld, heads, ld_head, offset, 64, dp.as<int32_t>(),
                                     df.as<float>(), nullptr).ok());
        report("rope_interleaved", dims({T, heads, ld_head}), nmse(from_device<float>(dx, T * ld).data(), want.data(), T * ld),
               1e-10);
    }
    // Embedding rows of the real vocabulary width (BF16 [129280, 7168]) and a vocab-parallel slice.
    const int64_t V = quick() ? 4096 : 129280, H = quick() ? 512 : 7168;
    HostWeight e = make_weight(DType::kBF16, V, H, 21);
    auto de = upload_weight(e.view());
    ASSERT_TRUE(de.ok());
    std::vector<int32_t> ids = {0, 1, static_cast<int32_t>(V - 1), 77, static_cast<int32_t>(V / 2)};
    std::vector<float> want(ids.size() * H);
    kernels::gather_rows(e.view(), ids.data(), static_cast<int64_t>(ids.size()), want.data(), H);
    auto di = to_device(ids);
    auto dout = to_device(std::vector<float>(ids.size() * H, NAN));
    ASSERT_TRUE(embedding(de->view, di.as<int32_t>(), static_cast<int64_t>(ids.size()), dout.as<float>(), H, nullptr).ok());
    report("embedding", dims({V, H}), nmse(from_device<float>(dout, want.size()).data(), want.data(),
                                           static_cast<int64_t>(want.size())), 0.0);
}

// ---- GEMMs per dtype and path ----

struct GemmCase {
    const char* name;
    DType t;
    int64_t n, k;
};

TEST(BackendOps, MatmulPerDtypeAndPath) {
    DS_REQUIRE_CUDA();
    std::vector<GemmCase> cases = {{"f32 small", DType::kF32, 130, 200},
                                   {"bf16 odd", DType::kBF16, 77, 129},
                                   {"fp8 odd", DType::kF8E4M3, 200, 300}};
    if (!quick()) {
        cases.insert(cases.end(), {{"wq_a fp8", DType::kF8E4M3, 1536, 7168},
                                   {"wq_b fp8 (128 heads)", DType::kF8E4M3, 128 * 192, 1536},
                                   {"wkv_a fp8", DType::kF8E4M3, 576, 7168},
                                   {"wo fp8 (128 heads)", DType::kF8E4M3, 7168, 128 * 128},
                                   {"dense w1 fp8", DType::kF8E4M3, 18432, 7168},
                                   {"dense w2 fp8", DType::kF8E4M3, 7168, 18432},
                                   {"expert w1 fp8", DType::kF8E4M3, 2048, 7168},
                                   {"router bf16", DType::kBF16, 256, 7168},
                                   {"lm_head bf16", DType::kBF16, 129280, 7168}});
    }
    auto handle = CublasLtHandle::create();
    ASSERT_TRUE(handle.ok());
    std::unique_ptr<Fp8Gemm> fp8;
    {
        auto g = Fp8Gemm::create(&*handle, 256, 18432, 129280, nullptr);
        if (g.ok()) {
            fp8 = std::move(g).value();
            std::printf("[op] fp8 cuBLASLt self-test passed: %s\n", describe(fp8->config()).c_str());
        } else {
            std::printf("[op] fp8 cuBLASLt unavailable: %s\n", g.status().to_string().c_str());
        }
    }
    int major = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0);
    for (const GemmCase& gc : cases) {
        HostWeight w = make_weight(gc.t, gc.n, gc.k, static_cast<uint64_t>(gc.n * 31 + gc.k));
        auto dw = upload_weight(w.view());
        ASSERT_TRUE(dw.ok()) << dw.status().to_string();
        // cuBLASLt wants the scales repacked (what the engine's upload does).
        DeviceBuffer lt_scales;
        if (fp8 && fp8_lt_compatible(dw->view)) {
            std::vector<float> packed(static_cast<size_t>(fp8_weight_scale_floats(w.view(), fp8->config())));
            pack_weight_scales_host(w.view(), w.scale.data(), fp8->config(), packed.data());
            lt_scales = to_device(packed);
        }
        for (int64_t m : quick() ? std::vector<int64_t>{1, 8, 40} : std::vector<int64_t>{1, 8, 64, 200}) {
            if (gc.n * gc.k > 100'000'000 && m > 64) continue;  // the CPU twin's time
            const auto x = randn(m * gc.k, static_cast<uint64_t>(m + gc.n));
            std::vector<float> want(m * gc.n);
            kernels::matmul(x.data(), m, gc.k, w.view(), want.data(), gc.n);
            auto dx = to_device(x);
            const int64_t rows = fp8_padded_rows(m);
            auto dy = to_device(std::vector<float>(rows * gc.n, NAN));
            const std::string shape = dims({m, gc.n, gc.k});
            ASSERT_TRUE(matmul(dx.as<float>(), m, gc.k, dw->view, dy.as<float>(), gc.n, false, nullptr).ok());
            report(std::string("matmul ") + gc.name, shape, nmse(from_device<float>(dy, m * gc.n).data(), want.data(), m * gc.n),
                   1e-10);
            if (major >= 8) {
                ASSERT_TRUE(matmul_tc(dx.as<float>(), m, gc.k, dw->view, dy.as<float>(), gc.n, false, nullptr).ok());
                // BF16 operands: relative rounding 2^-9 each, so the error of a dot is ~1e-2 of its size.
                report(std::string("matmul_tc ") + gc.name, shape,
                       nmse(from_device<float>(dy, m * gc.n).data(), want.data(), m * gc.n), 3e-4);
            }
            if (lt_scales.bytes() > 0) {
                ASSERT_TRUE(fp8->gemm(dw->view, lt_scales.as<float>(), dx.as<float>(), m, gc.k, dy.as<float>(), gc.n,
                                      false, nullptr)
                                .ok());
                // FP8 activations (3 mantissa bits): ~2% relative rounding per element.
                report(std::string("fp8_gemm ") + gc.name, shape,
                       nmse(from_device<float>(dy, m * gc.n).data(), want.data(), m * gc.n), 3e-3);
            }
        }
    }
}

// ---- MoE ----

RouteParams deepseek_route() {
    RouteParams p;
    p.num_experts = 256;
    p.n_group = 8;
    p.topk_group = 4;
    p.top_k = 8;
    p.routed_scaling_factor = 2.5f;
    return p;
}

TEST(BackendOps, MoeRouteGroupGatherScatterCombine) {
    DS_REQUIRE_CUDA();
    const RouteParams p = deepseek_route();
    const int64_t T = 300, E = p.num_experts, K = p.top_k, H = quick() ? 256 : 7168;
    auto logits = randn(T * E, 41, 2.0f), bias = randn(E, 42, 0.05f);
    std::vector<int32_t> we(T * K);
    std::vector<float> ww(T * K);
    kernels::moe_route(logits.data(), T, E, bias.data(), p, we.data(), ww.data());
    auto dl = to_device(logits), db = to_device(bias);
    auto de = to_device(std::vector<int32_t>(T * K, -1));
    auto dwt = to_device(std::vector<float>(T * K, NAN));
    int mismatched = 0;
    for (bool warp : {true, false}) {
        Status s = warp ? moe_route_warp(dl.as<float>(), T, E, db.as<float>(), p, de.as<int32_t>(), dwt.as<float>(), nullptr)
                        : moe_gate(dl.as<float>(), T, E, db.as<float>(), p, de.as<int32_t>(), dwt.as<float>(), nullptr);
        ASSERT_TRUE(s.ok()) << s.to_string();
        auto ge = from_device<int32_t>(de, T * K);
        auto gw = from_device<float>(dwt, T * K);
        for (int64_t t = 0; t < T; ++t) {
            const auto ref = testing::reference_route(p, logits.data() + t * E, bias.data());
            if (ref.margin < 1e-5) continue;  // a last-bit near tie may go either way
            const bool same = std::equal(ge.begin() + t * K, ge.begin() + (t + 1) * K, we.begin() + t * K);
            mismatched += !same;
        }
        report(warp ? "moe_route_warp weights" : "moe_gate weights", dims({T, E, K}), nmse(gw.data(), ww.data(), T * K),
               1e-12);
    }
    EXPECT_EQ(mismatched, 0) << "expert choices differ outside near ties";
    std::printf("[op] %-28s %-40s choices identical outside near ties: %s\n", "moe_route", dims({T, E, K}).c_str(),
                mismatched == 0 ? "OK" : "FAIL");
    // Grouping (with some experts not held), exactly the CPU's order.
    std::vector<uint8_t> held(E, 1);
    for (int64_t e = 0; e < E; e += 5) held[e] = 0;
    std::vector<int32_t> we_held;
    std::vector<float> ww_held;
    std::vector<int32_t> off(E + 1), tok(T * K), pos(T * K);
    std::vector<float> pw(T * K);
    kernels::moe_group_by_expert(we.data(), ww.data(), T, K, static_cast<int32_t>(E), off.data(), tok.data(), pw.data());
    auto dwe = to_device(we), dww = to_device(ww), dheld = to_device(held);
    auto doff = to_device(std::vector<int32_t>(E + 1)), dtok = to_device(std::vector<int32_t>(T * K));
    auto dpw = to_device(std::vector<float>(T * K)), dpos = to_device(std::vector<int32_t>(T * K));
    auto ditems = DeviceBuffer::create(static_cast<size_t>(moe_max_items(T * K, E, 8)) * sizeof(MoeItem));
    auto dn = to_device(std::vector<int32_t>(1));
    ASSERT_TRUE(ditems.ok());
    ASSERT_TRUE(moe_group(dwe.as<int32_t>(), dww.as<float>(), T, K, static_cast<int32_t>(E), nullptr, 8,
                          doff.as<int32_t>(), dtok.as<int32_t>(), dpw.as<float>(), dpos.as<int32_t>(),
                          ditems->as<MoeItem>(), dn.as<int32_t>(), nullptr).ok());
    EXPECT_EQ(from_device<int32_t>(doff, E + 1), off);
    EXPECT_EQ(from_device<int32_t>(dtok, T * K), tok);
    EXPECT_EQ(from_device<float>(dpw, T * K), pw);
    const auto gpos = from_device<int32_t>(dpos, T * K);
    for (int64_t i = 0; i < T * K; ++i) ASSERT_EQ(tok[gpos[i]], i / K) << "pair_pos of pair " << i;
    std::printf("[op] %-28s %-40s identical to moe_group_by_expert: OK\n", "moe_group", dims({T, K, E}).c_str());
    // Gather / scatter twins (identical order).
    auto x = randn(T * H, 43);
    std::vector<float> xg(T * K * H);
    kernels::gather_tokens(x.data(), H, tok.data(), T * K, H, xg.data(), H);
    auto dx = to_device(x), dxg = to_device(std::vector<float>(T * K * H, NAN));
    ASSERT_TRUE(gather_tokens(dx.as<float>(), H, dtok.as<int32_t>(), T * K, H, dxg.as<float>(), H, nullptr).ok());
    report("gather_tokens", dims({T * K, H}), nmse(from_device<float>(dxg, T * K * H).data(), xg.data(), T * K * H), 0.0);
    std::vector<float> y(T * H, 0.0f);
    kernels::scatter_add_weighted(xg.data(), H, T * K, H, tok.data(), pw.data(), y.data(), H);
    auto dy = to_device(std::vector<float>(T * H, 0.0f));
    ASSERT_TRUE(scatter_add_weighted(dxg.as<float>(), H, T * K, H, dtok.as<int32_t>(), dpw.as<float>(), dy.as<float>(), H,
                                     nullptr).ok());
    report("scatter_add_weighted", dims({T * K, H}), nmse(from_device<float>(dy, T * H).data(), y.data(), T * H), 1e-12);
    // The combine: CPU order is y = 0, then experts ascending: exactly scatter_add over the grouped pairs.
    auto dc = to_device(std::vector<float>(T * H, NAN));
    ASSERT_TRUE(moe_combine(dxg.as<float>(), H, dwe.as<int32_t>(), dww.as<float>(), dpos.as<int32_t>(), T, K, H,
                            dc.as<float>(), H, nullptr).ok());
    report("moe_combine", dims({T, K, H}), nmse(from_device<float>(dc, T * H).data(), y.data(), T * H), 1e-12);
    // Held mask: dropped pairs are -1 and counted nowhere.
    ASSERT_TRUE(moe_group(dwe.as<int32_t>(), dww.as<float>(), T, K, static_cast<int32_t>(E), dheld.as<uint8_t>(), 8,
                          doff.as<int32_t>(), dtok.as<int32_t>(), dpw.as<float>(), dpos.as<int32_t>(),
                          ditems->as<MoeItem>(), dn.as<int32_t>(), nullptr).ok());
    const auto hpos = from_device<int32_t>(dpos, T * K);
    const auto hoff = from_device<int32_t>(doff, E + 1);
    int64_t kept = 0;
    for (int64_t i = 0; i < T * K; ++i) {
        ASSERT_EQ(hpos[i] < 0, held[we[i]] == 0) << "pair " << i;
        kept += hpos[i] >= 0;
    }
    EXPECT_EQ(hoff[E], kept);
}

TEST(BackendOps, GroupedExpertGemms) {
    DS_REQUIRE_CUDA();
    // 16 experts [n, k] (DeepSeek's expert w1 shape when not quick), 8 of them held, random routing.
    const int64_t E = 16, K = 4, n = quick() ? 256 : 2048, k = quick() ? 384 : 7168;
    std::vector<HostWeight> ws;
    std::vector<DeviceWeight> dws;
    std::vector<DevWeight> table(E);
    std::vector<uint8_t> held(E, 0);
    for (int64_t e = 0; e < E; ++e) {
        ws.push_back(make_weight(DType::kF8E4M3, n, k, 100 + e));
        if (e % 2 == 0) {
            auto d = upload_weight(ws.back().view());
            ASSERT_TRUE(d.ok());
            ASSERT_TRUE(to_dev_weight(d->view, &table[e]));
            dws.push_back(std::move(d).value());
            held[e] = 1;
        }
    }
    auto dtable = to_device(table);
    auto dheld = to_device(held);
    int major = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0);
    for (int64_t T : {3, 40, 300}) {
        Rng r(static_cast<uint64_t>(T));
        std::vector<int32_t> ex(T * K);
        std::vector<float> wt(T * K);
        for (int64_t t = 0; t < T; ++t) {
            std::vector<int32_t> perm(E);
            std::iota(perm.begin(), perm.end(), 0);
            for (int64_t kk = 0; kk < K; ++kk) {
                std::swap(perm[kk], perm[kk + static_cast<int64_t>(r.next() % (E - kk))]);
                ex[t * K + kk] = perm[kk];
                wt[t * K + kk] = r.uniform();
            }
        }
        const auto x = randn(T * k, 300 + T);
        // CPU: per held expert over its grouped tokens, then the ordered scatter.
        std::vector<int32_t> off(E + 1), tok(T * K);
        std::vector<float> pw(T * K), want(T * n, 0.0f);
        kernels::moe_group_by_expert(ex.data(), wt.data(), T, K, static_cast<int32_t>(E), off.data(), tok.data(), pw.data());
        for (int64_t e = 0; e < E; ++e) {
            const int64_t b = off[e], cnt = off[e + 1] - b;
            if (cnt == 0 || !held[e]) continue;
            std::vector<float> xb(cnt * k), yb(cnt * n);
            kernels::gather_tokens(x.data(), k, tok.data() + b, cnt, k, xb.data(), k);
            kernels::matmul(xb.data(), cnt, k, ws[e].view(), yb.data(), n);
            kernels::scatter_add_weighted(yb.data(), n, cnt, n, tok.data() + b, pw.data() + b, want.data(), n);
        }
        for (GroupedKernel kind : {GroupedKernel::kGemv, GroupedKernel::kTiled, GroupedKernel::kTensorCore}) {
            if (kind == GroupedKernel::kTensorCore && major < 8) continue;
            const int32_t rows = grouped_item_rows(kind);
            const int64_t P = T * K, max_items = moe_max_items(P, E, rows);
            auto dex = to_device(ex), dwt = to_device(wt), dx = to_device(x);
            auto doff = to_device(std::vector<int32_t>(E + 1)), dtok = to_device(std::vector<int32_t>(P));
            auto dpw = to_device(std::vector<float>(P)), dpos = to_device(std::vector<int32_t>(P));
            auto ditems = DeviceBuffer::create(static_cast<size_t>(max_items) * sizeof(MoeItem));
            auto dn = to_device(std::vector<int32_t>(1));
            auto dxp = to_device(std::vector<float>(P * k)), dyp = to_device(std::vector<float>(P * n, NAN));
            auto dout = to_device(std::vector<float>(T * n, NAN));
            ASSERT_TRUE(ditems.ok());
            ASSERT_TRUE(moe_group(dex.as<int32_t>(), dwt.as<float>(), T, K, static_cast<int32_t>(E), dheld.as<uint8_t>(),
                                  rows, doff.as<int32_t>(), dtok.as<int32_t>(), dpw.as<float>(), dpos.as<int32_t>(),
                                  ditems->as<MoeItem>(), dn.as<int32_t>(), nullptr).ok());
            ASSERT_TRUE(gather_tokens(dx.as<float>(), k, dtok.as<int32_t>(), P, k, dxp.as<float>(), k, nullptr).ok());
            ASSERT_TRUE(grouped_matmul(dxp.as<float>(), k, dtable.as<DevWeight>(), DevDType::kF8E4M3,
                                       cuda::internal::weight_vec_ok(table[0]), n, k, ditems->as<MoeItem>(), dn.as<int32_t>(),
                                       max_items, dyp.as<float>(), n, kind, nullptr).ok());
            ASSERT_TRUE(moe_combine(dyp.as<float>(), n, dex.as<int32_t>(), dwt.as<float>(), dpos.as<int32_t>(), T, K, n,
                                    dout.as<float>(), n, nullptr).ok());
            const char* names[] = {"grouped gemv fp8", "grouped tiled fp8", "grouped tc fp8"};
            report(names[static_cast<int>(kind)], dims({T, K, n, k}),
                   nmse(from_device<float>(dout, T * n).data(), want.data(), T * n),
                   kind == GroupedKernel::kTensorCore ? 3e-4 : 1e-10);
        }
    }
}

}  // namespace
}  // namespace deepshard::kernels::cuda
