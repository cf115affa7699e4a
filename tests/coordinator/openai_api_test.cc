// OpenAI request validation: every bad input is rejected with the right HTTP status and a message
// naming the field; good inputs become the expected GenerateParams; responses have OpenAI's shape.
#include "coordinator/openai_api.h"

#include <cstdlib>

#include <gtest/gtest.h>

#include "model/tokenizer/chat_template.h"

namespace deepshard::coordinator {
namespace {

using json = nlohmann::json;

class OpenAiApiTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        const char* src = std::getenv("DS_SOURCE_DIR");
        auto t = model::Tokenizer::load(std::string(src ? src : ".") + "/testdata/tokenizer");
        ASSERT_TRUE(t.ok()) << t.status().to_string();
        tokenizer_ = new model::Tokenizer(std::move(t).value());
    }
    static void TearDownTestSuite() {
        delete tokenizer_;
        tokenizer_ = nullptr;
    }
    void SetUp() override {
        model_.name = "m";
        model_.max_context = 64;
        model_.vocab_size = 129280;
        ctx_.model = &model_;
        ctx_.tokenizer = tokenizer_;
    }

    // Parses; expects failure with `status` and a message containing `needle`.
    void expect_error(ApiKind kind, const std::string& body, int status, const std::string& needle,
                      const std::string& param = "") {
        ParsedRequest req;
        ApiError err;
        EXPECT_FALSE(parse_request(kind, body, ctx_, &req, &err)) << body;
        EXPECT_EQ(err.http_status, status) << body << " -> " << err.message;
        EXPECT_NE(err.message.find(needle), std::string::npos) << body << " -> " << err.message;
        if (!param.empty()) {
            EXPECT_EQ(err.param, param) << body;
        }
        // The error body is OpenAI's shape.
        json j = json::parse(error_body(err));
        EXPECT_TRUE(j["error"]["message"].is_string());
        EXPECT_TRUE(j["error"]["type"].is_string());
    }
    ParsedRequest expect_ok(ApiKind kind, const std::string& body) {
        ParsedRequest req;
        ApiError err;
        EXPECT_TRUE(parse_request(kind, body, ctx_, &req, &err)) << body << " -> " << err.message;
        return req;
    }

    static model::Tokenizer* tokenizer_;
    ModelInfo model_;
    ApiContext ctx_;
};
model::Tokenizer* OpenAiApiTest::tokenizer_ = nullptr;

constexpr ApiKind kC = ApiKind::kCompletions;
constexpr ApiKind kChat = ApiKind::kChat;

TEST_F(OpenAiApiTest, MalformedJson) {
    expect_error(kC, "{\"model\": \"m\", \"prompt\": ", 400, "malformed JSON");
    expect_error(kC, "not json", 400, "malformed JSON");
    expect_error(kC, "", 400, "malformed JSON");
    expect_error(kC, "[1, 2]", 400, "must be a JSON object");
}

TEST_F(OpenAiApiTest, InvalidUtf8) {
    expect_error(kC, "{\"model\": \"m\", \"prompt\": \"a\xff\xfe\"}", 400, "not valid UTF-8");
}

TEST_F(OpenAiApiTest, MissingFields) {
    expect_error(kC, R"({"prompt": "hi"})", 400, "model: required", "model");
    expect_error(kC, R"({"model": "m"})", 400, "prompt: required", "prompt");
    expect_error(kChat, R"({"model": "m"})", 400, "messages: required", "messages");
    expect_error(kChat, R"({"model": "m", "messages": []})", 400, "must not be empty", "messages");
    expect_error(kChat, R"({"model": "m", "messages": [{"content": "x"}]})", 400, "role");
    expect_error(kChat, R"({"model": "m", "messages": [{"role": "user"}]})", 400, "content: required");
}

TEST_F(OpenAiApiTest, WrongTypes) {
    expect_error(kC, R"({"model": 5, "prompt": "hi"})", 400, "model: expected a string", "model");
    expect_error(kC, R"({"model": "m", "prompt": {"a": 1}})", 400, "prompt: expected", "prompt");
    expect_error(kC, R"({"model": "m", "prompt": [1, "x"]})", 400, "prompt", "prompt");
    expect_error(kC, R"({"model": "m", "prompt": "hi", "max_tokens": "5"})", 400, "max_tokens: expected an integer",
                 "max_tokens");
    expect_error(kC, R"({"model": "m", "prompt": "hi", "max_tokens": 2.5})", 400, "max_tokens: expected an integer");
    expect_error(kC, R"({"model": "m", "prompt": "hi", "temperature": "hot"})", 400, "temperature: expected a number",
                 "temperature");
    expect_error(kC, R"({"model": "m", "prompt": "hi", "stream": "yes"})", 400, "stream: expected a boolean", "stream");
    expect_error(kC, R"({"model": "m", "prompt": "hi", "stop": 7})", 400, "stop: expected", "stop");
    expect_error(kChat, R"({"model": "m", "messages": "hi"})", 400, "messages: expected an array");
    expect_error(kChat, R"({"model": "m", "messages": [{"role": "user", "content": 5}]})", 400, "content");
    expect_error(kChat, R"({"model": "m", "messages": [{"role": "wizard", "content": "x"}]})", 400, "unknown role");
}

