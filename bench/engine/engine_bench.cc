// Single-process engine throughput (issue 3 item 7): prefill and decode tokens/s of one model
// directory at batch sizes 1 and 8, with the weight bytes a decode token reads, the achieved
// GB/s and, measured in the same process right before, the STREAM-triad GB/s it is compared with.
// Also the peak resident memory against mapped weights + KV pool (nothing else should be there).
//
// Usage: engine_bench --model DIR [--batches 1,8] [--prefill 64,512] [--decode 16] [--reps 3] [--kv-mb 256]
//                     [--stream-mb 256] [--device cpu|cuda] [--numerics exact|fast] [--head-fp8]
// With --device cuda the decode steps sample greedily on the device (LogitsMode::kSample), as the
// shard job does, so no vocabulary of logits crosses PCIe per token.
// Besides wall-clock tokens/s every phase reports tokens per second of process CPU time divided by
// the thread count ("cpu tok/s"): on a machine shared with other jobs that figure moves much less
// than wall time, which includes the time the threads waited for a core.
// Prints a table and one JSON line per measurement (prefixed "JSON ").
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/util/stream.h"
#include "common/thread_pool.h"
#include "kernels/kernels.h"
#include "model/checkpoint.h"
#include "model/engine.h"

namespace {

namespace dm = deepshard::model;
namespace db = deepshard::bench;

struct Args {
    std::string model;
    std::vector<int> batches{1, 8};
    std::vector<int> prefills{256};
    int decode = 16;
    int reps = 3;
    int64_t kv_mb = 256;
    int64_t stream_mb = 256;
    dm::Device device = dm::Device::kCpu;
    deepshard::kernels::Numerics numerics = deepshard::kernels::Numerics::kFast;
    bool head_fp8 = false;
};

[[noreturn]] void die(const std::string& msg) {
    std::fprintf(stderr, "engine_bench: %s\n", msg.c_str());
    std::exit(1);
}

Args parse(int argc, char** argv) {
    Args a;
    for (int i = 1; i < argc; ++i) {
        const std::string k = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) {
                die(k + " needs a value");
            }
            return argv[++i];
        };
        if (k == "--model") {
            a.model = next();
        } else if (k == "--batches") {
            a.batches.clear();
            std::stringstream ss(next());
            for (std::string t; std::getline(ss, t, ',');) {
                a.batches.push_back(std::atoi(t.c_str()));
            }
        } else if (k == "--prefill") {
            a.prefills.clear();
            std::stringstream ss(next());
            for (std::string t; std::getline(ss, t, ',');) {
                a.prefills.push_back(std::atoi(t.c_str()));
            }
        } else if (k == "--decode") {
            a.decode = std::atoi(next().c_str());
        } else if (k == "--reps") {
            a.reps = std::atoi(next().c_str());
        } else if (k == "--kv-mb") {
            a.kv_mb = std::atoll(next().c_str());
        } else if (k == "--stream-mb") {
            a.stream_mb = std::atoll(next().c_str());
        } else if (k == "--device") {
            auto d = dm::parse_device(next());
            if (!d.ok()) die(d.status().to_string());
            a.device = *d;
        } else if (k == "--head-fp8") {
            a.head_fp8 = true;
        } else if (k == "--numerics") {
            const std::string v = next();
            if (!deepshard::kernels::parse_numerics(v, &a.numerics)) {
                die("--numerics must be exact or fast, got '" + v + "'");
            }
        } else {
            die("unknown argument " + k);
        }
    }
    if (a.model.empty()) {
        die("--model DIR is required");
    }
    for (int v : a.prefills) {
        if (v <= 0 || v > 65536) die("--prefill sizes must be in [1, 65536]");
    }
    for (int v : a.batches) {
        if (v <= 0 || v > 4096) die("--batches must be in [1, 4096]");
    }
    if (a.decode <= 0 || a.reps <= 0) die("--decode and --reps must be positive");
    return a;
}

std::vector<int32_t> random_tokens(int n, int64_t vocab, uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<int32_t> t(static_cast<size_t>(n));
    for (auto& x : t) {
        x = static_cast<int32_t>(3 + rng() % static_cast<uint32_t>(vocab - 3));
    }
    return t;
}

std::unique_ptr<dm::Engine> make_model(const std::shared_ptr<const dm::Checkpoint>& ck, const Args& a) {
    dm::EngineOptions opt;
    opt.kv_budget_bytes = a.kv_mb << 20;
    opt.numerics = a.numerics;
    opt.precision = dm::precision_for(a.numerics);
    opt.head_fp8 = a.head_fp8;
    auto t = dm::create_engine(a.device, ck, dm::ShardSpec{}, opt);
    if (!t.ok()) {
        die(t.status().to_string());
    }
    return std::move(t).value();
}

