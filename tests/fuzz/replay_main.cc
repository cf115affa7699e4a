// A main() for the libFuzzer targets in the regular (GCC, uninstrumented) build: it feeds every
// seed input to LLVMFuzzerTestOneInput once, so the suite checks on each run that the seed corpora
// still go through the targets' invariants (a target abort()s on a violated one) without needing
// clang or spending fuzzing time. The fuzzing itself is run_fuzz.sh / scripts/fuzz.sh.
// Usage: fuzz_replay_TARGET [--lines] PATH...
//   PATH: a file (one input) or a directory (each regular file in it, in name order, one input).
//   --lines: the PATHs after it are split into one input per line (without the newline).
// Exits 1 when no input was found (a missing corpus must not pass as an empty one).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
// Optional, as in libFuzzer: one-time setup before the first input.
extern "C" __attribute__((weak)) int LLVMFuzzerInitialize(int* argc, char*** argv);

namespace {

namespace fs = std::filesystem;

// Bounded like the fuzzer's -max_len: seeds are small; anything larger is a mistake in the corpus.
constexpr std::uintmax_t kMaxInput = 64u << 20;

bool read_file(const fs::path& p, std::string* out) {
    std::error_code ec;
    const auto size = fs::file_size(p, ec);
    if (ec || size > kMaxInput) {
        std::fprintf(stderr, "fuzz_replay: cannot use %s (%s)\n", p.c_str(), ec ? ec.message().c_str() : "too large");
        return false;
    }
    std::ifstream in(p, std::ios::binary);
    out->assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    return static_cast<bool>(in) || in.eof();
}

void run_one(const std::string& input) {
    // A copy in its own allocation, so an over-read of the input is caught like the fuzzer would.
    std::vector<uint8_t> copy(input.begin(), input.end());
    LLVMFuzzerTestOneInput(copy.data(), copy.size());
}

}  // namespace

int main(int argc, char** argv) {
    if (LLVMFuzzerInitialize != nullptr) LLVMFuzzerInitialize(&argc, &argv);
    bool lines = false;
    size_t inputs = 0;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--lines") {
            lines = true;
            continue;
        }
        std::vector<fs::path> files;
        std::error_code ec;
        if (fs::is_directory(arg, ec)) {
            for (const auto& e : fs::directory_iterator(arg, ec)) {
                if (e.is_regular_file()) files.push_back(e.path());
            }
            std::sort(files.begin(), files.end());
        } else if (fs::is_regular_file(arg, ec)) {
            files.push_back(arg);
        } else {
            std::fprintf(stderr, "fuzz_replay: %s is neither a file nor a directory\n", arg.c_str());
            return 1;
        }
        for (const auto& f : files) {
            std::string data;
            if (!read_file(f, &data)) return 1;
            if (!lines) {
                run_one(data);
                ++inputs;
                continue;
            }
            size_t start = 0;
            while (start < data.size()) {
                size_t end = data.find('\n', start);
                if (end == std::string::npos) end = data.size();
                run_one(data.substr(start, end - start));
                ++inputs;
                start = end + 1;
            }
        }
    }
    if (inputs == 0) {
        std::fprintf(stderr, "fuzz_replay: no inputs\n");
        return 1;
    }
    std::printf("fuzz_replay: %zu inputs, no finding\n", inputs);
    return 0;
}
