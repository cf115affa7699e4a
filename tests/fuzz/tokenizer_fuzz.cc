// libFuzzer target: Tokenizer::encode / decode / IncrementalDecoder on arbitrary bytes, with the real
// DeepSeek-V3 tokenizer (testdata/tokenizer, or $DS_TOKENIZER_DIR). Aborts when:
//  * encode's verdict disagrees with UTF-8 validity (invalid input must be kInvalidArgument, never a
//    crash; valid input must encode);
//  * decode(encode(x)) != x for valid x (byte-level BPE is lossless);
//  * encode and encode_reference (PCRE2 regexes, heap BPE, no cache) disagree;
//  * decoding the input read as random int32 ids (unknown, negative and special ids included) is not
//    valid UTF-8, or streaming it through IncrementalDecoder gives a different text.
// Build (clang): clang++ -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -I<repo>
//   tests/fuzz/tokenizer_fuzz.cc model/tokenizer/{tokenizer,bpe,regex_split,utf8,chat_template}.cc
//   common/status.cc $(pkg-config --cflags --libs libpcre2-8) -DDS_FUZZ_SOURCE_DIR="\"<repo>\""
// Seeds: the "text" fields of testdata/tokenizer/cases.jsonl, one file each.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "model/tokenizer/tokenizer.h"

#ifndef DS_FUZZ_SOURCE_DIR
#define DS_FUZZ_SOURCE_DIR "."
#endif

namespace {

using deepshard::model::IncrementalDecoder;
using deepshard::model::Tokenizer;
namespace utf8 = deepshard::model::utf8;

const Tokenizer& tokenizer() {
    static const Tokenizer* tok = [] {
        const char* env = std::getenv("DS_TOKENIZER_DIR");
        const std::string dir = env != nullptr ? env : std::string(DS_FUZZ_SOURCE_DIR) + "/testdata/tokenizer";
        auto loaded = Tokenizer::load(dir);
        if (!loaded.ok()) {
            std::fprintf(stderr, "tokenizer_fuzz: cannot load %s: %s\n", dir.c_str(),
                         loaded.status().to_string().c_str());
            std::abort();
        }
        return new Tokenizer(std::move(loaded).value());
    }();
    return *tok;
}

[[noreturn]] void fail(const char* what) {
    std::fprintf(stderr, "tokenizer_fuzz: %s\n", what);
    std::abort();
}

}  // namespace

// Loading the real tokenizer takes seconds under ASan: done before libFuzzer's per-input timer.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
    (void)tokenizer();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const Tokenizer& tok = tokenizer();
    const std::string_view text(reinterpret_cast<const char*>(data), size);

    auto ids = tok.encode(text, /*add_bos=*/(size & 1) != 0);
    const bool valid = !utf8::first_invalid_offset(text).has_value();
    if (ids.ok() != valid) {
        fail(valid ? "valid UTF-8 rejected" : "invalid UTF-8 accepted");
    }
    if (!ids.ok() && ids.status().code() != deepshard::StatusCode::kInvalidArgument) {
        fail("invalid UTF-8 gave an error other than kInvalidArgument");
    }
    if (ids.ok()) {
        std::vector<int32_t> plain(*ids);
        if ((size & 1) != 0) {
            if (plain.empty() || plain.front() != tok.bos_id()) {
                fail("BOS missing");
            }
            plain.erase(plain.begin());
        }
        if (tok.decode(plain) != text) {
            fail("decode(encode(x)) != x");
        }
        auto reference = tok.encode_reference(text, /*add_bos=*/false);
        if (!reference.ok() || *reference != plain) {
            fail("encode != encode_reference");
        }
    }

    // The same bytes as ids: any int32, mostly near the vocabulary.
    std::vector<int32_t> raw_ids(size / 4);
    if (!raw_ids.empty()) {
        std::memcpy(raw_ids.data(), data, raw_ids.size() * 4);
    }
    for (int32_t& id : raw_ids) {
        if ((id & 0x40000000) == 0) {
            id = static_cast<int32_t>(static_cast<uint32_t>(id) % 130000u);
        }
    }
    for (bool skip_special : {false, true}) {
        const std::string decoded = tok.decode(raw_ids, skip_special);
        if (utf8::first_invalid_offset(decoded).has_value()) {
            fail("decode produced invalid UTF-8");
        }
        IncrementalDecoder stream(tok, skip_special);
        std::string streamed;
        for (int32_t id : raw_ids) {
            streamed += stream.feed(id);
            if (stream.pending_bytes() > 3) {
                fail("incremental decoder holds back more than 3 bytes");
            }
        }
        streamed += stream.flush();
        if (streamed != decoded) {
            fail("incremental decode != decode");
        }
    }
    return 0;
}
