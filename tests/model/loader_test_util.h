// Helpers for the checkpoint loader tests: paths, temp models, and surgical corruption of
// safetensors files (rewriting a header while keeping the data bytes).
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "model/make_model.h"
#include "tests/util/subprocess.h"

namespace deepshard::model::test {

namespace fs = std::filesystem;

inline std::string source_dir() {
    const char* d = std::getenv("DS_SOURCE_DIR");
    return d != nullptr ? d : DS_TEST_FALLBACK_SOURCE_DIR;
}
// bin/deepshard of this build. DS_BINARY_DIR is preferred, the configure-time path is the fallback
// (ctest's discovered tests do not always receive it).
inline std::string deepshard_binary() {
    const char* d = std::getenv("DS_BINARY_DIR");
    return std::string(d != nullptr ? d : DS_TEST_FALLBACK_BINARY_DIR) + "/bin/deepshard";
}
inline std::string golden_dir(const std::string& name) { return source_dir() + "/testdata/golden/" + name; }

inline std::string read_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}
inline void write_bytes(const std::string& path, const std::string& bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << bytes;
}

// A small FP8 model with ragged blocks (q_lora 96, kv_a 80 rows), one dense and one MoE layer.
inline ModelConfig small_test_config(bool fp8 = true) {
    ModelConfig c = preset_config("tiny").value();
    c.num_hidden_layers = 2;
    c.n_routed_experts = 8;
    c.n_group = 4;
    c.topk_group = 2;
    c.num_experts_per_tok = 2;
    c.vocab_size = 1000;
    c.quantization.fp8 = fp8;
    return c;
}

inline void make_test_model(const std::string& dir, uint64_t seed = 7, int shards = 2, bool fp8 = true) {
    MakeModelOptions opt;
    opt.seed = seed;
    opt.shards = shards;
    auto r = make_model(small_test_config(fp8), dir, opt);
    ASSERT_TRUE(r.ok()) << r.status().to_string();
}

// Rewrites the header of a safetensors file with `edit` applied, keeping the data section.
inline void edit_header(const std::string& path, const std::function<void(nlohmann::ordered_json&)>& edit) {
    std::string bytes = read_bytes(path);
    ASSERT_GE(bytes.size(), 8u);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[i]);
    nlohmann::ordered_json h = nlohmann::ordered_json::parse(bytes.substr(8, n));
    edit(h);
    std::string text = h.dump();
    while (text.size() % 8 != 0) text += ' ';
    std::string out(8, '\0');
    for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((text.size() >> (8 * i)) & 0xff);
    write_bytes(path, out + text + bytes.substr(8 + n));
}

// The shard (file name) of `tensor` according to the index of `dir`.
inline std::string shard_of(const std::string& dir, const std::string& tensor) {
    auto j = nlohmann::json::parse(read_bytes(dir + "/model.safetensors.index.json"));
    return j["weight_map"][tensor].get<std::string>();
}

// A temporary directory removed with everything in it when the test ends.
struct TempDir {
    explicit TempDir(const std::string& prefix = "ds_loader_") : path(testing_util::make_temp_dir(prefix)) {}
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    std::string sub(const std::string& name) const { return path + "/" + name; }
    std::string path;
};

}  // namespace deepshard::model::test