void check_logits(const dm::StepOutput& out) {
    for (float v : out.logits) {
        if (!std::isfinite(v)) {
            die("non-finite logits: the run is not valid");
        }
    }
}

}  // namespace

int main(int argc, char** argv) {
    const Args a = parse(argc, argv);
    auto opened = dm::Checkpoint::open(a.model);
    if (!opened.ok()) {
        die(opened.status().to_string());
    }
    std::shared_ptr<const dm::Checkpoint> ck(std::move(opened).value());
    const auto& cfg = ck->config();
    const int threads = deepshard::ThreadPool::global().size();

    const double triad = db::stream_triad_gbs(a.stream_mb, 5);
    auto model = make_model(ck, a);
    auto prepared = model->prepare();
    if (!prepared.ok()) {
        die(prepared.status().to_string());
    }
    const dm::LoadStats load = *prepared;
    const int64_t bytes_per_token = model->weights().weight_bytes_per_token();
    std::printf("engine_bench: model=%s device=%s isa=%s numerics=%s%s%s threads=%d\n", a.model.c_str(), dm::device_name(a.device),
                deepshard::kernels::isa_name(deepshard::kernels::active_isa()),
                deepshard::kernels::numerics_name(a.numerics),
                a.numerics == deepshard::kernels::Numerics::kFast && deepshard::kernels::fast_is_exact()
                    ? " (= exact on this ISA)"
                    : "",
                a.head_fp8 ? " head=fp8 (requantized at load)" : "", threads);
    std::printf("STREAM triad: %.2f GB/s   weights faulted in: %.2f GB at %.2f GB/s\n", triad, load.bytes / 1e9,
                load.gb_per_s());
    std::printf("weight bytes read per decode token (batch 1): %.1f MB\n", bytes_per_token / 1e6);

    uint64_t next_seq = 1;
    // Prefill: one sequence of `prefill` tokens, logits for the last position only.
    for (const int prefill : a.prefills) {
        std::vector<double> tps, cpu_tps;
        for (int r = 0; r < a.reps; ++r) {
            const auto toks = random_tokens(prefill, cfg.vocab_size, 100 + r);
            const uint64_t id = next_seq++;
            dm::SeqChunk c;
            c.seq_id = id;
            c.tokens = toks;
            c.num_tokens = prefill;
            c.start_pos = 0;
            c.logits = dm::LogitsMode::kLast;
            const double t0 = db::now_seconds(), c0 = db::process_cpu_seconds();
            auto out = model->step(std::span<const dm::SeqChunk>(&c, 1));
            const double dt = db::now_seconds() - t0;
            cpu_tps.push_back(prefill / ((db::process_cpu_seconds() - c0) / threads));
            if (!out.ok()) {
                die(out.status().to_string());
            }
            check_logits(*out);
            model->release(id);
            tps.push_back(prefill / dt);
        }
        const double med = db::median(tps);
        // Each token passes every held dense weight and its routed experts: ~2 FLOPs per weight element.
        const double elems_per_token = static_cast<double>(bytes_per_token) / (ck->config().quantization.fp8 ? 1.0 : 2.0);
        const double gflops = 2.0 * elems_per_token * med / 1e9;
        const double cpu_med = db::median(cpu_tps);
        std::printf("prefill  %4d tokens: %9.1f tokens/s  (~%.1f GFLOP/s of weight math; cpu %.1f tok/s)\n", prefill,
                    med, gflops, cpu_med);
        nlohmann::json j{{"bench", "engine"}, {"phase", "prefill"}, {"model", a.model}, {"tokens", prefill},
                         {"tokens_per_s", med}, {"cpu_tokens_per_s", cpu_med}, {"gflops", gflops},
                         {"threads", threads}, {"numerics", deepshard::kernels::numerics_name(a.numerics)}, {"head_fp8", a.head_fp8}};
        std::printf("JSON %s\n", j.dump().c_str());
    }

    double batch1_tps = 0;
    // Decode: B sequences with a short prompt, then `decode` steps of one token each for all of them.
    for (int B : a.batches) {
        std::vector<double> tps, cpu_tps;
        for (int r = 0; r < a.reps; ++r) {
            std::vector<uint64_t> ids;
            std::vector<std::vector<int32_t>> prompts;
            for (int b = 0; b < B; ++b) {
                ids.push_back(next_seq++);
                prompts.push_back(random_tokens(32, cfg.vocab_size, 1000 * r + b));
            }
            std::vector<dm::SeqChunk> chunks(static_cast<size_t>(B));
            for (int b = 0; b < B; ++b) {
                chunks[b].seq_id = ids[b];
                chunks[b].tokens = prompts[b];
                chunks[b].num_tokens = 32;
                chunks[b].start_pos = 0;
                chunks[b].logits = dm::LogitsMode::kLast;
            }
            auto pre = model->step(chunks);
            if (!pre.ok()) {
                die(pre.status().to_string());
            }
            std::vector<int32_t> cur(static_cast<size_t>(B));
            for (int b = 0; b < B; ++b) {
                cur[b] = static_cast<int32_t>(7 + b);
            }
            // On a device, greedy samplers run there (kSample), as in the shard job.
            const bool on_device = a.device != dm::Device::kCpu;
            std::vector<std::unique_ptr<dm::Sampler>> samplers;
            for (int b = 0; b < B; ++b) samplers.push_back(std::make_unique<dm::Sampler>(dm::SamplingParams{}, prompts[b]));
            const double t0 = db::now_seconds(), c0 = db::process_cpu_seconds();
            for (int s = 0; s < a.decode; ++s) {
                for (int b = 0; b < B; ++b) {
                    chunks[b].tokens = std::span<const int32_t>(&cur[b], 1);
                    chunks[b].num_tokens = 1;
                    chunks[b].start_pos = 32 + s;
                    chunks[b].logits = on_device ? dm::LogitsMode::kSample : dm::LogitsMode::kLast;
                    chunks[b].sampler = on_device ? samplers[b].get() : nullptr;
                }
                auto out = model->step(chunks);
                if (!out.ok()) {
                    die(out.status().to_string());
                }
                check_logits(*out);
                for (int b = 0; b < B; ++b) {  // greedy, so the step depends on the last one
                    if (on_device) {
                        cur[b] = out->samples[b].token;
                        samplers[b]->accept(cur[b]);
                        continue;
                    }
                    const float* row = out->logits.data() + static_cast<int64_t>(b) * out->vocab;
                    cur[b] = static_cast<int32_t>(std::max_element(row, row + out->vocab) - row);
                }
            }
            const double dt = db::now_seconds() - t0;
            cpu_tps.push_back(static_cast<double>(B) * a.decode / ((db::process_cpu_seconds() - c0) / threads));
            for (uint64_t id : ids) {
                model->release(id);
            }
            tps.push_back(static_cast<double>(B) * a.decode / dt);
        }
        const double med = db::median(tps), cpu_med = db::median(cpu_tps);
        if (B == 1) {
            batch1_tps = med;
        }
        // Batch 1 reads bytes_per_token per token; a batch reads the dense weights once and more experts.
        const double gbs = B == 1 ? med * static_cast<double>(bytes_per_token) / 1e9 : 0.0;
        if (B == 1) {
            std::printf("decode   batch %2d: %9.2f tokens/s  %.2f GB/s of weights = %.0f%% of STREAM triad (cpu %.2f tok/s)\n",
                        B, med, gbs, 100.0 * gbs / triad, cpu_med);
        } else {
            std::printf("decode   batch %2d: %9.2f tokens/s  (%.2fx batch 1's tokens/s; cpu %.2f tok/s)\n", B, med,
                        batch1_tps > 0 ? med / batch1_tps : 0.0, cpu_med);
        }
        nlohmann::json j{{"bench", "engine"}, {"phase", "decode"}, {"model", a.model}, {"batch", B},
                         {"tokens_per_s", med}, {"cpu_tokens_per_s", cpu_med}, {"weight_gbs", gbs}, {"triad_gbs", triad},
                         {"numerics", deepshard::kernels::numerics_name(a.numerics)}, {"head_fp8", a.head_fp8},
                         {"bytes_per_token", bytes_per_token}, {"threads", threads}};
        std::printf("JSON %s\n", j.dump().c_str());
    }

    const int64_t kv_bytes =
        a.device == dm::Device::kCpu ? model->kv_usage().total_blocks * model->kv_usage().block_bytes : 0;
    const int64_t peak = db::peak_rss_bytes();
    std::printf("peak RSS %.1f MB = mapped weights resident %.1f MB + KV pool %.1f MB + other %.1f MB\n", peak / 1e6,
                ck->resident_bytes() / 1e6, kv_bytes / 1e6,
                (peak - static_cast<int64_t>(ck->resident_bytes()) - kv_bytes) / 1e6);
    nlohmann::json j{{"bench", "engine"}, {"phase", "memory"}, {"model", a.model}, {"peak_rss", peak},
                     {"weights_resident", ck->resident_bytes()}, {"kv_pool", kv_bytes}};
    std::printf("JSON %s\n", j.dump().c_str());
    return 0;
}
