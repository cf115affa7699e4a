// OpenAI request validation: every bad input is rejected with the right HTTP status and a message
// naming the field; good inputs become the expected GenerateParams; responses have OpenAI's shape.
#include "coordinator/openai_api.h"

#include <cstdlib>

#include <gtest/gtest.h>

#include "common/request_limits.h"
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

// Fields nested inside messages, tool calls and response_format are type-checked like top-level
// ones: a wrong type is a 400 naming the field, never an exception (which used to drop the
// connection without a response).
TEST_F(OpenAiApiTest, WrongTypesInsideNestedObjects) {
    expect_error(kChat, R"({"model": "m", "messages": [{"role": "user", "content": [{"type": 1, "text": "x"}]}]})",
                 400, "messages[0].content[0]", "messages");
    expect_error(kChat, R"({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": 7}]}]})",
                 400, "messages[0].content[0]", "messages");
    expect_error(kChat, R"({"model": "m", "messages": [{"role": "user", "content": ["x"]}]})", 400,
                 "messages[0].content[0]", "messages");
    expect_error(kChat,
                 R"({"model": "m", "messages": [{"role": "assistant", "content": "", "tool_calls": [{"type": 3,
                     "function": {"name": "f"}}]}, {"role": "user", "content": "x"}]})",
                 400, "messages[0].tool_calls[0].type: expected a string", "messages");
    expect_error(kChat,
                 R"({"model": "m", "messages": [{"role": "assistant", "content": "", "tool_calls": [{"function":
                     {"name": 5}}]}]})",
                 400, "messages[0].tool_calls[0]: needs function.name", "messages");
    expect_error(kChat,
                 R"({"model": "m", "messages": [{"role": "assistant", "content": "", "tool_calls": [7]}]})", 400,
                 "messages[0].tool_calls[0]", "messages");
    expect_error(kChat, R"({"model": "m", "messages": [{"role": 5, "content": "x"}]})", 400, "role", "messages");
    expect_error(kC, R"({"model": "m", "prompt": "hi", "response_format": {"type": 5}})", 400, "response_format",
                 "response_format");
    expect_error(kC, R"({"model": "m", "prompt": "hi", "response_format": "text"})", 400, "response_format",
                 "response_format");
    expect_error(kC, R"({"model": "m", "prompt": "hi", "stream_options": {"include_usage": "yes"}})", 400,
                 "stream_options.include_usage", "stream_options.include_usage");
    expect_error(kC, R"({"model": "m", "prompt": "hi", "tools": {"a": 1}})", 400, "tools: expected an array", "tools");
    expect_error(kC, R"({"model": "m", "prompt": "hi", "logit_bias": [1]})", 400, "logit_bias", "logit_bias");
    expect_error(kC, R"({"model": "m", "prompt": "hi", "timeout": "soon"})", 400, "timeout", "timeout");
    // Tool-call arguments given as an object are rendered as JSON text.
    ParsedRequest r = expect_ok(
        kChat, R"({"model": "m", "max_tokens": 1, "messages": [{"role": "assistant", "content": null,
                   "tool_calls": [{"function": {"name": "f", "arguments": {"a": [1]}}}]}, {"role": "user",
                   "content": "x"}]})");
    EXPECT_FALSE(r.params.prompt.empty());
}

// The shape of the body is bounded before anything is built from it: nesting depth (DOM copies and
// dump() recurse per level: 100000 levels used to overflow the stack and kill the coordinator) and
// the number of values.
TEST_F(OpenAiApiTest, BodyStructureIsBounded) {
    const int n = 100000;
    const std::string deep_args = std::string(n, '[') + std::string(n, ']');
    expect_error(kChat,
                 R"({"model": "m", "messages": [{"role": "assistant", "content": "x", "tool_calls": [{"type":
                     "function", "function": {"name": "f", "arguments": )" +
                     deep_args + R"(}}]}, {"role": "user", "content": "hi"}], "max_tokens": 2})",
                 400, "nests deeper than 32 levels");
    expect_error(kC, R"({"model": "m", "prompt": )" + std::string(n, '[') + std::string(n, ']') + "}", 400,
                 "nests deeper");
    std::string objects;
    for (int i = 0; i < n; ++i) objects += "{\"a\":";
    expect_error(kC, R"({"model": "m", "prompt": "hi", "metadata": )" + objects + "1" + std::string(n, '}') + "}",
                 400, "nests deeper");
    // Exactly at the depth limit is fine (the root object is level 1).
    std::string ok_nest = "1";
    for (int i = 0; i < limits::kMaxJsonDepth - 1; ++i) ok_nest = "[" + ok_nest + "]";
    expect_ok(kC, R"({"model": "m", "prompt": "hi", "max_tokens": 1, "metadata": )" + ok_nest + "}");
    expect_error(kC, R"({"model": "m", "prompt": "hi", "metadata": [)" + ok_nest + "]}", 400, "nests deeper");
    // Too many values: a flat list of zeros one longer than the limit.
    std::string many = "[";
    for (size_t i = 0; i < limits::kMaxJsonValues; ++i) many += i == 0 ? "0" : ",0";
    many += "]";
    expect_error(kC, R"({"model": "m", "prompt": )" + many + "}", 400, "more than");
}

