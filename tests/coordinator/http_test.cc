// A live deepshard-coordinator with NO shard job: /health says unavailable (503), every bad input
// gets its 4xx with an OpenAI-shaped JSON error naming the problem, a well-formed request gets
// 503, slow-header clients are cut off, the API key is enforced, and the service keeps answering
// throughout. Thrift (Python example client) reports Unavailable / InvalidRequest the same way.
#include <sys/socket.h>
#include <unistd.h>

#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "tests/coordinator/live_util.h"
#include "tests/util/subprocess.h"

namespace deepshard {
namespace {

using namespace testing_util;
using json = nlohmann::json;

constexpr const char* kKey = "sk-test-123";

class CoordinatorHttpTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        ensure_test_env();
        model_dir_ = new std::string(make_config_only_model("tiny-bf16", /*with_tokenizer=*/true, 129280));
        const std::string ports = *model_dir_ + "/../ports.json";
        proc_ = new BackgroundProcess({binary_path("deepshard-coordinator"), "--model", *model_dir_, "--http",
                                       "127.0.0.1:0", "--thrift", "127.0.0.1:0", "--control", "127.0.0.1:0",
                                       "--ports-file", ports, "--api-key", kKey, "--max-body", "65536",
                                       "--header-timeout-ms", "700"},
                                      *model_dir_ + "/../coordinator.log");
        ports_ = new json(wait_for_json_file(ports, std::chrono::seconds(30)));
    }
    static void TearDownTestSuite() {
        delete proc_;  // kills it
        delete ports_;
        delete model_dir_;
    }
    void SetUp() override {
        ASSERT_TRUE(ports_->is_object()) << "the coordinator did not start:\n" << proc_->log();
        http_ = (*ports_)["http"].get<uint16_t>();
    }

    HttpResponse post(const std::string& path, const std::string& body) {
        return http_request(http_, "POST", path, body, {std::string("Authorization: Bearer ") + kKey});
    }
    // Expects a 4xx/5xx OpenAI error whose message contains `needle`.
    void expect_error(const HttpResponse& r, int status, const std::string& needle) {
        EXPECT_EQ(r.status, status) << r.body << r.error;
        json j = r.json();
        ASSERT_TRUE(j.is_object() && j.contains("error")) << r.body;
        EXPECT_TRUE(j["error"]["type"].is_string());
        const std::string msg = j["error"]["message"].get<std::string>();
        EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    }
    void expect_completion_error(const std::string& body, int status, const std::string& needle) {
        expect_error(post("/v1/completions", body), status, needle);
    }

    static std::string* model_dir_;
    static BackgroundProcess* proc_;
    static json* ports_;
    uint16_t http_ = 0;
};
std::string* CoordinatorHttpTest::model_dir_ = nullptr;
BackgroundProcess* CoordinatorHttpTest::proc_ = nullptr;
json* CoordinatorHttpTest::ports_ = nullptr;

TEST_F(CoordinatorHttpTest, HealthIsUnavailableWithoutShardJob) {
    auto r = http_request(http_, "GET", "/health");
    EXPECT_EQ(r.status, 503);
    EXPECT_EQ(r.json()["status"], "unavailable");
    EXPECT_FALSE(r.json()["reason"].get<std::string>().empty());
}

TEST_F(CoordinatorHttpTest, ModelsAndMetrics) {
    auto m = http_request(http_, "GET", "/v1/models", "", {std::string("Authorization: Bearer ") + kKey});
    ASSERT_EQ(m.status, 200) << m.body;
    EXPECT_EQ(m.json()["data"][0]["id"], "test-model");
    auto metrics = http_request(http_, "GET", "/metrics");
    ASSERT_EQ(metrics.status, 200);
    for (const char* name : {"deepshard_queued_requests", "deepshard_running_sequences", "deepshard_kv_usage_ratio",
                             "deepshard_prompt_tokens_total", "deepshard_generation_tokens_total",
                             "deepshard_time_to_first_token_seconds_bucket", "deepshard_inter_token_latency_seconds",
                             "deepshard_step_seconds", "deepshard_shard_job_up 0", "deepshard_kv_capacity_blocks",
                             "deepshard_kv_used_blocks", "deepshard_kv_cached_blocks",
                             "deepshard_prefix_cache_query_tokens_total", "deepshard_prefix_cache_hit_tokens_total",
                             "deepshard_preemptions_total", "deepshard_kv_view_mismatches_total 0",
                             "deepshard_requests_finished_total{reason=\"error\"}"}) {
        EXPECT_NE(metrics.body.find(name), std::string::npos) << name;
    }
}

