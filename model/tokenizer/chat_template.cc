// Native rendering of the DeepSeek-V3 Jinja chat template (tokenizer_config.json). It follows the
// Jinja literally, quirks included, so prompts match what HF/vLLM feed the model:
//  - all system messages go first (joined by "\n\n") whatever their position;
//  - ns.is_first is never reset, so only the very first tool call of the conversation opens with
//    <｜Assistant｜><｜tool▁calls▁begin｜>, and <｜tool▁calls▁end｜><｜end▁of▁sentence｜> is written only after a
//    second call;
//  - ns.is_output_first is never reset either, so only the first tool output opens the outputs block;
//  - an assistant message after tool outputs closes the block instead of opening an assistant turn;
//  - the generation prompt is suppressed while a tool-output block is open.
#include "model/tokenizer/chat_template.h"

namespace deepshard::model {

namespace {

constexpr const char* kBos = "<｜begin▁of▁sentence｜>";
constexpr const char* kEos = "<｜end▁of▁sentence｜>";
constexpr const char* kUser = "<｜User｜>";
constexpr const char* kAssistant = "<｜Assistant｜>";
constexpr const char* kCallsBegin = "<｜tool▁calls▁begin｜>";
constexpr const char* kCallsEnd = "<｜tool▁calls▁end｜>";
constexpr const char* kCallBegin = "<｜tool▁call▁begin｜>";
constexpr const char* kCallEnd = "<｜tool▁call▁end｜>";
constexpr const char* kOutputsBegin = "<｜tool▁outputs▁begin｜>";
constexpr const char* kOutputsEnd = "<｜tool▁outputs▁end｜>";
constexpr const char* kOutputBegin = "<｜tool▁output▁begin｜>";
constexpr const char* kOutputEnd = "<｜tool▁output▁end｜>";
constexpr const char* kSep = "<｜tool▁sep｜>";

// Appends the pieces in order. The prompt is built by appending only: each byte is copied once, where
// `"\n" + std::string(...)` inserts at the front of a temporary (the pattern GCC 12 at -O3 also
// misreports as a -Wrestrict overlap, GCC PR 105651).
template <typename... Pieces>
void append(std::string* out, const Pieces&... pieces) {
    (out->append(pieces), ...);
}

void append_call(std::string* out, const ChatToolCall& call) {
    append(out, kCallBegin, call.type, kSep, call.name, "\n```json\n", call.arguments, "\n```", kCallEnd);
}

}  // namespace

StatusOr<std::string> apply_chat_template(const std::vector<ChatMessage>& messages, bool add_generation_prompt) {
    std::string system_prompt;
    bool first_system = true;
    for (size_t i = 0; i < messages.size(); ++i) {
        const std::string& role = messages[i].role;
        if (role != "system" && role != "user" && role != "assistant" && role != "tool") {
            return invalid_argument("chat message " + std::to_string(i) + " has unknown role '" + role +
                                    "' (expected system, user, assistant or tool)");
        }
        if (role == "system") {
            if (!first_system) {
                system_prompt += "\n\n";
            }
            system_prompt += messages[i].content;
            first_system = false;
        }
    }

    std::string out = std::string(kBos) + system_prompt;
    bool is_first = false;        // ns.is_first: a tool call has been written (never reset)
    bool is_tool = false;         // ns.is_tool: inside a tool-output block
    bool is_output_first = true;  // ns.is_output_first (never reset)
    for (const ChatMessage& m : messages) {
        if (m.role == "user") {
            is_tool = false;
            append(&out, kUser, m.content);
        } else if (m.role == "assistant") {
            const bool content_is_none = !m.tool_calls.empty() && m.content.empty();
            if (content_is_none) {
                is_tool = false;
                for (const ChatToolCall& call : m.tool_calls) {
                    if (!is_first) {
                        append(&out, kAssistant, kCallsBegin);
                        append_call(&out, call);
                        is_first = true;
                    } else {
                        out += '\n';
                        append_call(&out, call);
                        append(&out, kCallsEnd, kEos);
                    }
                }
            } else if (is_tool) {
                append(&out, kOutputsEnd, m.content, kEos);
                is_tool = false;
            } else {
                append(&out, kAssistant, m.content, kEos);
            }
        } else if (m.role == "tool") {
            is_tool = true;
            if (is_output_first) {
                append(&out, kOutputsBegin, kOutputBegin, m.content, kOutputEnd);
                is_output_first = false;
            } else {
                append(&out, "\n", kOutputBegin, m.content, kOutputEnd);
            }
        }
    }
    if (is_tool) {
        out += kOutputsEnd;
    }
    if (add_generation_prompt && !is_tool) {
        out += kAssistant;
    }
    return out;
}

}  // namespace deepshard::model
