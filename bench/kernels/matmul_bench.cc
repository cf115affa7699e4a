// matmul_bench: memory-bandwidth and compute figures of the CPU kernels, in one process.
//  * STREAM triad (a = b + s*c, multi-threaded on ThreadPool::global(), arrays far larger than LLC)
//  * GEMV/small-batch GB/s of weight bytes for FP8 and BF16 weights, as a fraction of the triad;
//    weights are rotated over enough copies to exceed the LLC, so DRAM (not cache) is measured
//  * GEMM GFLOP/s for prefill-sized m, FP8/BF16 vs an F32-weight baseline (the dequantize cost)
// Every timed configuration is checked once against a double reference built on WeightView::at.
// Usage: matmul_bench [--reps N] [--stream-mb MB] [--rotate-mb MB] [--quick] [--numerics exact|fast]
//                     [--gemv NxK,...] [--m 1,8,...] [--no-gemm]
//   --gemv / --m replace the GEMV shapes (W rows x columns) and batch sizes, e.g. the output head of
//   a model: --gemv 129280x1024 --m 1,4,8; --no-gemm skips the prefill GEMM rows.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bench/util/stream.h"
#include "common/dtype.h"
#include "common/thread_pool.h"
#include "kernels/kernels.h"

namespace ds = deepshard;
namespace dk = deepshard::kernels;

namespace {

using deepshard::bench::median;
const auto now_s = deepshard::bench::now_seconds;

uint32_t lcg(uint64_t& s) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<uint32_t>(s >> 33);
}

// A weight tensor of `dtype` with `copies` independent replicas (to defeat the LLC).
struct BenchWeight {
    ds::DType dtype;
    int64_t rows, cols;
    std::vector<std::vector<uint8_t>> data;
    std::vector<float> scale;

    BenchWeight(ds::DType t, int64_t r, int64_t c, int copies) : dtype(t), rows(r), cols(c) {
        const size_t bytes = static_cast<size_t>(r * c) * ds::dtype_size(t);
        data.resize(copies);
        for (int cp = 0; cp < copies; ++cp) {
            data[cp].resize(bytes);
            uint8_t* p = data[cp].data();
            ds::ThreadPool::global().parallel_for(r * c, [&](int64_t b, int64_t e) {
                uint64_t s = 0x9e3779b97f4a7c15ull * (b + 1) + cp;
                for (int64_t i = b; i < e; ++i) {
                    const float v = (static_cast<float>(lcg(s) % 2001) - 1000.0f) / 1000.0f;
                    if (t == ds::DType::kF8E4M3) {
                        p[i] = ds::f32_to_e4m3(v * 400.0f);
                    } else if (t == ds::DType::kBF16) {
                        reinterpret_cast<uint16_t*>(p)[i] = ds::f32_to_bf16(v);
                    } else {
                        reinterpret_cast<float*>(p)[i] = v;
                    }
                }
            });
        }
        scale.assign(((r + 127) / 128) * ((c + 127) / 128), 1.0f / 400.0f);
    }
    dk::WeightView view(int cp) const {
        dk::WeightView v;
        v.dtype = dtype;
        v.data = data[cp].data();
        v.rows = rows;
        v.cols = cols;
        v.ld = cols;
        if (dtype == ds::DType::kF8E4M3) {
            v.scale = scale.data();
            v.scale_ld = (cols + 127) / 128;
        }
        return v;
    }
};

// Checks a sample of outputs against the double reference; aborts the benchmark on mismatch.
// Tolerance relative to sum |x w|: float32 summation order (exact) or BF16 rounding of x and W (fast).
double g_tol = 1e-5;

void verify(const dk::WeightView& w, const std::vector<float>& x, int64_t m, const std::vector<float>& y,
            const char* what) {
    for (int64_t t = 0; t < 64; ++t) {
        const int64_t i = (t * 7) % m, j = (t * 104729) % w.rows;
        double ref = 0, mag = 0;
        for (int64_t c = 0; c < w.cols; ++c) {
            ref += double(x[i * w.cols + c]) * w.at(j, c);
            mag += std::abs(double(x[i * w.cols + c]) * w.at(j, c));
        }
        if (std::abs(y[i * w.rows + j] - ref) > g_tol * mag + 1e-30) {
            std::fprintf(stderr, "VERIFY FAILED %s y[%ld,%ld]=%g ref=%g\n", what, long(i), long(j), y[i * w.rows + j], ref);
            std::exit(1);
        }
    }
}

