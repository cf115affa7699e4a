// Writes the control fuzz target's seed corpus (tests/control/protocol_samples.h) into DIR,
// replacing what is there: `build/tests/write_control_seeds tests/fuzz/seeds/control` after the
// protocol changes (fuzz_control_seeds_test says when).
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "tests/control/protocol_samples.h"

int main(int argc, char** argv) {
    namespace fs = std::filesystem;
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    const fs::path dir = argv[1];
    std::error_code ec;
    fs::remove_all(dir, ec);
    fs::create_directories(dir, ec);
    if (ec) {
        std::fprintf(stderr, "write_control_seeds: cannot create %s: %s\n", dir.c_str(), ec.message().c_str());
        return 1;
    }
    for (const auto& [name, bytes] : deepshard::control::samples::fuzz_seed_files()) {
        std::ofstream out(dir / name, std::ios::binary);
        out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
        if (!out) {
            std::fprintf(stderr, "write_control_seeds: cannot write %s\n", (dir / name).c_str());
            return 1;
        }
    }
    return 0;
}