TEST_F(OpenAiApiTest, MaxTokensRange) {
    expect_error(kC, R"({"model": "m", "prompt": "hi", "max_tokens": -3})", 400, "max_tokens: must be at least 1",
                 "max_tokens");
    expect_error(kC, R"({"model": "m", "prompt": "hi", "max_tokens": 0})", 400, "at least 1");
    expect_error(kC, R"({"model": "m", "prompt": "hi", "max_tokens": 1000000000000})", 400, "context length",
                 "max_tokens");
    expect_error(kC, R"({"model": "m", "prompt": "hi", "max_tokens": 99999999999999999999})", 400, "context length");
    ParsedRequest r = expect_ok(kC, R"({"model": "m", "prompt": [5, 6, 7], "max_tokens": 61})");
    EXPECT_EQ(r.params.max_tokens, 61);
    expect_error(kC, R"({"model": "m", "prompt": [5, 6, 7], "max_tokens": 62})", 400, "context length");
}

TEST_F(OpenAiApiTest, SamplingRanges) {
    expect_error(kC, R"({"model": "m", "prompt": "hi", "temperature": -0.1})", 400, "temperature", "temperature");
    expect_error(kC, R"({"model": "m", "prompt": "hi", "temperature": 2.5})", 400, "out of range", "temperature");
    expect_error(kC, R"({"model": "m", "prompt": "hi", "top_p": 0})", 400, "top_p", "top_p");
    expect_error(kC, R"({"model": "m", "prompt": "hi", "top_p": 1.5})", 400, "top_p", "top_p");
    expect_error(kC, R"({"model": "m", "prompt": "hi", "frequency_penalty": 3})", 400, "frequency_penalty");
    expect_error(kC, R"({"model": "m", "prompt": "hi", "presence_penalty": -2.5})", 400, "presence_penalty");
    expect_error(kC, R"({"model": "m", "prompt": "hi", "logprobs": 21})", 400, "logprobs");
    expect_error(kChat, R"({"model": "m", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 3})", 400,
                 "requires logprobs");
    expect_error(kC, R"({"model": "m", "prompt": "hi", "n": 2})", 400, "n = 1");
}

TEST_F(OpenAiApiTest, PromptLongerThanContext) {
    std::string ids;
    for (int i = 0; i < 64; ++i) ids += (i ? "," : "") + std::to_string(100 + i);
    expect_error(kC, R"({"model": "m", "prompt": [)" + ids + "]}", 400, "context length");
    std::string text(400, 'a');
    for (size_t i = 0; i < text.size(); i += 2) text[i] = ' ';
    expect_error(kC, R"({"model": "m", "prompt": ")" + text + "\"}", 400, "context length");
}

TEST_F(OpenAiApiTest, UnknownModel) {
    expect_error(kC, R"({"model": "gpt-4", "prompt": "hi"})", 404, "does not exist", "model");
}

TEST_F(OpenAiApiTest, TokenIdsOutsideVocabulary) {
    expect_error(kC, R"({"model": "m", "prompt": [1, 200000]})", 400, "outside the vocabulary");
    expect_error(kC, R"({"model": "m", "prompt": [1, -4]})", 400, "prompt");
}

TEST_F(OpenAiApiTest, GoodCompletionRequest) {
    ParsedRequest r = expect_ok(kC, R"({"model": "m", "prompt": "Hello", "max_tokens": 5, "temperature": 0,
        "top_p": 0.9, "seed": 7, "stop": ["\n\n", "END"], "stream": true,
        "stream_options": {"include_usage": true}, "logprobs": 2, "return_token_ids": true})");
    EXPECT_EQ(r.params.max_tokens, 5);
    EXPECT_EQ(r.params.sampling.temperature, 0.0f);
    EXPECT_FLOAT_EQ(r.params.sampling.top_p, 0.9f);
    EXPECT_EQ(r.params.sampling.has_seed, 1);
    EXPECT_EQ(r.params.sampling.seed, 7u);
    EXPECT_EQ(r.params.stop.size(), 2u);
    EXPECT_TRUE(r.stream);
    EXPECT_TRUE(r.include_usage);
    EXPECT_EQ(r.logprobs, 2);
    EXPECT_EQ(r.params.sampling.logprobs, 2);
    auto ids = tokenizer_->encode("Hello", tokenizer_->add_bos_token());
    ASSERT_TRUE(ids.ok());
    EXPECT_EQ(r.params.prompt, *ids);
}

