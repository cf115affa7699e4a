// Completions against a live coordinator for end-to-end tests (speculative decoding,
// disaggregation): prompts of random ids, the one-process reference (`deepshard generate`), HTTP
// (plain and SSE) and Thrift completions as token ids, and /metrics values. Failures are recorded
// with gtest and return an empty result, so a test goes on to report every difference.
#pragma once

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/coordinator/live_util.h"
#include "tests/util/subprocess.h"

namespace deepshard::testing_util {

inline std::string csv(const std::vector<int>& v) {
    std::string s;
    for (int x : v) s += (s.empty() ? "" : ",") + std::to_string(x);
    return s;
}

inline std::vector<int> prompt_of(int n, int seed, int vocab) {
    std::vector<int> p;
    uint32_t x = 2654435761u * static_cast<uint32_t>(seed + 1);
    for (int i = 0; i < n; ++i) {
        x = x * 1664525u + 1013904223u;
        p.push_back(3 + static_cast<int>((x >> 8) % static_cast<uint32_t>(vocab - 3)));
    }
    return p;
}

inline std::vector<int> reference(const std::string& model, const std::vector<int>& prompt, int n) {
    auto r = run_command({binary_path("deepshard"), "generate", "--model", model, "--tokens", csv(prompt), "--max-tokens",
                          std::to_string(n), "--ignore-eos", "--json", "--numerics", "exact"},
                         std::chrono::seconds(300));
    EXPECT_EQ(r.exit_code, 0) << r.err;
    nlohmann::json j = nlohmann::json::parse(r.out.substr(std::min(r.out.find('{'), r.out.size())), nullptr, false);
    if (j.is_discarded() || !j.contains("generated_tokens")) {
        ADD_FAILURE() << "deepshard generate printed: " << r.out;
        return {};
    }
    return j["generated_tokens"].get<std::vector<int>>();
}

// Token ids of a completion (plain or SSE); empty with a failure recorded on error.
inline std::vector<int> completion(uint16_t port, const std::vector<int>& prompt, int n, bool stream, double temperature = 0,
                            int seed = 0) {
    nlohmann::json b = {{"model", "m"},     {"prompt", prompt},           {"max_tokens", n},          {"ignore_eos", true},
              {"stream", stream}, {"temperature", temperature}, {"return_token_ids", true}};
    if (temperature > 0) b["seed"] = seed;
    HttpResponse r = http_request(port, "POST", "/v1/completions", b.dump(), {}, std::chrono::seconds(600));
    std::vector<int> out;
    if (r.status != 200) {
        ADD_FAILURE() << "HTTP " << r.status << ": " << r.body << r.error;
        return out;
    }
    if (!stream) return r.json()["choices"][0]["token_ids"].get<std::vector<int>>();
    bool done = false;
    for (const std::string& ev : sse_events(r.body)) {
        if (ev == "[DONE]") {
            done = true;
            continue;
        }
        nlohmann::json j = nlohmann::json::parse(ev, nullptr, false);
        if (j.is_discarded() || j.contains("error")) {
            ADD_FAILURE() << "event: " << ev;
            continue;
        }
        for (const auto& c : j["choices"]) {
            for (int t : c["token_ids"]) out.push_back(t);
        }
    }
    EXPECT_TRUE(done) << "the stream did not end with [DONE]";
    return out;
}

// A greedy completion through Thrift (deepshard-thrift-client; Generate, or Submit/Poll with --stream).
inline std::vector<int> thrift_completion(uint16_t port, const std::vector<int>& prompt, int n, bool stream) {
    std::vector<std::string> cmd = {binary_path("deepshard-thrift-client"), "--server", "127.0.0.1:" + std::to_string(port),
                                    "--tokens", csv(prompt), "--max-tokens", std::to_string(n), "--ignore-eos"};
    if (stream) cmd.push_back("--stream");
    auto r = run_command(cmd, std::chrono::seconds(600));
    EXPECT_EQ(r.exit_code, 0) << r.err << r.out;
    nlohmann::json j = nlohmann::json::parse(r.out.substr(std::min(r.out.find('{'), r.out.size())), nullptr, false);
    if (j.is_discarded() || !j.contains("tokens")) {
        ADD_FAILURE() << "thrift client printed: " << r.out;
        return {};
    }
    return j["tokens"].get<std::vector<int>>();
}

inline double scrape(uint16_t port, const std::string& name) {
    return metric_value(http_request(port, "GET", "/metrics", "", {}, std::chrono::seconds(10)).body, name);
}

}  // namespace deepshard::testing_util
