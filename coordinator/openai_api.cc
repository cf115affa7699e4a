// OpenAI request parsing and response rendering. Every check happens here, before anything is
// queued, so each bad input gets a 4xx naming the field; validate_params (shared with Thrift) runs
// last on the assembled request for the model-dependent ranges (vocabulary, context length).
#include "coordinator/openai_api.h"

#include <cmath>
#include <limits>

#include "common/request_limits.h"
#include "coordinator/bounded_json.h"
#include "model/tokenizer/chat_template.h"

namespace deepshard::coordinator {

using json = nlohmann::json;

namespace {

constexpr int kMaxLogprobs = limits::kMaxTopLogprobs;

bool fail(ApiError* e, const std::string& param, const std::string& message, int status = 400,
          const std::string& code = "") {
    e->http_status = status;
    e->type = status == 404 ? "not_found_error" : "invalid_request_error";
    e->param = param;
    e->message = message;
    e->code = code;
    return false;
}

const char* type_name(const json& v) {
    return v.type_name();  // "null", "object", "array", "string", "boolean", "number"
}

// A present, non-null field. Missing and null are treated alike (OpenAI clients send nulls).
const json* field(const json& body, const char* key) {
    auto it = body.find(key);
    if (it == body.end() || it->is_null()) return nullptr;
    return &*it;
}

bool get_bool(const json& body, const char* key, bool* out, ApiError* e) {
    const json* v = field(body, key);
    if (!v) return true;
    if (!v->is_boolean()) return fail(e, key, std::string(key) + ": expected a boolean, got " + type_name(*v));
    *out = v->get<bool>();
    return true;
}

// Integer field in [lo, hi]; floats with a fractional part and non-numbers are type errors.
bool get_int(const json& body, const char* key, int64_t lo, int64_t hi, int64_t* out, bool* present, ApiError* e) {
    const json* v = field(body, key);
    if (present) *present = v != nullptr;
    if (!v) return true;
    int64_t x = 0;
    if (v->is_number_unsigned()) {
        const uint64_t u = v->get<uint64_t>();
        x = u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ? std::numeric_limits<int64_t>::max()
                                                                            : static_cast<int64_t>(u);
    } else if (v->is_number_integer()) {
        x = v->get<int64_t>();
    } else if (v->is_number_float()) {
        const double d = v->get<double>();
        if (!std::isfinite(d) || d != std::floor(d)) {
            return fail(e, key, std::string(key) + ": expected an integer, got " + v->dump());
        }
        // Integers too large for int64 arrive as doubles: saturate, the range check reports them.
        x = d >= 9.2e18 ? std::numeric_limits<int64_t>::max()
            : d <= -9.2e18 ? std::numeric_limits<int64_t>::min()
                           : static_cast<int64_t>(d);
    } else {
        return fail(e, key, std::string(key) + ": expected an integer, got " + type_name(*v));
    }
    if (x < lo || x > hi) {
        return fail(e, key,
                    std::string(key) + ": " + std::to_string(x) + " is out of range [" + std::to_string(lo) + ", " +
                        std::to_string(hi) + "]");
    }
    *out = x;
    return true;
}

// Number field inside `range` (the request-limits table's).
bool get_number(const json& body, const char* key, const limits::Range& range, float* out, ApiError* e) {
    const json* v = field(body, key);
    if (!v) return true;
    if (!v->is_number()) return fail(e, key, std::string(key) + ": expected a number, got " + type_name(*v));
    const double d = v->get<double>();
    if (!range.contains(d)) {
        return fail(e, key, std::string(key) + ": " + v->dump() + " is out of range " + range.text());
    }
    *out = static_cast<float>(d);
    return true;
}

// A list field's length against its bound, before anything is copied out of it.
bool check_count(const json& list, const std::string& param, const std::string& where, size_t max, ApiError* e) {
    if (list.size() <= max) return true;
    return fail(e, param, where + ": " + std::to_string(list.size()) + " entries, at most " + std::to_string(max) +
                              " allowed");
}

// A string member of an object: absent/null gives `fallback`; any other type is an error naming `where`.
bool get_string_member(const json& obj, const char* key, const std::string& fallback, const std::string& param,
                       const std::string& where, std::string* out, ApiError* e) {
    const json* v = field(obj, key);
    if (!v) {
        *out = fallback;
        return true;
    }
    if (!v->is_string()) {
        return fail(e, param, where + "." + key + ": expected a string, got " + type_name(*v));
    }
    *out = v->get<std::string>();
    return true;
}

bool get_stop(const json& body, std::vector<std::string>* out, ApiError* e) {
    const json* v = field(body, "stop");
    if (!v) return true;
    if (v->is_string()) {
        out->push_back(v->get<std::string>());
    } else if (v->is_array()) {
        if (!check_count(*v, "stop", "stop", limits::kMaxStopStrings, e)) return false;
        for (const json& s : *v) {
            if (!s.is_string()) return fail(e, "stop", std::string("stop: expected strings, got ") + type_name(s));
            out->push_back(s.get<std::string>());
        }
    } else {
        return fail(e, "stop", std::string("stop: expected a string or an array of strings, got ") + type_name(*v));
    }
    return true;
}

bool get_token_list(const json& v, const std::string& param, std::vector<int32_t>* out, ApiError* e) {
    for (const json& t : v) {
        if (!t.is_number_integer()) {
            return fail(e, param, param + ": expected integer token ids, got " + type_name(t));
        }
        const int64_t x = t.get<int64_t>();
        if (x < 0 || x > std::numeric_limits<int32_t>::max()) {
            return fail(e, param, param + ": token id " + std::to_string(x) + " is out of range");
        }
        out->push_back(static_cast<int32_t>(x));
    }
    return true;
}

bool encode_text(const ApiContext& ctx, const std::string& text, bool add_bos, const std::string& param,
                 std::vector<int32_t>* out, ApiError* e) {
    if (!ctx.tokenizer) {
        return fail(e, param,
                    param + ": this model has no tokenizer; send the prompt as a list of token ids (completions)");
    }
    auto ids = ctx.tokenizer->encode(text, add_bos);
    if (!ids.ok()) return fail(e, param, param + ": " + ids.status().message());
    *out = std::move(ids).value();
    return true;
}

bool parse_prompt(const json& body, const ApiContext& ctx, std::vector<int32_t>* out, ApiError* e) {
    const json* p = field(body, "prompt");
    if (!p) return fail(e, "prompt", "prompt: required");
    if (p->is_string()) {
        const bool bos = ctx.tokenizer ? ctx.tokenizer->add_bos_token() : false;
        return encode_text(ctx, p->get<std::string>(), bos, "prompt", out, e);
    }
    if (!p->is_array()) {
        return fail(e, "prompt", std::string("prompt: expected a string or a list of token ids, got ") + type_name(*p));
    }
    if (p->empty()) return fail(e, "prompt", "prompt: must not be empty");
    // ["text"] and [[ids]] are one-prompt batches; several prompts per request are not supported.
    const json& first = (*p)[0];
    if (first.is_string() || first.is_array()) {
        if (p->size() != 1) {
            return fail(e, "prompt", "prompt: only one prompt per request is supported (got " +
                                         std::to_string(p->size()) + ")");
        }
        if (first.is_string()) {
            const bool bos = ctx.tokenizer ? ctx.tokenizer->add_bos_token() : false;
            return encode_text(ctx, first.get<std::string>(), bos, "prompt", out, e);
        }
        return get_token_list(first, "prompt", out, e);
    }
    return get_token_list(*p, "prompt", out, e);
}

bool parse_messages(const json& body, const ApiContext& ctx, std::vector<int32_t>* out, ApiError* e) {
    const json* m = field(body, "messages");
    if (!m) return fail(e, "messages", "messages: required");
    if (!m->is_array()) return fail(e, "messages", std::string("messages: expected an array, got ") + type_name(*m));
    if (m->empty()) return fail(e, "messages", "messages: must not be empty");
    if (!check_count(*m, "messages", "messages", limits::kMaxMessages, e)) return false;
    std::vector<model::ChatMessage> messages;
    for (size_t i = 0; i < m->size(); ++i) {
        const json& msg = (*m)[i];
        const std::string where = "messages[" + std::to_string(i) + "]";
        if (!msg.is_object()) return fail(e, "messages", where + ": expected an object, got " + type_name(msg));
        const json* role = field(msg, "role");
        if (!role || !role->is_string()) return fail(e, "messages", where + ".role: required string");
        const std::string r = role->get<std::string>();
        if (r != "system" && r != "user" && r != "assistant" && r != "tool" && r != "developer") {
            return fail(e, "messages", where + ".role: unknown role '" + r + "'");
        }
        model::ChatMessage cm;
        cm.role = r == "developer" ? "system" : r;
        const json* content = field(msg, "content");
        if (content && content->is_string()) {
            cm.content = content->get<std::string>();
        } else if (content && content->is_array()) {
            if (!check_count(*content, "messages", where + ".content", limits::kMaxContentParts, e)) return false;
            for (size_t j = 0; j < content->size(); ++j) {
                const json& part = (*content)[j];
                const std::string pw = where + ".content[" + std::to_string(j) + "]";
                const json* type = part.is_object() ? field(part, "type") : nullptr;
                const json* text = part.is_object() ? field(part, "text") : nullptr;
                if (!type || !type->is_string() || type->get_ref<const std::string&>() != "text" || !text ||
                    !text->is_string()) {
                    return fail(e, "messages", pw + ": only {\"type\": \"text\", \"text\": ...} parts are supported");
                }
                cm.content += text->get_ref<const std::string&>();
            }
        } else if (content) {
            return fail(e, "messages", where + ".content: expected a string or an array of text parts, got " +
                                           type_name(*content));
        } else if (r != "assistant") {
            return fail(e, "messages", where + ".content: required");
        }
        if (const json* calls = field(msg, "tool_calls"); calls && r == "assistant") {
            if (!calls->is_array()) return fail(e, "messages", where + ".tool_calls: expected an array");
            if (!check_count(*calls, "messages", where + ".tool_calls", limits::kMaxToolCalls, e)) return false;
            for (size_t k = 0; k < calls->size(); ++k) {
                const json& c = (*calls)[k];
                const std::string cw = where + ".tool_calls[" + std::to_string(k) + "]";
                const json* fn = c.is_object() ? field(c, "function") : nullptr;
                const json* name = fn && fn->is_object() ? field(*fn, "name") : nullptr;
                if (!name || !name->is_string()) return fail(e, "messages", cw + ": needs function.name (a string)");
                model::ChatToolCall call;
                if (!get_string_member(c, "type", "function", "messages", cw, &call.type, e)) return false;
                call.name = name->get<std::string>();
                // Arguments are JSON text; an object is accepted too and written out (its depth is
                // bounded by the body's, so dump() cannot recurse without limit).
                const json* args = field(*fn, "arguments");
                call.arguments = !args ? "{}" : args->is_string() ? args->get<std::string>()
                                                                  : args->dump(-1, ' ', false, json::error_handler_t::replace);
                cm.tool_calls.push_back(std::move(call));
            }
        }
        messages.push_back(std::move(cm));
    }
    if (!ctx.tokenizer) return fail(e, "messages", "messages: this model has no tokenizer; use /v1/completions "
                                                   "with a token-id prompt");
    auto text = model::apply_chat_template(messages, /*add_generation_prompt=*/true);
    if (!text.ok()) return fail(e, "messages", "messages: " + text.status().message());
    // The template writes the BOS text itself.
    return encode_text(ctx, *text, /*add_bos=*/false, "messages", out, e);
}

std::string token_text(const ApiContext& ctx, int32_t id) {
    if (!ctx.tokenizer) return "token_id:" + std::to_string(id);
    return model::utf8::to_valid_lossy(ctx.tokenizer->token_bytes(id));
}

json bytes_of(const std::string& s) {
    json b = json::array();
    for (unsigned char c : s) b.push_back(static_cast<int>(c));
    return b;
}

// Logprobs of `tokens` in the API's format; `text_offset` starts at `offset` (completions).
json render_logprobs(const ParsedRequest& req, const std::vector<TokenLogprob>& tokens, const ApiContext& ctx,
                     size_t offset) {
    if (req.kind == ApiKind::kChat) {
        json content = json::array();
        for (const auto& t : tokens) {
            const std::string s = token_text(ctx, t.token);
            json top = json::array();
            for (size_t i = 0; i < t.top_ids.size() && i < t.top_logprobs.size(); ++i) {
                const std::string ts = token_text(ctx, t.top_ids[i]);
                top.push_back({{"token", ts}, {"logprob", t.top_logprobs[i]}, {"bytes", bytes_of(ts)}});
            }
            content.push_back({{"token", s}, {"logprob", t.logprob}, {"bytes", bytes_of(s)}, {"top_logprobs", top}});
        }
        return {{"content", content}, {"refusal", nullptr}};
    }
    json toks = json::array(), lps = json::array(), tops = json::array(), offs = json::array();
    for (const auto& t : tokens) {
        const std::string s = token_text(ctx, t.token);
        toks.push_back(s);
        lps.push_back(t.logprob);
        json top = json::object();
        for (size_t i = 0; i < t.top_ids.size() && i < t.top_logprobs.size(); ++i) {
            top[token_text(ctx, t.top_ids[i])] = t.top_logprobs[i];
        }
        tops.push_back(top);
        offs.push_back(offset);
        offset += s.size();
    }
    return {{"tokens", toks}, {"token_logprobs", lps}, {"top_logprobs", tops}, {"text_offset", offs}};
}

json usage_of(const RequestSnapshot& snap) {
    return {{"prompt_tokens", snap.prompt_tokens},
            {"completion_tokens", snap.completion_tokens},
            {"total_tokens", snap.prompt_tokens + snap.completion_tokens}};
}

json base_object(const ParsedRequest& req, const std::string& id, int64_t created, bool chunk) {
    const char* object = req.kind == ApiKind::kChat ? (chunk ? "chat.completion.chunk" : "chat.completion")
                                                    : "text_completion";
    return {{"id", id}, {"object", object}, {"created", created}, {"model", req.model}};
}

bool want_token_ids(const ParsedRequest& req, const ApiContext& ctx) {
    return req.return_token_ids || !ctx.tokenizer;
}

// One choice holding `text` / `tokens`, with finish_reason (null when `finish` is null).
json make_choice(const ParsedRequest& req, const std::string& text, const std::vector<TokenLogprob>& tokens,
                 const ApiContext& ctx, const json& finish, bool chunk, bool first, size_t text_offset) {
    json c = {{"index", 0}};
    if (req.kind == ApiKind::kChat) {
        if (chunk) {
            json delta = json::object();
            if (first) delta["role"] = "assistant";
            if (!text.empty() || first) delta["content"] = text;
            c["delta"] = delta;
        } else {
            c["message"] = {{"role", "assistant"}, {"content", text}};
        }
    } else {
        c["text"] = text;
    }
    // Chunks without tokens (the finish chunk) carry null, like OpenAI.
    const bool lp = req.logprobs >= 0 && (!chunk || !tokens.empty());
    c["logprobs"] = lp ? render_logprobs(req, tokens, ctx, text_offset) : json();
    c["finish_reason"] = finish;
    if (want_token_ids(req, ctx)) {
        json ids = json::array();
        for (const auto& t : tokens) ids.push_back(t.token);
        c["token_ids"] = ids;
    }
    return c;
}

}  // namespace

const char* openai_finish_reason(FinishReason r) {
    return r == FinishReason::kLength ? "length" : "stop";
}

bool parse_request(ApiKind kind, const std::string& body, const ApiContext& ctx, ParsedRequest* out,
                   ApiError* e) {
    *out = ParsedRequest();
    out->kind = kind;
    if (auto bad = model::utf8::first_invalid_offset(body)) {
        return fail(e, "", "the request body is not valid UTF-8 (first bad byte at offset " + std::to_string(*bad) +
                               ")");
    }
    json j;
    std::string why;
    if (!parse_bounded_json(body, JsonBounds{limits::kMaxJsonDepth, limits::kMaxJsonValues}, &j, &why)) {
        return fail(e, "", "the request body: " + why);
    }
    if (!j.is_object()) return fail(e, "", std::string("the request body must be a JSON object, got ") + type_name(j));

    const json* model = field(j, "model");
    if (!model) return fail(e, "model", "model: required");
    if (!model->is_string()) return fail(e, "model", std::string("model: expected a string, got ") + type_name(*model));
    out->model = model->get<std::string>();
    if (out->model != ctx.model->name) {
        return fail(e, "model", "model: '" + out->model + "' does not exist; this server serves '" + ctx.model->name + "'",
                    404, "model_not_found");
    }

    GenerateParams& p = out->params;
    if (kind == ApiKind::kChat) {
        if (!parse_messages(j, ctx, &p.prompt, e)) return false;
    } else {
        if (!parse_prompt(j, ctx, &p.prompt, e)) return false;
    }
    const int64_t plen = static_cast<int64_t>(p.prompt.size());
    if (plen >= ctx.model->max_context) {
        return fail(e, kind == ApiKind::kChat ? "messages" : "prompt",
                    "the prompt has " + std::to_string(plen) + " tokens, more than the model's context length of " +
                        std::to_string(ctx.model->max_context) + " allows (prompt + at least 1 generated token)",
                    400, "context_length_exceeded");
    }

    const int64_t kMin64 = std::numeric_limits<int64_t>::min();
    const int64_t kMax64 = std::numeric_limits<int64_t>::max();
    // Chat accepts max_completion_tokens (newer clients) or max_tokens.
    const char* max_name = "max_tokens";
    if (kind == ApiKind::kChat && !field(j, "max_tokens") && field(j, "max_completion_tokens")) {
        max_name = "max_completion_tokens";
    }
    bool has_max = false;
    int64_t max_tokens = 0;
    if (!get_int(j, max_name, kMin64, kMax64, &max_tokens, &has_max, e)) return false;
    if (has_max) {
        if (max_tokens < 1) {
            return fail(e, max_name, std::string(max_name) + ": must be at least 1, got " + std::to_string(max_tokens));
        }
        if (max_tokens > ctx.model->max_context - plen) {
            return fail(e, max_name,
                        std::string(max_name) + ": " + std::to_string(max_tokens) + " plus the prompt's " +
                            std::to_string(plen) + " tokens exceed the model's context length of " +
                            std::to_string(ctx.model->max_context),
                        400, "context_length_exceeded");
        }
        p.max_tokens = max_tokens;
    } else {
        // Completions default to 16 (OpenAI); chat to the rest of the context.
        p.max_tokens = kind == ApiKind::kChat ? ctx.model->max_context - plen
                                              : std::min<int64_t>(16, ctx.model->max_context - plen);
    }

    auto& s = p.sampling;
    s.temperature = 1.0f;  // OpenAI's default
    if (!get_number(j, "temperature", limits::kTemperature, &s.temperature, e)) return false;
    if (!get_number(j, "top_p", limits::kTopP, &s.top_p, e)) return false;
    if (!get_number(j, "min_p", limits::kMinP, &s.min_p, e)) return false;
    if (!get_number(j, "frequency_penalty", limits::kFrequencyPenalty, &s.frequency_penalty, e)) return false;
    if (!get_number(j, "presence_penalty", limits::kPresencePenalty, &s.presence_penalty, e)) return false;
    if (!get_number(j, "repetition_penalty", limits::kRepetitionPenalty, &s.repetition_penalty, e)) return false;
    int64_t top_k = 0;
    if (!get_int(j, "top_k", -1, limits::kMaxTopK, &top_k, nullptr, e)) return false;
    s.top_k = static_cast<int32_t>(std::max<int64_t>(top_k, 0));  // -1 (vLLM) = off
    bool has_seed = false;
    int64_t seed = 0;
    if (!get_int(j, "seed", kMin64, kMax64, &seed, &has_seed, e)) return false;
    s.has_seed = has_seed ? 1 : 0;
    s.seed = static_cast<uint64_t>(seed);

    int64_t n = 1;
    if (!get_int(j, "n", 1, 1, &n, nullptr, e)) {
        e->message = "n: only n = 1 is supported";
        return false;
    }
    if (!get_int(j, "best_of", 1, 1, &n, nullptr, e)) {
        e->message = "best_of: only best_of = 1 is supported";
        return false;
    }
    if (!get_bool(j, "stream", &out->stream, e)) return false;
    if (const json* so = field(j, "stream_options")) {
        if (!so->is_object()) return fail(e, "stream_options", "stream_options: expected an object");
        if (!get_bool(*so, "include_usage", &out->include_usage, e)) {
            e->param = "stream_options.include_usage";
            e->message = "stream_options." + e->message;
            return false;
        }
    }
    if (!get_stop(j, &p.stop, e)) return false;
    if (const json* ids = field(j, "stop_token_ids")) {
        if (!ids->is_array()) return fail(e, "stop_token_ids", "stop_token_ids: expected an array of integers");
        if (!check_count(*ids, "stop_token_ids", "stop_token_ids", limits::kMaxStopTokenIds, e)) return false;
        if (!get_token_list(*ids, "stop_token_ids", &p.stop_token_ids, e)) return false;
    }
    if (!get_bool(j, "ignore_eos", &p.ignore_eos, e)) return false;
    if (!get_bool(j, "return_token_ids", &out->return_token_ids, e)) return false;
    if (const json* t = field(j, "timeout")) {
        const limits::Range timeout_range{0, limits::kMaxTimeoutSeconds, /*lo_open=*/true};
        if (!t->is_number() || !timeout_range.contains(t->get<double>())) {
            return fail(e, "timeout", "timeout: expected a number of seconds in " + timeout_range.text());
        }
        p.timeout = std::chrono::milliseconds(std::max<int64_t>(1, std::llround(t->get<double>() * 1000)));
    }

    if (kind == ApiKind::kChat) {
        bool lp = false;
        if (!get_bool(j, "logprobs", &lp, e)) return false;
        int64_t top = 0;
        bool has_top = false;
        if (!get_int(j, "top_logprobs", 0, kMaxLogprobs, &top, &has_top, e)) return false;
        if (has_top && !lp) return fail(e, "top_logprobs", "top_logprobs: requires logprobs: true");
        out->logprobs = lp ? static_cast<int>(top) : -1;
    } else {
        bool has_lp = false;
        int64_t lp = 0;
        if (!get_int(j, "logprobs", 0, kMaxLogprobs, &lp, &has_lp, e)) return false;
        out->logprobs = has_lp ? static_cast<int>(lp) : -1;
        bool echo = false;
        if (!get_bool(j, "echo", &echo, e)) return false;
        if (echo) return fail(e, "echo", "echo: echoing the prompt is not supported");
        if (field(j, "suffix")) return fail(e, "suffix", "suffix: not supported");
    }
    s.logprobs = static_cast<uint8_t>(std::max(out->logprobs, 0));
    if (const json* lb = field(j, "logit_bias")) {
        if (!lb->is_object()) return fail(e, "logit_bias", "logit_bias: expected an object");
        if (!check_count(*lb, "logit_bias", "logit_bias", limits::kMaxLogitBias, e)) return false;
        if (!lb->empty()) return fail(e, "logit_bias", "logit_bias: not supported");
    }
    if (const json* rf = field(j, "response_format")) {
        const json* type = rf->is_object() ? field(*rf, "type") : nullptr;
        if (!type || !type->is_string() || type->get_ref<const std::string&>() != "text") {
            return fail(e, "response_format", "response_format: only {\"type\": \"text\"} is supported");
        }
    }
    if (const json* tools = field(j, "tools")) {
        if (!tools->is_array()) return fail(e, "tools", std::string("tools: expected an array, got ") + type_name(*tools));
        if (!check_count(*tools, "tools", "tools", limits::kMaxTools, e)) return false;
        if (!tools->empty()) return fail(e, "tools", "tools: function calling is not supported");
    }
    Status v = validate_params(p, *ctx.model);
    if (!v.ok()) {
        *e = error_from_status(v);
        return false;
    }
    return true;
}

ApiError error_from_status(const Status& s) {
    ApiError e;
    e.message = s.message();
    // Messages from validate_params and the scheduler start with the field: "max_tokens: ...".
    const auto colon = e.message.find(':');
    if (colon != std::string::npos && colon < 40 &&
        e.message.find_first_not_of("abcdefghijklmnopqrstuvwxyz_.[]0123456789") == colon) {
        e.param = e.message.substr(0, colon);
    }
    switch (s.code()) {
        case StatusCode::kInvalidArgument:
            e.http_status = 400;
            if (e.message.find("context length") != std::string::npos) e.code = "context_length_exceeded";
            break;
        case StatusCode::kNotFound:
            e.http_status = 404;
            e.type = "not_found_error";
            break;
        case StatusCode::kResourceExhausted:
            e.http_status = 429;
            e.type = "overloaded_error";
            e.code = "overloaded";
            break;
        case StatusCode::kUnavailable:
            e.http_status = 503;
            e.type = "service_unavailable";
            e.code = "shard_job_unavailable";
            break;
        case StatusCode::kDeadlineExceeded:
            e.http_status = 504;
            e.type = "timeout_error";
            e.code = "timeout";
            break;
        case StatusCode::kCancelled:
            e.http_status = 499;
            e.type = "cancelled";
            e.code = "cancelled";
            break;
        default:
            e.http_status = 500;
            e.type = "internal_error";
            e.code = "internal_error";
            break;
    }
    return e;
}

std::string error_body(const ApiError& e) {
    json err = {{"message", e.message},
                {"type", e.type},
                {"param", e.param.empty() ? json() : json(e.param)},
                {"code", e.code.empty() ? json() : json(e.code)}};
    return json{{"error", err}}.dump(-1, ' ', false, json::error_handler_t::replace);
}

json final_response(const ParsedRequest& req, const RequestSnapshot& snap, const ApiContext& ctx,
                    const std::string& id, int64_t created) {
    std::string text;
    std::vector<TokenLogprob> tokens;
    for (const auto& ev : snap.events) {
        text += ev.text;
        tokens.insert(tokens.end(), ev.tokens.begin(), ev.tokens.end());
    }
    json r = base_object(req, id, created, false);
    r["choices"] = json::array({make_choice(req, text, tokens, ctx, openai_finish_reason(snap.finish_reason),
                                            false, false, 0)});
    r["usage"] = usage_of(snap);
    return r;
}

json stream_chunk(const ParsedRequest& req, const std::vector<RequestEvent>& events, const ApiContext& ctx,
                  const std::string& id, int64_t created, bool first) {
    std::string text;
    std::vector<TokenLogprob> tokens;
    for (const auto& ev : events) {
        text += ev.text;
        tokens.insert(tokens.end(), ev.tokens.begin(), ev.tokens.end());
    }
    json r = base_object(req, id, created, true);
    r["choices"] = json::array({make_choice(req, text, tokens, ctx, json(), true, first, 0)});
    if (req.include_usage) r["usage"] = nullptr;
    return r;
}

json stream_finish_chunk(const ParsedRequest& req, const RequestSnapshot& snap, const ApiContext& ctx,
                         const std::string& id, int64_t created) {
    json r = base_object(req, id, created, true);
    r["choices"] = json::array({make_choice(req, "", {}, ctx, openai_finish_reason(snap.finish_reason), true, false, 0)});
    if (req.include_usage) r["usage"] = nullptr;
    return r;
}

json stream_usage_chunk(const ParsedRequest& req, const RequestSnapshot& snap, const ApiContext&,
                        const std::string& id, int64_t created) {
    json r = base_object(req, id, created, true);
    r["choices"] = json::array();
    r["usage"] = usage_of(snap);
    return r;
}

json models_response(const ApiContext& ctx, int64_t created) {
    json m = {{"id", ctx.model->name},
              {"object", "model"},
              {"created", created},
              {"owned_by", "deepshard"},
              {"max_model_len", ctx.model->max_context}};
    return {{"object", "list"}, {"data", json::array({m})}};
}

}  // namespace deepshard::coordinator