// Every list a client sends has a bound from the request-limits table; one more entry is a 400
// naming the field, before anything is copied out of it.
TEST_F(OpenAiApiTest, ListCountsAreBounded) {
    auto list = [](size_t n, const std::string& item) {
        std::string s = "[";
        for (size_t i = 0; i < n; ++i) s += (i ? "," : "") + item;
        return s + "]";
    };
    auto object = [](size_t n) {
        std::string s = "{";
        for (size_t i = 0; i < n; ++i) s += (i ? ",\"" : "\"") + std::to_string(i) + "\": 1";
        return s + "}";
    };
    const std::string hi = R"({"model": "m", "prompt": "hi", "max_tokens": 1, )";
    expect_ok(kC, hi + R"("stop": )" + list(limits::kMaxStopStrings, "\"x\"") + "}");
    expect_error(kC, hi + R"("stop": )" + list(limits::kMaxStopStrings + 1, "\"x\"") + "}", 400, "at most 16", "stop");
    expect_ok(kC, hi + R"("stop_token_ids": )" + list(limits::kMaxStopTokenIds, "5") + "}");
    expect_error(kC, hi + R"("stop_token_ids": )" + list(limits::kMaxStopTokenIds + 1, "5") + "}", 400, "at most",
                 "stop_token_ids");
    expect_error(kC, hi + R"("logit_bias": )" + object(limits::kMaxLogitBias + 1) + "}", 400, "at most", "logit_bias");
    expect_error(kC, hi + R"("tools": )" + list(limits::kMaxTools + 1, "{}") + "}", 400, "at most", "tools");
    const std::string msg = R"({"role": "user", "content": "x"})";
    expect_error(kChat, R"({"model": "m", "messages": )" + list(limits::kMaxMessages + 1, msg) + "}", 400,
                 "messages: 4097 entries, at most 4096", "messages");
    const std::string part = R"({"type": "text", "text": ""})";
    expect_error(kChat,
                 R"({"model": "m", "messages": [{"role": "user", "content": )" +
                     list(limits::kMaxContentParts + 1, part) + "}]}",
                 400, "messages[0].content", "messages");
    const std::string call = R"({"function": {"name": "f"}})";
    expect_error(kChat,
                 R"({"model": "m", "messages": [{"role": "assistant", "content": "", "tool_calls": )" +
                     list(limits::kMaxToolCalls + 1, call) + "}]}",
                 400, "messages[0].tool_calls", "messages");
    expect_error(kC, hi + R"("stop": [")" + std::string(limits::kMaxStopStringBytes + 1, 'a') + "\"]}", 400,
                 "1..1024 bytes", "stop");
}

// HTTP applies the request-limits table's ranges (the same the control protocol and the sampler
// check), at their edges.
TEST_F(OpenAiApiTest, SamplingRangesAreTheSharedTable) {
    const std::string hi = R"({"model": "m", "prompt": "hi", "max_tokens": 1, )";
    expect_ok(kC, hi + R"("temperature": 2, "top_p": 1, "min_p": 1, "repetition_penalty": 10,
                          "frequency_penalty": -2, "presence_penalty": 2, "logprobs": 20})");
    expect_error(kC, hi + R"("repetition_penalty": 10.5})", 400, "out of range (0, 10]", "repetition_penalty");
    expect_error(kC, hi + R"("repetition_penalty": 0})", 400, "out of range (0, 10]", "repetition_penalty");
    expect_error(kC, hi + R"("min_p": 1.5})", 400, "out of range [0, 1]", "min_p");
    expect_error(kC, hi + R"("temperature": 2.01})", 400, "out of range [0, 2]", "temperature");
    expect_error(kC, hi + R"("top_k": -2})", 400, "top_k", "top_k");
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