TEST_F(CoordinatorHttpTest, ApiKeyIsRequired) {
    auto none = http_request(http_, "GET", "/v1/models");
    expect_error(none, 401, "API key");
    auto wrong = http_request(http_, "POST", "/v1/completions", R"({"model": "test-model", "prompt": "x"})",
                              {"Authorization: Bearer nope"});
    expect_error(wrong, 401, "invalid API key");
}

TEST_F(CoordinatorHttpTest, BadInputsGet4xx) {
    expect_completion_error(R"({"model": "test-model", "prompt": )", 400, "malformed JSON");
    expect_completion_error(R"({"model": "test-model", "prompt": 12})", 400, "prompt");
    expect_completion_error(R"({"model": "test-model"})", 400, "prompt: required");
    expect_completion_error(R"({"prompt": "hi"})", 400, "model: required");
    expect_completion_error(R"({"model": "test-model", "prompt": "hi", "max_tokens": -1})", 400, "max_tokens");
    expect_completion_error(R"({"model": "test-model", "prompt": "hi", "max_tokens": 10000000})", 400,
                            "context length");
    expect_completion_error(R"({"model": "test-model", "prompt": "hi", "temperature": 3})", 400, "temperature");
    expect_completion_error(R"({"model": "test-model", "prompt": "hi", "top_p": 1.01})", 400, "top_p");
    expect_completion_error(R"({"model": "test-model", "prompt": "hi", "max_tokens": "many"})", 400, "max_tokens");
    expect_completion_error("{\"model\": \"test-model\", \"prompt\": \"bad \xc3\x28\"}", 400, "UTF-8");
    expect_completion_error(R"({"model": "no-such-model", "prompt": "hi"})", 404, "no-such-model");
    std::string words;
    for (int i = 0; i < 5000; ++i) words += " w" + std::to_string(i);
    expect_completion_error(R"({"model": "test-model", "prompt": ")" + words + "\"}", 400, "context length");
    expect_error(post("/v1/chat/completions", R"({"model": "test-model", "messages": [{"role": "user"}]})"), 400,
                 "content");
    expect_error(post("/v1/chat/completions", R"({"model": "test-model", "messages": "hi"})"), 400, "messages");
    // Oversized body (limit 64 KiB here).
    const std::string big = R"({"model": "test-model", "prompt": ")" + std::string(100000, 'a') + "\"}";
    expect_error(post("/v1/completions", big), 413, "exceeds the limit");
    // Unknown endpoint, wrong method.
    expect_error(http_request(http_, "GET", "/v2/nothing"), 404, "no such endpoint");
    expect_error(http_request(http_, "GET", "/v1/completions", "", {std::string("Authorization: Bearer ") + kKey}),
                 405, "POST");
    // Still serving.
    EXPECT_EQ(http_request(http_, "GET", "/health").status, 503);
}

TEST_F(CoordinatorHttpTest, ValidRequestWithoutShardJobIs503) {
    expect_completion_error(R"({"model": "test-model", "prompt": "Hello", "max_tokens": 4})", 503, "no shard job");
    auto s = post("/v1/chat/completions",
                  R"({"model": "test-model", "messages": [{"role": "user", "content": "Hi"}], "stream": true})");
    expect_error(s, 503, "no shard job");
}

