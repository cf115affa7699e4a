// The coordinator's fingerprint (read from config + safetensors headers only) must equal the one
// the shard job's leader sends (model::Checkpoint::fingerprint()), or registration is refused.
#include "coordinator/model_loader.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include <gtest/gtest.h>

#include "model/checkpoint.h"

namespace deepshard::coordinator {
namespace {

std::string golden(const std::string& name) {
    const char* src = std::getenv("DS_SOURCE_DIR");
    return std::string(src ? src : ".") + "/testdata/golden/" + name;
}

TEST(ModelLoaderTest, FingerprintMatchesCheckpoint) {
    for (const char* name : {"tiny-bf16", "small-fp8"}) {
        auto loaded = load_model(golden(name));
        ASSERT_TRUE(loaded.ok()) << loaded.status().to_string();
        auto ckpt = model::Checkpoint::open(golden(name));
        ASSERT_TRUE(ckpt.ok()) << ckpt.status().to_string();
        EXPECT_EQ(loaded->info.fingerprint, (*ckpt)->fingerprint()) << name;
        EXPECT_EQ(loaded->info.name, name);
        EXPECT_EQ(loaded->info.max_context, (*ckpt)->config().max_position_embeddings);
    }
}

TEST(ModelLoaderTest, DifferentModelsDiffer) {
    auto a = load_model(golden("tiny-bf16"));
    auto b = load_model(golden("small-fp8"));
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_NE(a->info.fingerprint, b->info.fingerprint);
}

// A tokenizer whose ids run past the model's vocabulary: the coordinator refuses to serve it
// rather than fail every request whose text needs a high id.
TEST(ModelLoaderTest, RefusesAVocabularySmallerThanTheTokenizer) {
    const std::string src = std::getenv("DS_SOURCE_DIR") ? std::getenv("DS_SOURCE_DIR") : ".";
    const std::string dir = testing::TempDir() + "/ds_vocab_" + std::to_string(::getpid());
    std::filesystem::remove_all(dir);
    std::filesystem::copy(golden("tiny-bf16"), dir, std::filesystem::copy_options::recursive);
    for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) {
        std::filesystem::copy_file(src + "/testdata/tokenizer/" + f, dir + "/" + f,
                                   std::filesystem::copy_options::overwrite_existing);
    }
    auto r = load_model(dir);
    std::filesystem::remove_all(dir);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("4096"), std::string::npos) << r.status().message();
    EXPECT_NE(r.status().message().find("128815"), std::string::npos) << r.status().message();
}

TEST(ModelLoaderTest, MissingDirectoryIsAnError) {
    auto r = load_model("/nonexistent/model");
    EXPECT_FALSE(r.ok());
}

}  // namespace
}  // namespace deepshard::coordinator
