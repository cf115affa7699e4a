// The official `openai` npm client against a live cluster: deepshard-coordinator (--api-key) +
// `mpirun -np 4 deepshard-shard` (pp=2 x tp=2), like e2e_test.cc. A node script
// (openai_client.mjs) calls completions.create and chat.completions.create, plain and streaming,
// and prints what the client parsed; this test compares it with the single-process reference.
//  - tiny-bf16 golden (token ids only): completions == tokens.json's greedy continuation.
//  - a tiny model with the DeepSeek-V3 tokenizer (made here): chat and text completions == the
//    token ids and text of `deepshard generate` (--chat) in one process.
// The client is installed with `npm install` into BUILD/npm/openai once and reused; when npm or
// the registry is unavailable the tests are skipped with the reason, not failed.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include <gtest/gtest.h>

#include "tests/coordinator/live_util.h"
#include "tests/util/subprocess.h"

namespace deepshard {
namespace {

namespace fs = std::filesystem;
using namespace testing_util;
using json = nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr const char* kApiKey = "sk-deepshard-test-key";

std::string tail(const std::string& s, size_t n = 1500) {
    return s.size() > n ? "..." + s.substr(s.size() - n) : s;
}

// Installs `openai` (major version 6) under BUILD/npm/openai unless it is already there. Returns
// the prefix, or an empty string and the reason in `why`.
std::string ensure_openai_package(std::string* why) {
    const std::string root = std::string(std::getenv("DS_BINARY_DIR")) + "/npm";
    const std::string prefix = root + "/openai";
    if (fs::exists(prefix + "/node_modules/openai/package.json")) return prefix;
    auto node = run_command({"node", "--version"}, seconds(30));
    if (node.exit_code != 0) {
        *why = "node is not installed (" + tail(node.err) + ")";
        return "";
    }
    // Install into a private directory and rename it into place, so concurrent test processes
    // never see a half-installed package.
    const std::string tmp = prefix + ".tmp." + std::to_string(getpid());
    fs::create_directories(tmp);
    auto npm = run_command({"npm", "install", "--prefix", tmp, "--no-audit", "--no-fund", "--no-save",
                            "--no-package-lock", "--cache", root + "/cache", "openai@6"},
                           seconds(300), {"npm_config_fetch_timeout=60000", "npm_config_fetch_retries=1"});
    std::error_code ec;
    if (npm.exit_code != 0 || !fs::exists(tmp + "/node_modules/openai/package.json")) {
        fs::remove_all(tmp, ec);
        *why = "`npm install openai@6` failed (is the npm registry reachable?)" +
               std::string(npm.timed_out ? " after 300 s" : "") + ": " + tail(npm.err + npm.out);
        return "";
    }
    fs::rename(tmp, prefix, ec);
    if (ec) fs::remove_all(tmp, ec);  // another process won the race; its copy is complete
    return fs::exists(prefix + "/node_modules/openai/package.json") ? prefix : "";
}


class OpenAiNpmTest : public ::testing::Test {
protected:
    void SetUp() override {
        ensure_test_env();
        // Once per process: the second test neither reinstalls nor retries an unreachable registry.
        static std::string why;
        static const std::string prefix = ensure_openai_package(&why);
        prefix_ = prefix;
        if (prefix_.empty()) GTEST_SKIP() << "skipping the openai npm client test: " << why;
        dir_ = make_temp_dir("ds_openai_npm_");
    }
    void TearDown() override {
        // The made model holds ~130 MB of embeddings; the logs stay for a look after a failure.
        std::error_code ec;
        if (!dir_.empty()) fs::remove_all(dir_ + "/tiny-tok", ec);
    }

    // Runs openai_client.mjs with `config` (prefix, base_url, api key and model filled in here).
    json run_client(uint16_t http, const std::string& model_name, json config) {
        config["prefix"] = prefix_;
        config["base_url"] = "http://127.0.0.1:" + std::to_string(http) + "/v1";
        config["api_key"] = kApiKey;
        config["model"] = model_name;
        auto r = run_command({"node", source_path("tests/coordinator/openai_client.mjs"), config.dump()}, seconds(600));
        EXPECT_EQ(r.exit_code, 0) << r.err << r.out;
        const auto brace = r.out.find('{');
        json out = brace == std::string::npos ? json() : json::parse(r.out.substr(brace), nullptr, false);
        EXPECT_TRUE(out.is_object()) << "client output: " << r.out << r.err;
        if (!out.is_object()) return json::object();
        std::printf("openai client %s: %s\n", out.value("client_version", json()).dump().c_str(),
                    out.dump().substr(0, 4000).c_str());
        EXPECT_FALSE(out.contains("error")) << out.dump();
        return out;
    }

    // Checks what every run must show: the API key is enforced, the model is listed.
    static void expect_auth_and_models(const json& out, const std::string& model_name) {
        EXPECT_EQ(out.value("bad_key_status", json()), 401) << out.dump();
        EXPECT_EQ(out.value("bad_key_is_auth_error", false), true) << out.dump();
        EXPECT_EQ(out.value("models", json::array()), json::array({model_name})) << out.dump();
    }

