// libFuzzer target: loading tokenizer files (Tokenizer::parse, what Tokenizer::load runs on a model
// directory's tokenizer.json and tokenizer_config.json). The input is tokenizer.json, optionally
// followed by "\n@@config@@\n" and tokenizer_config.json. Whatever loads must then encode and
// decode without crashing: every id it produces is below vocab_size(), BOS/EOS are in range, and
// the incremental decoder agrees with decode(). Any sanitizer report (the load used to write past
// its tables for repeated added tokens) or uncaught exception is a finding.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "model/tokenizer/tokenizer.h"

namespace {

[[noreturn]] void fail(const std::string& what) {
    std::fprintf(stderr, "fuzz_tokenizer_json: %s\n", what.c_str());
    std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using deepshard::model::IncrementalDecoder;
    using deepshard::model::Tokenizer;
    const std::string_view in(reinterpret_cast<const char*>(data), size);
    constexpr std::string_view kSep = "\n@@config@@\n";
    std::string tokenizer_json(in);
    std::optional<std::string> config;
    if (const auto at = in.find(kSep); at != std::string_view::npos) {
        tokenizer_json = std::string(in.substr(0, at));
        config = std::string(in.substr(at + kSep.size()));
    }
    auto tok = Tokenizer::parse(std::move(tokenizer_json), config);
    if (!tok.ok()) return 0;
    const int32_t vocab = tok->vocab_size();
    if (tok->bos_id() < 0 || tok->bos_id() >= vocab || tok->eos_id() < 0 || tok->eos_id() >= vocab) {
        fail("BOS/EOS outside the vocabulary");
    }
    for (std::string_view text : {std::string_view("Hello, world! 123  \n\t"), std::string_view("中文 café ✓"),
                                  std::string_view("<s></s><|x|>aaaa"), in.substr(0, std::min<size_t>(in.size(), 64))}) {
        auto ids = tok->encode(text, true);
        if (!ids.ok()) continue;  // invalid UTF-8 (the last sample)
        for (int32_t id : *ids) {
            if (id < 0 || id >= vocab) fail("encode produced id " + std::to_string(id) + " >= " + std::to_string(vocab));
        }
        const std::string decoded = tok->decode(*ids, false);
        IncrementalDecoder stream(*tok, false);
        std::string streamed;
        for (int32_t id : *ids) streamed += stream.feed(id);
        streamed += stream.flush();
        if (streamed != decoded) fail("incremental decode != decode");
    }
    return 0;
}
