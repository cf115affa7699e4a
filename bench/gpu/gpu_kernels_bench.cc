// GPU kernel benchmarks (bench/gpu/README.md): the device's two ceilings measured first (a large
// device-to-device copy, bytes read + written; a large BF16 cuBLASLt GEMM), then
//  - GEMMs at DeepSeek-V3's decode and prefill shapes with FP8 weights: every path of the engine
//    (16-byte GEMV / fp32 tiles, BF16 tensor cores with in-kernel dequantization, FP8 x FP8 cuBLASLt
//    block-scaled) beside plain cuBLASLt BF16 on the dequantized weight, in weight GB/s and TFLOP/s
//    and as a share of the ceilings;
//  - MLA decode over a BF16 paged cache at batch 1/32/128 x context 1K/8K/32K (16 and 128 heads) in GB/s
//    of cache read.
// Timing: CUDA events around each launch, median of the repetitions after warm-up; weights rotate
// over copies that together exceed L2, so repeated launches do not measure the cache.
// Prints a table and one JSON line per measurement ("JSON {...}"). Needs a GPU (exits 2 without).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/cuda/cublaslt_fp8.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/mla_attention.h"

namespace {

namespace kc = deepshard::kernels::cuda;
using deepshard::Status;

[[noreturn]] void die(const std::string& m) {
    std::fprintf(stderr, "gpu_kernels_bench: %s\n", m.c_str());
    std::exit(1);
}

void check(const Status& s, const char* what) {
    if (!s.ok()) die(std::string(what) + ": " + s.to_string());
}

void check(cudaError_t e, const char* what) {
    if (e != cudaSuccess) die(std::string(what) + ": " + cudaGetErrorString(e));
}

// Median milliseconds of `reps` timed calls of fn(rep) after `warm` untimed ones.
double time_ms(const std::function<void(int)>& fn, int warm = 3, int reps = 15) {
    cudaEvent_t a, b;
    check(cudaEventCreate(&a), "event");
    check(cudaEventCreate(&b), "event");
    for (int i = 0; i < warm; ++i) fn(i);
    std::vector<double> t;
    for (int i = 0; i < reps; ++i) {
        check(cudaEventRecord(a, nullptr), "record");
        fn(warm + i);
        check(cudaEventRecord(b, nullptr), "record");
        check(cudaEventSynchronize(b), "sync");
        float ms = 0;
        check(cudaEventElapsedTime(&ms, a, b), "elapsed");
        t.push_back(ms);
    }
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

// Fills a device buffer with pseudo-random bytes (no zeros: they can run faster than real data).
void fill_random(void* dev, size_t bytes, uint64_t seed, bool fp8 = false) {
    std::vector<uint8_t> h(std::min<size_t>(bytes, size_t{64} << 20));
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 7;
    for (auto& v : h) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        v = static_cast<uint8_t>(s >> 32);
        if (fp8 && (v & 0x7f) == 0x7f) v = 0x3c;  // no NaN codes
    }
    for (size_t off = 0; off < bytes; off += h.size()) {
        check(cudaMemcpy(static_cast<uint8_t*>(dev) + off, h.data(), std::min(h.size(), bytes - off),
                         cudaMemcpyHostToDevice),
              "fill");
    }
}

struct Peaks {
    double copy_gbs = 0, bf16_tflops = 0;
};

Peaks measure_peaks(const kc::CublasLtHandle& lt) {
    Peaks p;
    const size_t bytes = size_t{2} << 30;
    auto src = kc::DeviceBuffer::create(bytes), dst = kc::DeviceBuffer::create(bytes);
    check(src.status(), "alloc");
    check(dst.status(), "alloc");
    fill_random(src->get(), bytes, 1);
    const double ms = time_ms([&](int) { cudaMemcpyAsync(dst->get(), src->get(), bytes, cudaMemcpyDeviceToDevice, nullptr); }, 2, 7);
    p.copy_gbs = 2.0 * static_cast<double>(bytes) / (ms * 1e-3) / 1e9;
    const int64_t n = 8192;
    auto a = kc::DeviceBuffer::create(n * n * 2), b = kc::DeviceBuffer::create(n * n * 2),
         c = kc::DeviceBuffer::create(n * n * 4);
    fill_random(a->get(), n * n * 2, 2);
    fill_random(b->get(), n * n * 2, 3);
    // Random bytes as BF16 include huge values and NaNs: mask to small normals.
    std::vector<uint16_t> h(n * n);
    for (size_t i = 0; i < h.size(); ++i) h[i] = static_cast<uint16_t>(0x3c00 | (i * 2654435761u >> 20 & 0x3ff));
    check(a->upload(h.data(), h.size() * 2), "upload");
    check(b->upload(h.data(), h.size() * 2), "upload");
    const double gms = time_ms([&](int) {
        check(kc::gemm_bf16(lt, a->as<uint16_t>(), n, n, b->as<uint16_t>(), n, n, n, c->as<float>(), n, false, nullptr),
              "gemm_bf16");
    }, 2, 7);
    p.bf16_tflops = 2.0 * n * n * n / (gms * 1e-3) / 1e12;
    return p;
}

void emit(const nlohmann::json& j) { std::printf("JSON %s\n", j.dump().c_str()); }

void bench_gemms(const kc::CublasLtHandle& lt, const Peaks& peaks) {
    struct Shape {
        const char* name;
        int64_t n, k;
    };
    const Shape shapes[] = {{"wq_a", 1536, 7168},           {"wq_b (128 heads)", 24576, 1536},
                            {"wkv_a", 576, 7168},            {"wo (128 heads)", 7168, 16384},
                            {"dense w1/w3", 18432, 7168},    {"dense w2", 7168, 18432},
                            {"expert w1/w3", 2048, 7168},    {"expert w2", 7168, 2048}};
    const std::vector<int64_t> ms = {1, 8, 32, 128, 512, 2048};
    const int64_t max_nk = int64_t{18432} * 7168;
    // Weight copies to rotate over (> 3x the 60 MB L2 together for every shape).
    const size_t wbytes = static_cast<size_t>(max_nk) * 4;
    auto w8 = kc::DeviceBuffer::create(wbytes);
    auto wb = kc::DeviceBuffer::create(static_cast<size_t>(max_nk) * 2);
    auto sc = kc::DeviceBuffer::create(static_cast<size_t>((18432 / 128 + 1) * (18432 / 128 + 1)) * 4 * 4);
    auto x = kc::DeviceBuffer::create(static_cast<size_t>(2048) * 18432 * 4);
    auto y = kc::DeviceBuffer::create(static_cast<size_t>(2048) * 24576 * 4);
    auto xb = kc::DeviceBuffer::create(static_cast<size_t>(2048) * 18432 * 2);
    for (auto* b : {&w8, &wb, &sc, &x, &y, &xb}) check(b->status(), "alloc");
    fill_random(w8->get(), wbytes, 11, true);
    {
        std::vector<float> s(sc->bytes() / 4);
        for (size_t i = 0; i < s.size(); ++i) s[i] = 1e-3f * (1.0f + static_cast<float>(i % 7));
        check(sc->upload(s.data(), s.size() * 4), "scales");
        std::vector<float> hx(2048 * 18432);
        for (size_t i = 0; i < hx.size(); ++i) hx[i] = static_cast<float>(static_cast<int>(i * 2654435761u % 2001) - 1000) * 1e-3f;
        check(x->upload(hx.data(), hx.size() * 4), "x");
    }
    check(kc::f32_to_bf16(x->as<float>(), 2048, 18432, 18432, xb->as<uint16_t>(), nullptr), "x bf16");
    auto fp8 = kc::Fp8Gemm::create(&lt, 2048, 18432, 24576, nullptr);
    if (!fp8.ok()) std::printf("FP8 cuBLASLt: unavailable (%s)\n", fp8.status().to_string().c_str());
    std::printf("\n%-18s %6s | %-10s %9s %8s %8s %7s %7s | %s\n", "GEMM", "m", "path", "time us", "GB/s", "TFLOP/s",
                "%copy", "%bf16", "vs cuBLASLt bf16");
    for (const Shape& sh : shapes) {
        const int64_t n = sh.n, k = sh.k;
        const int64_t copies = std::max<int64_t>(1, std::min<int64_t>(wbytes / (n * k), 4));
        auto view = [&](int rep) {
            deepshard::kernels::WeightView v;
            v.dtype = deepshard::DType::kF8E4M3;
            v.data = w8->as<uint8_t>() + (rep % copies) * n * k;
            v.rows = n;
            v.cols = k;
            v.ld = k;
            v.scale = sc->as<float>();
            v.scale_ld = (k + 127) / 128;
            return v;
        };
        // Plain cuBLASLt BF16 on the dequantized weight (one copy: BF16 is 2x the bytes).
        check(kc::dequant_to_bf16(view(0), wb->as<uint16_t>(), nullptr), "dequant");
        for (int64_t m : ms) {
            const double flop = 2.0 * m * n * k;
            const double ref_ms = time_ms([&](int) {
                check(kc::gemm_bf16(lt, xb->as<uint16_t>(), m, k, wb->as<uint16_t>(), n, k, k, y->as<float>(), n, false,
                                    nullptr),
                      "gemm_bf16");
            });
            struct Path {
                const char* name;
                std::function<Status(int)> run;
                double weight_bytes;
            };
            std::vector<Path> paths = {
                {m <= 8 ? "gemv" : "fp32 tile",
                 [&](int r) { return kc::matmul(x->as<float>(), m, k, view(r), y->as<float>(), n, false, nullptr); },
                 static_cast<double>(n * k)},
                {"bf16 mma", [&](int r) { return kc::matmul_tc(x->as<float>(), m, k, view(r), y->as<float>(), n, false, nullptr); },
                 static_cast<double>(n * k)},
                {"cublasLt bf16", [&](int) {
                     return kc::gemm_bf16(lt, xb->as<uint16_t>(), m, k, wb->as<uint16_t>(), n, k, k, y->as<float>(), n,
                                          false, nullptr);
                 },
                 static_cast<double>(n * k) * 2}};
            if (fp8.ok() && kc::fp8_lt_compatible(view(0))) {
                paths.push_back({"fp8 cublasLt", [&](int r) {
                                     return (*fp8)->gemm(view(r), sc->as<float>(), x->as<float>(), m, k, y->as<float>(), n,
                                                         false, nullptr);
                                 },
                                 static_cast<double>(n * k)});
            }
            if (m > 128) paths.erase(paths.begin());  // the fp32 CUDA-core tiles are not a prefill path
            for (const Path& p : paths) {
                const double t = time_ms([&](int r) { check(p.run(r), p.name); });
                const double gbs = p.weight_bytes / (t * 1e-3) / 1e9, tf = flop / (t * 1e-3) / 1e12;
                std::printf("%-18s %6lld | %-13s %7.1f %8.1f %8.1f %6.1f%% %6.1f%% | %.2fx\n", sh.name,
                            static_cast<long long>(m), p.name, t * 1e3, gbs, tf, 100 * gbs / peaks.copy_gbs,
                            100 * tf / peaks.bf16_tflops, ref_ms / t);
                emit({{"bench", "gemm"}, {"shape", sh.name}, {"m", m}, {"n", n}, {"k", k}, {"path", p.name},
                      {"us", t * 1e3}, {"weight_gbs", gbs}, {"tflops", tf}, {"vs_cublaslt_bf16", ref_ms / t}});
            }
        }
    }
}

void bench_mla(int sms) {
    const bool default_tc = kc::mla_tensor_cores();
    std::printf("\n%-6s %6s %7s %-6s | %9s %8s %7s %9s\n", "heads", "batch", "context", "kernel", "time us", "GB/s",
                "splits", "TFLOP/s");
    for (int32_t heads : {16, 128}) {
        for (int64_t B : {1, 32, 128}) {
            for (int32_t ctx : {1024, 8192, 32768}) {
                const int32_t bs = 64, R = 512, rd = 64;
                const int32_t per_seq = ctx / bs;
                const int32_t blocks = static_cast<int32_t>(B) * per_seq;
                const size_t pool_bytes = static_cast<size_t>(blocks) * bs * (R + rd) * 2;
                auto pool = kc::DeviceBuffer::create(pool_bytes);
                check(pool.status(), "kv pool");
                check(cudaMemset(pool->get(), 0x3c, pool_bytes), "fill");  // BF16 0x3c3c: small, non-zero
                std::vector<int32_t> tables(B * per_seq), lens(B, ctx);
                for (size_t i = 0; i < tables.size(); ++i) tables[i] = static_cast<int32_t>((i * 7919) % blocks);
                auto dt = kc::DeviceBuffer::create(tables.size() * 4), dl = kc::DeviceBuffer::create(lens.size() * 4);
                check(dt->upload(tables.data(), tables.size() * 4), "tables");
                check(dl->upload(lens.data(), lens.size() * 4), "lens");
                auto q = kc::DeviceBuffer::create(static_cast<size_t>(B) * heads * (R + rd) * 4);
                auto out = kc::DeviceBuffer::create(static_cast<size_t>(B) * heads * R * 4);
                check(cudaMemset(q->get(), 0x3c, q->bytes()), "q");  // fp32 0x3c3c3c3c = 0.0115
                const int32_t ctas = std::max(1, 2 * sms / ((heads + 15) / 16));
                auto scratch = kc::DeviceBuffer::create(kc::mla_scheduled_scratch_bytes(B, heads, R, ctas));
                auto off = kc::DeviceBuffer::create(static_cast<size_t>(B + 1) * 4);
                kc::MlaAttentionArgs a;
                a.cache = kc::mla_cache_layer(pool->get(), kc::KvDType::kBF16, 1, 0, bs, blocks, R, rd);
                a.num_heads = heads;
                a.softmax_scale = 0.135f;
                a.num_queries = B;
                a.q_lat = q->as<float>();
                a.q_lat_ld_token = heads * (R + rd);
                a.q_lat_ld_head = R + rd;
                a.q_pe = q->as<float>() + R;
                a.q_pe_ld_token = heads * (R + rd);
                a.q_pe_ld_head = R + rd;
                a.block_tables = dt->as<int32_t>();
                a.num_table_rows = B;
                a.max_blocks_per_seq = per_seq;
                a.out = out->as<float>();
                a.out_ld_token = heads * R;
                a.out_ld_head = R;
                // The tensor-core kernel (the engine's path for a BF16 cache) and the fp32 one, same data.
                for (bool tc : {true, false}) {
                    kc::mla_set_tensor_cores(tc);
                    const double t = time_ms([&](int) {
                        check(kc::mla_plan_decode(dl->as<int32_t>(), B, ctas, off->as<int32_t>(), nullptr), "plan");
                        check(kc::mla_decode_scheduled(a, dl->as<int32_t>(), off->as<int32_t>(), ctas,
                                                       scratch->get(), scratch->bytes(), nullptr),
                              "mla");
                    });
                    const double bytes = static_cast<double>(B) * ctx * (R + rd) * 2;
                    const double gbs = bytes / (t * 1e-3) / 1e9;
                    // Q.K^T over R + rd and P.V over R, per head and cached token.
                    const double tflops = 2.0 * B * heads * ctx * (2 * R + rd) / (t * 1e-3) / 1e12;
                    std::printf("%-6d %6lld %7d %-6s | %9.1f %8.1f %7d %9.1f\n", heads, static_cast<long long>(B), ctx,
                                tc ? "mma" : "fp32", t * 1e3, gbs, ctas, tflops);
                    emit({{"bench", "mla_decode"}, {"heads", heads}, {"batch", B}, {"context", ctx},
                          {"kernel", tc ? "mma" : "fp32"}, {"us", t * 1e3}, {"kv_gbs", gbs}, {"tflops", tflops}});
                }
                kc::mla_set_tensor_cores(default_tc);
            }
        }
    }
}

}  // namespace

int main(int argc, char** argv) {
    std::string why;
    if (kc::device_count(&why) == 0) {
        std::fprintf(stderr, "gpu_kernels_bench: no GPU (%s)\n", why.c_str());
        return 2;
    }
    bool gemm = true, mla = true;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--gemm-only") mla = false;
        if (a == "--mla-only") gemm = false;
    }
    cudaDeviceProp prop{};
    check(cudaGetDeviceProperties(&prop, 0), "properties");
    auto lt = kc::CublasLtHandle::create();
    check(lt.status(), "cublasLt");
    const Peaks peaks = measure_peaks(*lt);
    std::printf("device %s: %d SMs; measured ceilings: D2D copy %.0f GB/s (read + write), cuBLASLt BF16 8192^3 %.0f TFLOP/s\n",
                prop.name, prop.multiProcessorCount, peaks.copy_gbs, peaks.bf16_tflops);
    emit({{"bench", "peaks"}, {"device", prop.name}, {"copy_gbs", peaks.copy_gbs}, {"bf16_tflops", peaks.bf16_tflops}});
    if (gemm) bench_gemms(*lt, peaks);
    if (mla) bench_mla(prop.multiProcessorCount);
    return 0;
}
