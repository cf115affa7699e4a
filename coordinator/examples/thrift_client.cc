// Example C++ Thrift client for deepshard-coordinator:
//   deepshard-thrift-client --server 127.0.0.1:9090 --tokens 0,4011,4000 --max-tokens 8 [--stream]
//   deepshard-thrift-client --server 127.0.0.1:9090 --prompt "Hello" --max-tokens 32
// Prints one JSON object: {"tokens": [...], "text": "...", "finish_reason": "..."} (or the error).
#include <chrono>
#include <iostream>
#include <memory>
#include <sstream>
#include <thread>

#include <CLI/CLI.hpp>
#include <thrift/protocol/TBinaryProtocol.h>
#include <thrift/transport/TBufferTransports.h>
#include <thrift/transport/TSocket.h>

#include "coordinator/thrift/Deepshard.h"

using namespace apache::thrift;
using deepshard::rpc::DeepshardClient;

namespace {

std::string json_escape(const std::string& s) {
    std::string o;
    for (unsigned char c : s) {
        if (c == '"' || c == '\\') {
            o += '\\';
            o += static_cast<char>(c);
        } else if (c < 0x20) {
            char buf[8];
            std::snprintf(buf, sizeof(buf), "\\u%04x", c);
            o += buf;
        } else {
            o += static_cast<char>(c);
        }
    }
    return o;
}

void print(const std::vector<int32_t>& tokens, const std::string& text, const std::string& reason) {
    std::cout << "{\"tokens\": [";
    for (size_t i = 0; i < tokens.size(); ++i) std::cout << (i ? ", " : "") << tokens[i];
    std::cout << "], \"text\": \"" << json_escape(text) << "\", \"finish_reason\": \"" << reason << "\"}\n";
}

}  // namespace

int main(int argc, char** argv) {
    std::string server = "127.0.0.1:9090", prompt, tokens, api_key;
    int max_tokens = 16;
    double temperature = 0;
    bool stream = false;
    bool ignore_eos = false;
    CLI::App app{"deepshard Thrift client example"};
    app.add_option("--server", server, "HOST:PORT of the coordinator's Thrift port");
    app.add_option("--prompt", prompt, "Text prompt");
    app.add_option("--tokens", tokens, "Token-id prompt, comma separated");
    app.add_option("--max-tokens", max_tokens);
    app.add_option("--temperature", temperature, "0 = greedy");
    app.add_option("--api-key", api_key);
    app.add_flag("--stream", stream, "Submit + Poll instead of Generate");
    app.add_flag("--ignore-eos", ignore_eos, "Keep generating past EOS");
    CLI11_PARSE(app, argc, argv);

    const auto colon = server.rfind(':');
    auto socket = std::make_shared<transport::TSocket>(server.substr(0, colon), std::stoi(server.substr(colon + 1)));
    auto transport = std::make_shared<transport::TBufferedTransport>(socket);
    DeepshardClient client(std::make_shared<protocol::TBinaryProtocol>(transport));

    deepshard::rpc::GenerateRequest req;
    if (!tokens.empty()) {
        std::vector<int32_t> ids;
        std::stringstream ss(tokens);
        for (std::string t; std::getline(ss, t, ',');) ids.push_back(std::stoi(t));
        req.__set_prompt_tokens(ids);
    } else {
        req.__set_prompt(prompt);
    }
    req.__set_max_tokens(max_tokens);
    if (ignore_eos) req.__set_ignore_eos(true);
    deepshard::rpc::SamplingParams sp;
    sp.__set_temperature(temperature);
    req.__set_sampling(sp);
    if (!api_key.empty()) req.__set_api_key(api_key);
    try {
        transport->open();
        if (!stream) {
            deepshard::rpc::GenerateResponse r;
            client.Generate(r, req);
            print(r.tokens, r.text, r.finish_reason);
        } else {
            const int64_t id = client.Submit(req);
            std::vector<int32_t> all;
            std::string text;
            int64_t offset = 0;
            for (;;) {
                deepshard::rpc::PollResponse p;
                client.Poll(p, id, offset, 1000, api_key);
                all.insert(all.end(), p.tokens.begin(), p.tokens.end());
                text += p.text;
                offset = p.next_offset;
                if (p.finished) {
                    print(all, text, p.finish_reason);
                    break;
                }
            }
        }
        transport->close();
    } catch (const deepshard::rpc::InvalidRequest& e) {
        std::cerr << "InvalidRequest (" << e.field << "): " << e.message << "\n";
        return 2;
    } catch (const deepshard::rpc::Unavailable& e) {
        std::cerr << "Unavailable: " << e.message << "\n";
        return 3;
    } catch (const deepshard::rpc::Overloaded& e) {
        std::cerr << "Overloaded: " << e.message << "\n";
        return 4;
    } catch (const deepshard::rpc::GenerationFailed& e) {
        std::cerr << "GenerationFailed (" << e.code << "): " << e.message << "\n";
        return 5;
    } catch (const TException& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
