// Chat template: expected strings were rendered from the Jinja in testdata/tokenizer/tokenizer_config.json
// with jinja2 (trim_blocks, lstrip_blocks), as HF apply_chat_template does.
#include "model/tokenizer/chat_template.h"

#include <gtest/gtest.h>

namespace deepshard::model {
namespace {

std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt = true) {
    auto out = apply_chat_template(messages, add_generation_prompt);
    EXPECT_TRUE(out.ok()) << out.status().to_string();
    return out.ok() ? *out : std::string();
}

TEST(ChatTemplate, SingleTurn) {
    EXPECT_EQ(render({{"user", "Hi?"}}), "<｜begin▁of▁sentence｜><｜User｜>Hi?<｜Assistant｜>");
}

TEST(ChatTemplate, WithoutGenerationPrompt) {
    EXPECT_EQ(render({{"user", "a"}, {"assistant", "b"}}, false),
              "<｜begin▁of▁sentence｜><｜User｜>a<｜Assistant｜>b<｜end▁of▁sentence｜>");
}

TEST(ChatTemplate, SystemMessagesGoFirstJoined) {
    EXPECT_EQ(
        render({{"system", "S1"}, {"user", "a"}, {"assistant", "b"}, {"system", "S2"}, {"user", "c"}}),
        "<｜begin▁of▁sentence｜>S1\n\nS2<｜User｜>a<｜Assistant｜>b<｜end▁of▁sentence｜><｜User｜>c<｜Assistant｜>");
}

TEST(ChatTemplate, ToolCallsAndOutputs) {
    ChatMessage calls{"assistant", "", {{"function", "get", R"({"city":"P"})"}, {"function", "get2", "{}"}}};
    EXPECT_EQ(
        render({{"user", "weather?"},
                calls,
                {"tool", "sunny"},
                {"tool", "20C"},
                {"assistant", "It is sunny."},
                {"user", "thanks"}}),
        "<｜begin▁of▁sentence｜><｜User｜>weather?<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function"
        "<｜tool▁sep｜>get\n```json\n{\"city\":\"P\"}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function"
        "<｜tool▁sep｜>get2\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜>"
        "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>sunny<｜tool▁output▁end｜>\n<｜tool▁output▁begin｜>20C"
        "<｜tool▁output▁end｜><｜tool▁outputs▁end｜>It is sunny.<｜end▁of▁sentence｜><｜User｜>thanks<｜Assistant｜>");
}

TEST(ChatTemplate, OpenToolOutputsSuppressGenerationPrompt) {
    ChatMessage call{"assistant", "", {{"function", "f", "{}"}}};
    EXPECT_EQ(render({{"user", "q"}, call, {"tool", "out"}}),
              "<｜begin▁of▁sentence｜><｜User｜>q<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function"
              "<｜tool▁sep｜>f\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>out"
              "<｜tool▁output▁end｜><｜tool▁outputs▁end｜>");
}

TEST(ChatTemplate, UnknownRoleRejected) {
    auto out = apply_chat_template({{"user", "a"}, {"narrator", "b"}}, true);
    ASSERT_FALSE(out.ok());
    EXPECT_EQ(out.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(out.status().message().find("narrator"), std::string::npos);
}

TEST(ChatTemplate, EmptyConversation) { EXPECT_EQ(render({}), "<｜begin▁of▁sentence｜><｜Assistant｜>"); }

}  // namespace
}  // namespace deepshard::model
