// tokenizer_bench: single-thread encode throughput and load time of the DeepSeek-V3 tokenizer.
//  * load: Tokenizer::load of testdata/tokenizer (tokenizer.json + tokenizer_config.json), median.
//  * mixed: the English/Chinese/code texts of testdata/tokenizer/cases.jsonl, concatenated and
//    repeated to --mb MB (repetitive, so the per-thread piece cache is warm, as with real prose).
//  * hostile: text decoded from random vocabulary ids (special tokens skipped): mostly pieces never
//    seen before, so pre-tokenizer and BPE merging are measured rather than the cache.
// Each corpus reports the median MB/s over --runs encodes (after one warm-up), and the same for
// encode_reference() (PCRE2 regexes + heap BPE, no cache) as the in-tree baseline.
// Checks: decode(encode(x)) == x on every corpus, and encode == encode_reference on a prefix of each;
// the process exits 1 if either fails.
// Usage: tokenizer_bench [--dir DIR] [--runs N] [--reference-runs N] [--mb MB] [--check-kb KB]
//                        [--only mixed|hostile]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "model/tokenizer/tokenizer.h"

namespace dm = deepshard::model;

namespace {

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// CPU time of this thread: on a shared machine wall time mostly measures the other tenants.
double thread_cpu_s() {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

// Longest prefix of s of at most max_bytes that ends on a UTF-8 character boundary.
std::string_view utf8_prefix(std::string_view s, size_t max_bytes) {
    if (s.size() <= max_bytes) {
        return s;
    }
    size_t end = max_bytes;
    while (end > 0 && (static_cast<unsigned char>(s[end]) & 0xC0) == 0x80) {
        --end;
    }
    return s.substr(0, end);
}

struct Rate {
    double cpu_mb_s = 0;   // bytes / thread CPU time
    double wall_mb_s = 0;  // bytes / elapsed time
};

struct Result {
    std::string name;
    size_t bytes = 0;
    size_t ids = 0;
    Rate fast;
    Rate reference;
};

bool bench_corpus(const dm::Tokenizer& tok,
                  const std::string& name,
                  const std::string& text,
                  int runs,
                  int reference_runs,
                  size_t check_bytes,
                  Result* result) {
    result->name = name;
    result->bytes = text.size();
    // Correctness first: lossless round trip and agreement with the reference path.
    auto ids = tok.encode(text, false);
    if (!ids.ok()) {
        std::fprintf(stderr, "%s: encode failed: %s\n", name.c_str(), ids.status().to_string().c_str());
        return false;
    }
    result->ids = ids->size();
    if (tok.decode(*ids) != text) {
        std::fprintf(stderr, "%s: decode(encode(x)) != x\n", name.c_str());
        return false;
    }
    const std::string_view prefix = utf8_prefix(text, check_bytes);
    auto fast = tok.encode(prefix, false);
    auto reference = tok.encode_reference(prefix, false);
    if (!fast.ok() || !reference.ok() || *fast != *reference) {
        std::fprintf(stderr, "%s: encode and encode_reference disagree on the first %zu bytes\n", name.c_str(),
                     prefix.size());
        return false;
    }

    auto time_mb_s = [&](auto&& encode_fn, int n) {
        std::vector<double> cpu;
        std::vector<double> wall;
        for (int r = 0; r < n; ++r) {
            const double w0 = now_s();
            const double c0 = thread_cpu_s();
            auto out = encode_fn();
            const double c1 = thread_cpu_s();
            const double w1 = now_s();
            if (!out.ok() || out->size() != result->ids) {
                return Rate{-1, -1};
            }
            cpu.push_back(static_cast<double>(text.size()) / 1e6 / (c1 - c0));
            wall.push_back(static_cast<double>(text.size()) / 1e6 / (w1 - w0));
        }
        return Rate{median(cpu), median(wall)};
    };
    result->fast = time_mb_s([&] { return tok.encode(text, false); }, runs);
    if (reference_runs > 0) {
        result->reference = time_mb_s([&] { return tok.encode_reference(text, false); }, reference_runs);
    }
    if (result->fast.cpu_mb_s < 0 || result->reference.cpu_mb_s < 0) {
        std::fprintf(stderr, "%s: a timed encode failed or changed its output\n", name.c_str());
        return false;
    }
    return true;
}

}  // namespace

int main(int argc, char** argv) {
    std::string dir = std::string(DS_BENCH_SOURCE_DIR) + "/testdata/tokenizer";
    if (const char* src = std::getenv("DS_SOURCE_DIR")) {
        dir = std::string(src) + "/testdata/tokenizer";
    }
    int runs = 7;
    int reference_runs = -1;  // default: runs / 2
    std::string only;         // one corpus (for profiling), or both
    double mb = 4.0;
    size_t check_kb = 256;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        auto next = [&]() -> const char* {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "%s needs a value\n", arg.c_str());
                std::exit(2);
            }
            return argv[++i];
        };
        if (arg == "--dir") {
            dir = next();
        } else if (arg == "--runs") {
            runs = std::max(1, std::atoi(next()));
        } else if (arg == "--reference-runs") {
            reference_runs = std::max(0, std::atoi(next()));
        } else if (arg == "--only") {
            only = next();
        } else if (arg == "--mb") {
            mb = std::atof(next());
        } else if (arg == "--check-kb") {
            check_kb = static_cast<size_t>(std::atol(next()));
        } else {
            std::fprintf(stderr,
                         "usage: tokenizer_bench [--dir DIR] [--runs N] [--reference-runs N] [--mb MB] "
                         "[--check-kb KB] [--only mixed|hostile]\n");
            return 2;
        }
    }

    if (reference_runs < 0) {
        reference_runs = std::max(1, runs / 2);
    }

    // Load time (the first load also builds the process-wide character class table).
    std::vector<double> load_times;
    std::vector<double> load_cpu_times;
    double first_load = 0;
    std::optional<dm::Tokenizer> tok;
    for (int r = 0; r < 3; ++r) {
        const double t0 = now_s();
        const double c0 = thread_cpu_s();
        auto loaded = dm::Tokenizer::load(dir);
        const double secs = now_s() - t0;
        load_cpu_times.push_back(thread_cpu_s() - c0);
        if (!loaded.ok()) {
            std::fprintf(stderr, "load %s: %s\n", dir.c_str(), loaded.status().to_string().c_str());
            return 1;
        }
        if (r == 0) {
            first_load = secs;
        } else {
            load_times.push_back(secs);
        }
        tok.emplace(std::move(loaded).value());
    }

    // Corpus 1: the test cases, repeated.
    std::string cases;
    {
        std::ifstream in(dir + "/cases.jsonl");
        std::string line;
        while (std::getline(in, line)) {
            if (!line.empty()) {
                cases += nlohmann::json::parse(line)["text"].get<std::string>();
                cases += "\n";
            }
        }
    }
    if (cases.empty()) {
        std::fprintf(stderr, "no cases in %s/cases.jsonl\n", dir.c_str());
        return 1;
    }
    std::string mixed;
    while (static_cast<double>(mixed.size()) < mb * 1e6) {
        mixed += cases;
    }
    // Corpus 2: random vocabulary pieces.
    std::mt19937 rng(7);
    std::uniform_int_distribution<int32_t> any_id(0, 127999);
    std::vector<int32_t> random_ids;
    for (int i = 0; i < 250000; ++i) {
        random_ids.push_back(any_id(rng));
    }
    const std::string hostile = tok->decode(random_ids, /*skip_special=*/true);

    std::vector<Result> results(2);
    if ((only.empty() || only == "mixed") &&
        !bench_corpus(*tok, "mixed", mixed, runs, reference_runs, check_kb * 1024, &results[0])) {
        return 1;
    }
    if ((only.empty() || only == "hostile") &&
        !bench_corpus(*tok, "hostile", hostile, runs, reference_runs, check_kb * 1024, &results[1])) {
        return 1;
    }

    std::printf("tokenizer_bench: one thread, fast pre-tokenizer %s, median of %d runs (reference: %d)\n",
                tok->has_fast_pretokenizer() ? "on" : "OFF", runs, reference_runs);
    std::printf("load: first %.3f s (includes the class table), then median %.3f s wall, %.3f s CPU\n", first_load,
                median(load_times), median(load_cpu_times));
    std::printf("MB/s = bytes / thread CPU time (wall-clock MB/s in brackets)\n");
    std::printf("%-8s %8s %9s %22s %22s\n", "corpus", "MB", "ids", "encode MB/s", "encode_reference MB/s");
    for (const Result& r : results) {
        std::printf("%-8s %8.2f %9zu %12.2f [%7.2f] %12.2f [%7.2f]\n", r.name.c_str(),
                    static_cast<double>(r.bytes) / 1e6, r.ids, r.fast.cpu_mb_s, r.fast.wall_mb_s, r.reference.cpu_mb_s,
                    r.reference.wall_mb_s);
    }
    std::printf(
        "{\"bench\":\"tokenizer\",\"load_first_s\":%.4f,\"load_s\":%.4f,\"load_cpu_s\":%.4f,\"mixed_mb_s\":%.2f,"
        "\"hostile_mb_s\":%.2f,"
        "\"mixed_wall_mb_s\":%.2f,\"hostile_wall_mb_s\":%.2f,\"mixed_reference_mb_s\":%.2f,"
        "\"hostile_reference_mb_s\":%.2f,\"checks\":\"ok\"}\n",
        first_load, median(load_times), median(load_cpu_times), results[0].fast.cpu_mb_s, results[1].fast.cpu_mb_s,
        results[0].fast.wall_mb_s, results[1].fast.wall_mb_s, results[0].reference.cpu_mb_s,
        results[1].reference.cpu_mb_s);
    return 0;
}
