// DeepSeek-V3 chat template, implemented natively (no Jinja engine). Output is byte-identical to
// HF apply_chat_template(tokenize=False) with the template in the model's tokenizer_config.json,
// including its quirks (see chat_template.cc).
#pragma once

#include <string>
#include <vector>

#include "common/status.h"

namespace deepshard::model {

struct ChatToolCall {
    std::string type = "function";
    std::string name;
    std::string arguments;  // JSON text, emitted verbatim inside a ```json block
};

struct ChatMessage {
    std::string role;  // "system", "user", "assistant" or "tool"
    std::string content;
    // Assistant tool calls. The template renders them only when the message has no content (Jinja
    // `content is none`); here that is: tool_calls non-empty and content empty.
    std::vector<ChatToolCall> tool_calls = {};
};

// Renders the conversation as prompt text, starting with the BOS token text. Encode the result with
// add_bos=false. Unknown roles → InvalidArgument.
StatusOr<std::string> apply_chat_template(const std::vector<ChatMessage>& messages, bool add_generation_prompt);

}  // namespace deepshard::model