    // One plain + one streamed result of the same request against the reference.
    static void expect_matches(const json& plain, const json& stream, const std::vector<int>& want_ids,
                               const std::string& want_text, int64_t prompt_tokens, const char* what) {
        SCOPED_TRACE(what);
        const auto n = static_cast<int64_t>(want_ids.size());
        ASSERT_TRUE(plain.is_object()) << what << " missing";
        ASSERT_TRUE(stream.is_object()) << what << " (stream) missing";
        EXPECT_EQ(plain["token_ids"].get<std::vector<int>>(), want_ids) << plain.dump();
        EXPECT_EQ(plain["text"].get<std::string>(), want_text);
        EXPECT_EQ(plain["finish_reason"], "length");
        EXPECT_EQ(plain["usage"]["prompt_tokens"], prompt_tokens);
        EXPECT_EQ(plain["usage"]["completion_tokens"], n);
        EXPECT_EQ(plain["usage"]["total_tokens"], prompt_tokens + n);

        EXPECT_EQ(stream["token_ids"].get<std::vector<int>>(), want_ids) << stream.dump();
        EXPECT_EQ(stream["text"].get<std::string>(), want_text);
        EXPECT_EQ(stream["finish_reason"], "length");
        // Tokens arrive as they are generated: several content chunks, not one blob at the end.
        EXPECT_GE(stream["chunks"].get<int>(), 4) << stream.dump();
        EXPECT_EQ(stream["ids"].size(), 1u) << "every chunk of one stream carries the same id: " << stream.dump();
        ASSERT_TRUE(stream["usage"].is_object()) << "stream_options.include_usage: " << stream.dump();
        EXPECT_EQ(stream["usage"]["prompt_tokens"], prompt_tokens);
        EXPECT_EQ(stream["usage"]["completion_tokens"], n);
    }

    std::string prefix_, dir_;
};

TEST_F(OpenAiNpmTest, CompletionsMatchGreedyGolden) {
    const std::string model = source_path("testdata/golden/tiny-bf16");
    std::ifstream in(model + "/tokens.json");
    const json golden = json::parse(in);
    const auto prompt = golden["prompt_for_generation"].get<std::vector<int>>();
    const auto greedy = golden["greedy_generated"].get<std::vector<int>>();

    LiveCluster cluster;
    const std::string err = cluster.start(model, dir_, {"--api-key", kApiKey});
    ASSERT_TRUE(err.empty()) << err;
    json out = run_client(cluster.http(), "tiny-bf16",
                          {{"completion", {{"prompt", prompt}, {"max_tokens", greedy.size()}}}, {"chat", nullptr}});
    SCOPED_TRACE(cluster.logs());
    expect_auth_and_models(out, "tiny-bf16");
    EXPECT_EQ(out["completion"]["object"], "text_completion");
    // No tokenizer: the text is empty and the ids carry the answer.
    expect_matches(out["completion"], out["completion_stream"], greedy, "", static_cast<int64_t>(prompt.size()),
                   "completions");
    EXPECT_EQ(out["completion_stream"]["objects"], json::array({"text_completion"}));
}

TEST_F(OpenAiNpmTest, ChatAndTextCompletionsMatchSingleProcess) {
    // The golden model has no tokenizer; chat needs one, so make a tiny model with the real
    // DeepSeek-V3 vocabulary and tokenizer.
    const std::string model = dir_ + "/tiny-tok";
    auto made = run_command({binary_path("deepshard"), "make-model", "--preset", "tiny", "--dtype", "bf16", "--seed",
                             "7", "--set", "vocab_size=129280", "--tokenizer", source_path("testdata/tokenizer"),
                             "--out", model},
                            seconds(300));
    ASSERT_EQ(made.exit_code, 0) << made.out << made.err;

    const std::string user = "Write one sentence about pipelines.";
    const std::string text_prompt = "The quick brown fox";
    const int n = 12;
    auto reference = [&](const std::string& prompt, bool chat) {
        std::vector<std::string> cmd = {binary_path("deepshard"), "generate", "--model", model, "--prompt", prompt,
                                        "--max-tokens", std::to_string(n), "--ignore-eos", "--json",
                                        "--numerics", "exact"};  // as the cluster's plan
        if (chat) cmd.push_back("--chat");
        auto r = run_command(cmd, seconds(300));
        EXPECT_EQ(r.exit_code, 0) << r.err;
        const auto brace = r.out.find('{');
        return brace == std::string::npos ? json() : json::parse(r.out.substr(brace), nullptr, false);
    };
    const json ref_chat = reference(user, true);
    const json ref_text = reference(text_prompt, false);
    ASSERT_TRUE(ref_chat.is_object() && ref_text.is_object());
    ASSERT_EQ(ref_chat["generated_tokens"].size(), static_cast<size_t>(n)) << ref_chat.dump();

    LiveCluster cluster;
    const std::string err = cluster.start(model, dir_, {"--api-key", kApiKey});
    ASSERT_TRUE(err.empty()) << err;
    json chat_messages = json::array({{{"role", "user"}, {"content", user}}});
    json out = run_client(cluster.http(), "tiny-tok",
                          {{"completion", {{"prompt", text_prompt}, {"max_tokens", n}}},
                           {"chat", {{"messages", chat_messages}, {"max_tokens", n}}}});
    SCOPED_TRACE(cluster.logs());
    expect_auth_and_models(out, "tiny-tok");
    EXPECT_EQ(out["chat"]["object"], "chat.completion");
    EXPECT_EQ(out["chat"]["role"], "assistant");
    EXPECT_EQ(out["chat_stream"]["objects"], json::array({"chat.completion.chunk"}));
    expect_matches(out["chat"], out["chat_stream"], ref_chat["generated_tokens"].get<std::vector<int>>(),
                   ref_chat["text"].get<std::string>(), static_cast<int64_t>(ref_chat["prompt_tokens"].size()),
                   "chat.completions");
    expect_matches(out["completion"], out["completion_stream"], ref_text["generated_tokens"].get<std::vector<int>>(),
                   ref_text["text"].get<std::string>(), static_cast<int64_t>(ref_text["prompt_tokens"].size()),
                   "completions (text prompt)");
    // Random weights over the real vocabulary produce text, so the text comparison above is not vacuous.
    EXPECT_FALSE(ref_chat["text"].get<std::string>().empty());
}

}  // namespace
}  // namespace deepshard