TEST_F(OpenAiApiTest, TokenPromptAndDefaults) {
    ParsedRequest r = expect_ok(kC, R"({"model": "m", "prompt": [0, 11, 12]})");
    EXPECT_EQ(r.params.prompt, (std::vector<int32_t>{0, 11, 12}));
    EXPECT_EQ(r.params.max_tokens, 16);
    EXPECT_EQ(r.params.sampling.temperature, 1.0f);
    EXPECT_EQ(r.logprobs, -1);
    ParsedRequest nested = expect_ok(kC, R"({"model": "m", "prompt": [[0, 11]]})");
    EXPECT_EQ(nested.params.prompt, (std::vector<int32_t>{0, 11}));
    expect_error(kC, R"({"model": "m", "prompt": [[0, 11], [2]]})", 400, "one prompt");
}

TEST_F(OpenAiApiTest, ChatRequestUsesTemplate) {
    ParsedRequest r = expect_ok(
        kChat, R"({"model": "m", "messages": [{"role": "system", "content": "Be brief."},
                   {"role": "user", "content": [{"type": "text", "text": "Hi"}]}], "max_completion_tokens": 4,
                   "logprobs": true, "top_logprobs": 3})");
    std::vector<model::ChatMessage> msgs = {{"system", "Be brief."}, {"user", "Hi"}};
    auto text = model::apply_chat_template(msgs, true);
    ASSERT_TRUE(text.ok());
    auto ids = tokenizer_->encode(*text, false);
    ASSERT_TRUE(ids.ok());
    EXPECT_EQ(r.params.prompt, *ids);
    EXPECT_EQ(r.params.max_tokens, 4);
    EXPECT_EQ(r.logprobs, 3);
}

TEST_F(OpenAiApiTest, NoTokenizerNeedsTokenIds) {
    ctx_.tokenizer = nullptr;
    expect_error(kC, R"({"model": "m", "prompt": "hi"})", 400, "no tokenizer");
    expect_error(kChat, R"({"model": "m", "messages": [{"role": "user", "content": "x"}]})", 400, "no tokenizer");
    expect_ok(kC, R"({"model": "m", "prompt": [0, 1, 2]})");
}

TEST_F(OpenAiApiTest, ErrorFromStatus) {
    EXPECT_EQ(error_from_status(resource_exhausted("full")).http_status, 429);
    EXPECT_EQ(error_from_status(unavailable("gone")).http_status, 503);
    EXPECT_EQ(error_from_status(deadline_exceeded("late")).http_status, 504);
    ApiError e = error_from_status(invalid_argument("max_tokens: too many"));
    EXPECT_EQ(e.http_status, 400);
    EXPECT_EQ(e.param, "max_tokens");
}

TEST_F(OpenAiApiTest, RendersResponses) {
    ParsedRequest req = expect_ok(kC, R"({"model": "m", "prompt": [0, 5], "logprobs": 1, "return_token_ids": true})");
    RequestSnapshot snap;
    snap.finished = true;
    snap.finish_reason = FinishReason::kLength;
    snap.prompt_tokens = 2;
    snap.completion_tokens = 2;
    RequestEvent ev;
    ev.text = "ab";
    ev.tokens = {{64, -0.5f, {64}, {-0.5f}}, {65, -1.0f, {65}, {-1.0f}}};
    snap.events = {ev};
    json r = final_response(req, snap, ctx_, "cmpl-1", 123);
    EXPECT_EQ(r["object"], "text_completion");
    EXPECT_EQ(r["choices"][0]["text"], "ab");
    EXPECT_EQ(r["choices"][0]["finish_reason"], "length");
    EXPECT_EQ(r["choices"][0]["token_ids"], json({64, 65}));
    EXPECT_EQ(r["choices"][0]["logprobs"]["token_logprobs"].size(), 2u);
    EXPECT_EQ(r["usage"]["total_tokens"], 4);

    ParsedRequest chat = expect_ok(kChat, R"({"model": "m", "messages": [{"role": "user", "content": "x"}],
                                              "stream": true, "stream_options": {"include_usage": true}})");
    json c = stream_chunk(chat, {ev}, ctx_, "chatcmpl-1", 123, true);
    EXPECT_EQ(c["object"], "chat.completion.chunk");
    EXPECT_EQ(c["choices"][0]["delta"]["role"], "assistant");
    EXPECT_EQ(c["choices"][0]["delta"]["content"], "ab");
    EXPECT_TRUE(c["choices"][0]["finish_reason"].is_null());
    snap.finish_reason = FinishReason::kStop;
    json f = stream_finish_chunk(chat, snap, ctx_, "chatcmpl-1", 123);
    EXPECT_EQ(f["choices"][0]["finish_reason"], "stop");
    json u = stream_usage_chunk(chat, snap, ctx_, "chatcmpl-1", 123);
    EXPECT_TRUE(u["choices"].empty());
    EXPECT_EQ(u["usage"]["completion_tokens"], 2);
}

}  // namespace
}  // namespace deepshard::coordinator
