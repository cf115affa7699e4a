// `deepshard tokenize --model DIR [--decode] [--chat] [--no-bos] [--skip-special]`
//   default:  stdin text (taken byte for byte, trailing newline included) → JSON id array on stdout.
//   --chat:   stdin is one user message, or a JSON array of {"role","content"[,"tool_calls"]}, rendered
//             with the chat template (generation prompt on); the template supplies the BOS.
//   --decode: stdin is a JSON id array → text on stdout (no newline added).
// Errors go to stderr with exit code 1.
#include <iostream>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "cli/commands.h"
#include "model/tokenizer/chat_template.h"
#include "model/tokenizer/tokenizer.h"

namespace deepshard::cli {

namespace {

using json = nlohmann::json;

struct TokenizeArgs {
    std::string model;
    bool decode = false;
    bool chat = false;
    bool no_bos = false;
    bool skip_special = false;
};

StatusOr<std::vector<model::ChatMessage>> parse_chat_input(const std::string& input) {
    // A JSON array is a conversation; anything else (including text that merely starts with '[')
    // is a single user message.
    json parsed = json::parse(input, nullptr, /*allow_exceptions=*/false);
    if (!parsed.is_array()) {
        return std::vector<model::ChatMessage>{{"user", input}};
    }
    std::vector<model::ChatMessage> messages;
    try {
        for (const json& m : parsed) {
            model::ChatMessage msg;
            msg.role = m.at("role").get<std::string>();
            const json& content = m.value("content", json());
            msg.content = content.is_null() ? std::string() : content.get<std::string>();
            for (const json& call : m.value("tool_calls", json::array())) {
                const json& fn = call.at("function");
                const json& arguments = fn.value("arguments", json("{}"));
                msg.tool_calls.push_back({call.value("type", "function"), fn.at("name").get<std::string>(),
                                          arguments.is_string() ? arguments.get<std::string>() : arguments.dump()});
            }
            messages.push_back(std::move(msg));
        }
    } catch (const json::exception& e) {
        return invalid_argument(std::string("chat messages must be {\"role\", \"content\"} objects: ") + e.what());
    }
    return messages;
}

StatusOr<std::string> run(const TokenizeArgs& args, const std::string& input) {
    DS_ASSIGN_OR_RETURN(model::Tokenizer tok, model::Tokenizer::load(args.model));
    if (args.decode) {
        json parsed = json::parse(input, nullptr, /*allow_exceptions=*/false);
        if (!parsed.is_array()) {
            return invalid_argument("--decode expects a JSON array of token ids on stdin");
        }
        std::vector<int32_t> ids;
        for (const json& v : parsed) {
            if (!v.is_number_integer()) {
                return invalid_argument("--decode: not an integer id: " + v.dump());
            }
            ids.push_back(v.get<int32_t>());
        }
        return tok.decode(ids, args.skip_special);
    }
    std::vector<int32_t> ids;
    if (args.chat) {
        DS_ASSIGN_OR_RETURN(auto messages, parse_chat_input(input));
        DS_ASSIGN_OR_RETURN(std::string prompt, model::apply_chat_template(messages, /*add_generation_prompt=*/true));
        DS_ASSIGN_OR_RETURN(ids, tok.encode(prompt, /*add_bos=*/false));
        if (args.no_bos && !ids.empty() && ids.front() == tok.bos_id()) {
            ids.erase(ids.begin());
        }
    } else {
        DS_ASSIGN_OR_RETURN(ids, tok.encode(input, tok.add_bos_token() && !args.no_bos));
    }
    return json(ids).dump() + "\n";
}

}  // namespace

void register_tokenize(CLI::App& app, int* exit_code) {
    auto args = std::make_shared<TokenizeArgs>();
    auto* cmd = app.add_subcommand("tokenize", "text on stdin -> JSON token ids on stdout (or back with --decode)");
    cmd->add_option("--model", args->model, "model directory holding tokenizer.json (or the file itself)")->required();
    cmd->add_flag("--decode", args->decode, "read a JSON id array, print the text");
    cmd->add_flag("--chat", args->chat, "wrap stdin (text or JSON message list) in the chat template");
    cmd->add_flag("--no-bos", args->no_bos, "do not prepend the BOS token");
    cmd->add_flag("--skip-special", args->skip_special, "with --decode: drop special tokens");
    cmd->callback([args, exit_code] {
        std::string input((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
        StatusOr<std::string> out = run(*args, input);
        if (!out.ok()) {
            std::cerr << "deepshard tokenize: " << out.status().to_string() << "\n";
            *exit_code = 1;
            return;
        }
        std::cout << *out << std::flush;
        *exit_code = 0;
    });
}

}  // namespace deepshard::cli
