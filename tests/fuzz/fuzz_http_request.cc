// libFuzzer target: the HTTP request path up to a validated request. Input that starts like an
// HTTP request is parsed by Boost.Beast with the server's header and body limits, routed like
// HttpServer does, and a /v1/(chat/)completions body goes through parse_request; anything else is
// taken as a JSON body (completions or chat by the first byte). With the real DeepSeek-V3
// tokenizer and a 4096-token context. Aborts when:
//  * an accepted request fails validate_params or has an empty prompt;
//  * a rejection is not a 4xx with a message, or its error body is not JSON;
//  * rendering the response for an accepted request throws.
// Any exception escaping (the server would drop the connection) or sanitizer report is a finding.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "coordinator/openai_api.h"
#include "coordinator/params.h"

#ifndef DS_FUZZ_SOURCE_DIR
#define DS_FUZZ_SOURCE_DIR "."
#endif

namespace {

namespace beast = boost::beast;
namespace http = beast::http;
using deepshard::coordinator::ApiContext;
using deepshard::coordinator::ApiError;
using deepshard::coordinator::ApiKind;
using deepshard::coordinator::ModelInfo;
using deepshard::coordinator::ParsedRequest;

[[noreturn]] void fail(const std::string& what) {
    std::fprintf(stderr, "fuzz_http_request: %s\n", what.c_str());
    std::abort();
}

const ApiContext& context() {
    static const ApiContext* ctx = [] {
        auto* model = new ModelInfo;
        model->name = "m";
        model->max_context = 4096;
        model->vocab_size = 129280;
        const char* env = std::getenv("DS_TOKENIZER_DIR");
        const std::string dir = env != nullptr ? env : std::string(DS_FUZZ_SOURCE_DIR) + "/testdata/tokenizer";
        auto tok = deepshard::model::Tokenizer::load(dir);
        if (!tok.ok()) fail("cannot load " + dir + ": " + tok.status().to_string());
        auto* c = new ApiContext;
        c->model = model;
        c->tokenizer = new deepshard::model::Tokenizer(std::move(tok).value());
        return c;
    }();
    return *ctx;
}

void check_body(ApiKind kind, const std::string& body) {
    const ApiContext& ctx = context();
    ParsedRequest req;
    ApiError err;
    if (deepshard::coordinator::parse_request(kind, body, ctx, &req, &err)) {
        if (req.params.prompt.empty()) fail("accepted an empty prompt");
        const deepshard::Status v = deepshard::coordinator::validate_params(req.params, *ctx.model);
        if (!v.ok()) fail("accepted a request validate_params refuses: " + v.to_string());
        deepshard::coordinator::RequestSnapshot snap;
        snap.finished = true;
        snap.finish_reason = deepshard::coordinator::FinishReason::kLength;
        snap.events.push_back({"text", {{5, -0.5f, {5, 6}, {-0.5f, -1.0f}}}});
        (void)deepshard::coordinator::final_response(req, snap, ctx, "id", 0).dump();
        (void)deepshard::coordinator::stream_chunk(req, snap.events, ctx, "id", 0, true).dump();
        return;
    }
    if (err.http_status < 400 || err.http_status > 499) fail("rejection status " + std::to_string(err.http_status));
    if (err.message.empty()) fail("rejection without a message");
    const auto j = nlohmann::json::parse(deepshard::coordinator::error_body(err), nullptr, false);
    if (j.is_discarded() || !j.contains("error")) fail("error body is not JSON");
}

void check_http(std::string_view data) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(16u << 10);  // HttpOptions' defaults
    parser.body_limit(4u << 20);
    parser.eager(true);
    beast::error_code ec;
    size_t used = 0;
    while (used < data.size() && !parser.is_done()) {
        const size_t n = parser.put(boost::asio::buffer(data.data() + used, data.size() - used), ec);
        if (ec == http::error::need_more) {
            ec = {};
            if (n == 0) break;
        }
        if (ec) return;  // the server answers 400/413/431 and closes
        used += n;
        if (n == 0) break;
    }
    if (!parser.is_done()) {
        parser.put_eof(ec);
        if (ec || !parser.is_done()) return;
    }
    const auto& req = parser.get();
    std::string path(req.target());
    if (const auto q = path.find('?'); q != std::string::npos) path.resize(q);
    if (req.method() != http::verb::post) return;
    if (path == "/v1/completions") check_body(ApiKind::kCompletions, req.body());
    if (path == "/v1/chat/completions") check_body(ApiKind::kChat, req.body());
}

}  // namespace

// Loading the real tokenizer takes seconds under ASan: done before libFuzzer's per-input timer.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
    (void)context();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string_view in(reinterpret_cast<const char*>(data), size);
    if (in.rfind("POST ", 0) == 0 || in.rfind("GET ", 0) == 0) {
        check_http(in);
    } else if (!in.empty()) {
        check_body((data[0] & 1) ? ApiKind::kChat : ApiKind::kCompletions, std::string(in.substr(1)));
    }
    return 0;
}
