// The OpenAI-compatible request/response format (completions and chat completions), independent
// of the transport: parse + validate a JSON body into GenerateParams, and render responses and
// stream chunks. Pure functions of their arguments; thread-safe.
//
// Extensions beyond OpenAI (vLLM-style): `top_k`, `min_p`, `repetition_penalty`, `ignore_eos`,
// `stop_token_ids`, `return_token_ids` (adds `token_ids` to each choice), `timeout` (seconds), and a
// completions `prompt` given as token ids (a list of ints, as OpenAI allows). Models without a
// tokenizer accept token-id prompts only and always return `token_ids`.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "coordinator/engine.h"

namespace deepshard::coordinator {

enum class ApiKind { kCompletions, kChat };

struct ApiError {
    int http_status = 400;
    std::string type = "invalid_request_error";
    std::string message;
    std::string param;  // the offending field, when there is one
    std::string code;
};

// What parsing and rendering need to know about the served model.
struct ApiContext {
    const ModelInfo* model = nullptr;
    const model::Tokenizer* tokenizer = nullptr;  // null: token-id prompts only
};

struct ParsedRequest {
    ApiKind kind = ApiKind::kCompletions;
    GenerateParams params;
    std::string model;             // as the client named it
    bool stream = false;
    bool include_usage = false;    // stream_options.include_usage
    int logprobs = -1;             // -1 off; else top-n alternatives per token (0..20)
    bool return_token_ids = false; // choices[].token_ids
};

// Parses and validates a request body (every check of validate_params included). On failure returns
// false and fills `error`; the message names the field.
bool parse_request(ApiKind kind, const std::string& body, const ApiContext& ctx, ParsedRequest* out,
                   ApiError* error);

// Maps a Status to an OpenAI-style error (400, 404, 429, 503, 504, 500 ...).
ApiError error_from_status(const Status& s);
// {"error": {"message", "type", "param", "code"}}
std::string error_body(const ApiError& e);

// Non-streaming response for a finished request (snapshot from offset 0).
nlohmann::json final_response(const ParsedRequest& req, const RequestSnapshot& snap, const ApiContext& ctx,
                              const std::string& id, int64_t created);
// One SSE chunk carrying new events (finish_reason null); `first` adds the chat role delta.
nlohmann::json stream_chunk(const ParsedRequest& req, const std::vector<RequestEvent>& events, const ApiContext& ctx,
                            const std::string& id, int64_t created, bool first);
// The chunk carrying finish_reason (empty delta / text).
nlohmann::json stream_finish_chunk(const ParsedRequest& req, const RequestSnapshot& snap, const ApiContext& ctx,
                                   const std::string& id, int64_t created);
// The usage-only chunk (choices empty), sent when stream_options.include_usage.
nlohmann::json stream_usage_chunk(const ParsedRequest& req, const RequestSnapshot& snap, const ApiContext& ctx,
                                  const std::string& id, int64_t created);

nlohmann::json models_response(const ApiContext& ctx, int64_t created);

// "stop" / "length" for a finished request (kStop / kLength).
const char* openai_finish_reason(FinishReason r);

}  // namespace deepshard::coordinator