std::vector<std::string> split_list(const std::string& s) {
    std::vector<std::string> out;
    size_t b = 0;
    while (b <= s.size()) {
        const size_t e = std::min(s.find(',', b), s.size());
        if (e > b) out.push_back(s.substr(b, e - b));
        b = e + 1;
    }
    return out;
}

struct Row {
    std::string kind, dtype;
    int64_t n, k, m;
    double ms, gbs, gflops, ratio;
};

}  // namespace

int main(int argc, char** argv) {
    int reps = 7;
    int64_t stream_mb = 256, rotate_mb = 1024;
    bool quick = false, gemm = true;
    struct Shape { int64_t n, k; };
    std::vector<Shape> shapes_arg;
    std::vector<int64_t> ms_arg;
    dk::Numerics numerics = dk::Numerics::kExact;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--reps" && i + 1 < argc) reps = std::atoi(argv[++i]);
        else if (a == "--stream-mb" && i + 1 < argc) stream_mb = std::atoll(argv[++i]);
        else if (a == "--rotate-mb" && i + 1 < argc) rotate_mb = std::atoll(argv[++i]);
        else if (a == "--quick") quick = true;
        else if (a == "--no-gemm") gemm = false;
        else if (a == "--gemv" && i + 1 < argc) {
            for (const std::string& t : split_list(argv[++i])) {
                Shape sh{0, 0};
                if (std::sscanf(t.c_str(), "%ldx%ld", &sh.n, &sh.k) != 2 || sh.n <= 0 || sh.k <= 0 ||
                    sh.n > (1 << 24) || sh.k > (1 << 20)) {
                    std::fprintf(stderr, "matmul_bench: --gemv wants NxK shapes, got '%s'\n", t.c_str());
                    return 1;
                }
                shapes_arg.push_back(sh);
            }
        } else if (a == "--m" && i + 1 < argc) {
            for (const std::string& t : split_list(argv[++i])) {
                const long v = std::atol(t.c_str());
                if (v < 1 || v > 4096) {
                    std::fprintf(stderr, "matmul_bench: --m wants batch sizes in [1, 4096], got '%s'\n", t.c_str());
                    return 1;
                }
                ms_arg.push_back(v);
            }
        }
        else if (a == "--numerics" && i + 1 < argc) {
            if (!dk::parse_numerics(argv[++i], &numerics)) {
                std::fprintf(stderr, "matmul_bench: --numerics must be exact or fast\n");
                return 1;
            }
        }
    }
    if (numerics == dk::Numerics::kFast) g_tol = 1e-2;
    const int threads = ds::ThreadPool::global().size();
    std::printf("matmul_bench: isa=%s (detected %s) numerics=%s threads=%d reps=%d (medians)\n",
                dk::isa_name(dk::active_isa()), dk::isa_name(dk::detected_isa()), dk::numerics_name(numerics), threads,
                reps);
    const double triad = deepshard::bench::stream_triad_gbs(stream_mb, reps);
    std::printf("STREAM triad (3 x %ld MB): %.2f GB/s\n", long(stream_mb), triad);

    std::vector<Row> rows;
    const std::vector<Shape> gemv_shapes = !shapes_arg.empty() ? shapes_arg
                                           : quick ? std::vector<Shape>{{2048, 7168}}
                                                   : std::vector<Shape>{{7168, 2048}, {2048, 7168}, {4096, 4096}};
    const std::vector<int64_t> gemv_ms = !ms_arg.empty() ? ms_arg : std::vector<int64_t>{1, 8};
    for (ds::DType t : {ds::DType::kF8E4M3, ds::DType::kBF16}) {
        for (const Shape& s : gemv_shapes) {
            const int64_t bytes = s.n * s.k * ds::dtype_size(t);
            const int copies = static_cast<int>(std::max<int64_t>(2, rotate_mb * (1 << 20) / bytes));
            BenchWeight bw(t, s.n, s.k, copies);
            for (int64_t m : gemv_ms) {
                std::vector<float> x(m * s.k), y(m * s.n);
                uint64_t seed = 1;
                for (float& v : x) v = (static_cast<float>(lcg(seed) % 2001) - 1000.0f) / 1000.0f;
                dk::matmul(x.data(), m, s.k, bw.view(0), y.data(), s.n, false, numerics);
                verify(bw.view(0), x, m, y, "gemv");
                std::vector<double> ts;
                // Each timed sample sweeps all copies once (> rotate_mb of weights) so nothing is LLC-hot.
                for (int r = 0; r < reps; ++r) {
                    const double t0 = now_s();
                    for (int cp = 0; cp < copies; ++cp) dk::matmul(x.data(), m, s.k, bw.view(cp), y.data(), s.n, false, numerics);
                    ts.push_back((now_s() - t0) / copies);
                }
                const double t_med = median(ts);
                const double gbs = bw.view(0).bytes() / t_med / 1e9;
                rows.push_back({"gemv", ds::dtype_name(t), s.n, s.k, m, t_med * 1e3, gbs, 2.0 * m * s.n * s.k / t_med / 1e9,
                                gbs / triad});
            }
        }
    }
    // GEMM (prefill): compute-bound; the F32-weight run is the no-dequantize baseline.
    const Shape gs{2048, 7168};
    for (int64_t m : !gemm ? std::vector<int64_t>{} : quick ? std::vector<int64_t>{128} : std::vector<int64_t>{128, 512}) {
        for (ds::DType t : {ds::DType::kF8E4M3, ds::DType::kBF16, ds::DType::kF32}) {
            BenchWeight bw(t, gs.n, gs.k, 1);
            std::vector<float> x(m * gs.k), y(m * gs.n);
            uint64_t seed = 2;
            for (float& v : x) v = (static_cast<float>(lcg(seed) % 2001) - 1000.0f) / 1000.0f;
            dk::matmul(x.data(), m, gs.k, bw.view(0), y.data(), gs.n, false, numerics);
            verify(bw.view(0), x, m, y, "gemm");
            std::vector<double> ts;
            for (int r = 0; r < std::max(3, reps / 2); ++r) {
                const double t0 = now_s();
                dk::matmul(x.data(), m, gs.k, bw.view(0), y.data(), gs.n, false, numerics);
                ts.push_back(now_s() - t0);
            }
            const double t_med = median(ts);
            rows.push_back({"gemm", ds::dtype_name(t), gs.n, gs.k, m, t_med * 1e3, bw.view(0).bytes() / t_med / 1e9,
                            2.0 * m * gs.n * gs.k / t_med / 1e9, 0.0});
        }
    }
    std::printf("%-5s %-8s %6s %6s %4s %10s %9s %9s %9s\n", "op", "dtype", "n", "k", "m", "ms", "W GB/s", "GFLOP/s",
                "/triad");
    for (const Row& r : rows) {
        std::printf("%-5s %-8s %6ld %6ld %4ld %10.3f %9.2f %9.2f %9.2f\n", r.kind.c_str(), r.dtype.c_str(), long(r.n),
                    long(r.k), long(r.m), r.ms, r.gbs, r.gflops, r.ratio);
    }
    // Dequantize cost: GEMM time relative to the f32-weight baseline at the same m.
    std::string json = "{\"bench\":\"matmul\",\"isa\":\"" + std::string(dk::isa_name(dk::active_isa())) +
                       "\",\"numerics\":\"" + dk::numerics_name(numerics) + "\",\"threads\":" + std::to_string(threads) + ",\"triad_gbs\":" + std::to_string(triad) +
                       ",\"results\":[";
    for (size_t i = 0; i < rows.size(); ++i) {
        const Row& r = rows[i];
        char buf[256];
        std::snprintf(buf, sizeof(buf),
                      "%s{\"op\":\"%s\",\"dtype\":\"%s\",\"n\":%ld,\"k\":%ld,\"m\":%ld,\"ms\":%.4f,\"weight_gbs\":%.3f,"
                      "\"gflops\":%.3f,\"triad_ratio\":%.3f}",
                      i ? "," : "", r.kind.c_str(), r.dtype.c_str(), long(r.n), long(r.k), long(r.m), r.ms, r.gbs,
                      r.gflops, r.ratio);
        json += buf;
    }
    json += "]}";
    std::printf("JSON %s\n", json.c_str());
    return 0;
}