TEST_F(CoordinatorHttpTest, SlowHeadersAreCutOff) {
    int fd = connect_local(http_);
    ASSERT_GE(fd, 0);
    const std::string partial = "GET /health HTTP/1.1\r\nHost: x\r\n";
    ASSERT_EQ(send(fd, partial.data(), partial.size(), MSG_NOSIGNAL), static_cast<ssize_t>(partial.size()));
    // Keep trickling a header byte every 200 ms; the server must close within its 700 ms header
    // deadline regardless (bounded wait: 10 s).
    bool closed = false;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    timeval tv{0, 200000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    while (!closed && std::chrono::steady_clock::now() < deadline) {
        (void)send(fd, "X", 1, MSG_NOSIGNAL);
        char buf[256];
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) closed = true;
    }
    close(fd);
    EXPECT_TRUE(closed);
    // Meanwhile others are served.
    EXPECT_EQ(http_request(http_, "GET", "/health").status, 503);
}

// Over --http-max-connections a client gets a clear 503 (overloaded JSON error, Retry-After), not
// a silent close; once held connections go, new ones are served again (issue 12 item 6: a burst
// bigger than the cap must read as "retry later").
TEST(CoordinatorHttpCapTest, ConnectionsBeyondTheCapGetA503) {
    ensure_test_env();
    const std::string model = make_config_only_model("tiny-bf16", /*with_tokenizer=*/false, 1000);
    const std::string dir = make_temp_dir("ds_http_cap");
    BackgroundProcess coord({binary_path("deepshard-coordinator"), "--model", model, "--http", "127.0.0.1:0",
                             "--thrift", "", "--control", "127.0.0.1:0", "--ports-file", dir + "/ports.json",
                             "--http-max-connections", "3", "--header-timeout-ms", "30000"},
                            dir + "/coordinator.log");
    const json ports = wait_for_json_file(dir + "/ports.json", std::chrono::seconds(30));
    ASSERT_TRUE(ports.is_object()) << coord.log();
    const uint16_t http = ports["http"].get<uint16_t>();
    // Three idle connections hold every slot (the header deadline is 30 s).
    std::vector<int> held;
    for (int i = 0; i < 3; ++i) {
        held.push_back(connect_local(http));
        ASSERT_GE(held.back(), 0);
    }
    // The server counts a connection once it accepted it: poll (bounded) until the fourth is refused.
    HttpResponse r;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    do {
        r = http_request(http, "GET", "/v1/models", "", {}, std::chrono::seconds(10));
    } while (r.status != 503 && std::chrono::steady_clock::now() < deadline);
    ASSERT_EQ(r.status, 503) << r.body << r.error;
    EXPECT_EQ(r.json()["error"]["code"], "too_many_connections") << r.body;
    EXPECT_NE(r.headers.find("Retry-After: 1"), std::string::npos) << r.headers;
    // Free the slots: a new client is served again (bounded wait for the server to notice).
    for (int fd : held) close(fd);
    const auto again = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    do {
        r = http_request(http, "GET", "/v1/models", "", {}, std::chrono::seconds(10));
    } while (r.status != 200 && std::chrono::steady_clock::now() < again);
    EXPECT_EQ(r.status, 200) << r.body << r.error;
}

TEST_F(CoordinatorHttpTest, ThriftPythonClientGetsTypedErrors) {
    const std::string gen = std::string(std::getenv("DS_BINARY_DIR")) + "/gen/py";
    const std::string client = source_path("coordinator/examples/thrift_client.py");
    const std::string server = "127.0.0.1:" + std::to_string((*ports_)["thrift"].get<int>());
    auto unavailable = run_command({"/usr/bin/python3", client, "--gen", gen, "--server", server, "--prompt", "Hello",
                                    "--api-key", kKey},
                                   std::chrono::seconds(60));
    EXPECT_EQ(unavailable.exit_code, 3) << unavailable.out << unavailable.err;
    EXPECT_NE(unavailable.err.find("no shard job"), std::string::npos) << unavailable.err;
    auto invalid = run_command({"/usr/bin/python3", client, "--gen", gen, "--server", server, "--tokens", "1,2",
                                "--max-tokens", "-5", "--api-key", kKey},
                               std::chrono::seconds(60));
    EXPECT_EQ(invalid.exit_code, 2) << invalid.out << invalid.err;
    EXPECT_NE(invalid.err.find("max_tokens"), std::string::npos) << invalid.err;
}

}  // namespace
}  // namespace deepshard
