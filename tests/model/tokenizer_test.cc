// Tokenizer against the real DeepSeek-V3 files: every line of testdata/tokenizer/cases.jsonl (ids
// produced by HF tokenizers) must match exactly; plus special tokens, UTF-8 handling, streaming
// decode, the fast encode path against the reference path, and the `deepshard tokenize` command
// end to end.
#include "model/tokenizer/tokenizer.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "model/tokenizer/chat_template.h"
#include "model/tokenizer/regex_split.h"

namespace deepshard::model {
namespace {

using json = nlohmann::json;

std::string source_dir() {
    const char* dir = std::getenv("DS_SOURCE_DIR");
    return dir != nullptr ? dir : DS_TEST_FALLBACK_SOURCE_DIR;
}

std::string data_dir() { return source_dir() + "/testdata/tokenizer"; }

struct Case {
    std::string text;
    std::vector<int32_t> ids;
    bool roundtrip;
};

std::vector<Case> load_cases() {
    std::ifstream in(data_dir() + "/cases.jsonl");
    std::vector<Case> cases;
    std::string line;
    while (std::getline(in, line)) {
        if (line.empty()) {
            continue;
        }
        json j = json::parse(line);
        cases.push_back(
            {j["text"].get<std::string>(), j["ids"].get<std::vector<int32_t>>(), j["roundtrip"].get<bool>()});
    }
    return cases;
}

// Random strings over the characters where the hand-written pre-tokenizer could diverge from the
// PCRE2 regexes: every Unicode class the patterns mention, the CJK range edges, all whitespace
// kinds, marks after spaces/digits, ASCII punctuation before letters, added tokens, runs of one
// element (quantifiers, long pieces), and random code points from the whole range.
std::string random_tricky_text(std::mt19937& rng) {
    // clang-format off
    const std::vector<std::string> palette = {
        "a", "Z", "q", "é", "ß", "Ж", "λ", "ا", "한", "ก",                     // letters
        "0", "7", "٣", "²", "Ⅻ", "〇", "½",                                       // \p{N} (Nd, No, Nl)
        ".", ",", "'", "\"", "-", "_", "(", ")", "[", "\\", "{", "~", "`", "@",  // ASCII punctuation
        "$", "+", "<", "=", "^", "|", "€", "±", "©", "😀", "👍🏽",                   // symbols
        "。", "、", "「", "—", "¿", "«",                                          // non-ASCII punctuation
        " ", " ", " ", "\t", "\n", "\r", "\r\n", "\v", "\f", "\xc2\x85",          // whitespace (NEL too)
        "\xc2\xa0", "\xe3\x80\x80", "\xe2\x80\xa8", "\xe2\x80\x89",                 // NBSP, ideographic, LS, thin
        "\xcc\x81", "\xcc\x80", "\xef\xb8\x8f", "\xe2\x80\x8d",                       // marks, VS16, ZWJ
        "中", "文", "一", "龥", "\xe9\xbe\xa6", "\xe4\xb7\xbf",                       // CJK range and just outside
        "ひ", "ゟ", "\xe3\x82\x99", "\xe3\x82\x9b", "゠", "カ", "・", "ー", "ヿ",       // kana incl. M/Sk/Pd/Po/Lm
        "\x01", "\x7f", "\xee\x80\x80", "\xf4\x8f\xbf\xbf",                          // control, private use, U+10FFFF
        "<｜User｜>", "<|EOT|>", "<｜end▁of▁sentence｜>", "<｜", "|>",             // added tokens and near misses
        "hello", " world", "the", "ing", "12345", "中文测试",                     // common pieces
    };
    // clang-format on
    auto random_codepoint = [](std::mt19937& r) {
        uint32_t cp;
        do {
            cp = r() % 3 == 0 ? r() % 0x110000 : r() % 0x3100;
        } while (cp >= 0xD800 && cp <= 0xDFFF);
        std::string out;
        if (cp < 0x80) {
            out += static_cast<char>(cp);
        } else if (cp < 0x800) {
            out += static_cast<char>(0xC0 | (cp >> 6));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            out += static_cast<char>(0xE0 | (cp >> 12));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        } else {
            out += static_cast<char>(0xF0 | (cp >> 18));
            out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        }
        return out;
    };
    std::string text;
    const int parts = static_cast<int>(rng() % 24);
    for (int k = 0; k < parts; ++k) {
        const uint32_t pick = rng() % 10;
        if (pick == 0) {
            text += random_codepoint(rng);
        } else if (pick == 1) {
            const std::string& e = palette[rng() % palette.size()];
            for (uint32_t r = rng() % 40; r > 0; --r) {
                text += e;
            }
        } else {
            text += palette[rng() % palette.size()];
        }
    }
    return text;
}

class TokenizerTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        auto tok = Tokenizer::load(data_dir());
        ASSERT_TRUE(tok.ok()) << tok.status().to_string();
        tokenizer_ = new Tokenizer(std::move(tok).value());
    }
    static void TearDownTestSuite() {
        delete tokenizer_;
        tokenizer_ = nullptr;
    }
    static const Tokenizer& tok() { return *tokenizer_; }

    std::vector<int32_t> encode(std::string_view text, bool add_bos = false) {
        auto ids = tok().encode(text, add_bos);
        EXPECT_TRUE(ids.ok()) << ids.status().to_string();
        return ids.ok() ? *ids : std::vector<int32_t>{};
    }

    // Id of the token that is exactly one raw byte.
    static int32_t byte_token(unsigned char b) {
        for (int32_t id = 0; id < tok().vocab_size(); ++id) {
            if (tok().token_bytes(id) == std::string(1, static_cast<char>(b))) {
                return id;
            }
        }
        return -1;
    }

    static Tokenizer* tokenizer_;
};

Tokenizer* TokenizerTest::tokenizer_ = nullptr;

TEST_F(TokenizerTest, Metadata) {
    EXPECT_EQ(tok().bos_id(), 0);
    EXPECT_EQ(tok().eos_id(), 1);
    EXPECT_EQ(tok().vocab_size(), 128815);
    EXPECT_TRUE(tok().add_bos_token());
    EXPECT_EQ(tok().token_id("<｜User｜>"), 128803);
    EXPECT_EQ(tok().token_id("<|EOT|>"), 128805);
    EXPECT_EQ(tok().token_id("Ġthe").has_value(), true);
    EXPECT_FALSE(tok().token_id("definitely not a token").has_value());
    EXPECT_TRUE(tok().is_special(0));
    EXPECT_TRUE(tok().is_special(128000));
    EXPECT_TRUE(tok().is_special(128805));
    EXPECT_FALSE(tok().is_special(128803));  // <｜User｜> is an added but non-special token
    EXPECT_FALSE(tok().is_special(100));
    EXPECT_FALSE(tok().is_special(-1));
    EXPECT_FALSE(tok().is_special(200000));
}

TEST_F(TokenizerTest, AllCasesExact) {
    const std::vector<Case> cases = load_cases();
    ASSERT_GE(cases.size(), 100u);
    int mismatches = 0;
    for (size_t i = 0; i < cases.size(); ++i) {
        const std::vector<int32_t> ids = encode(cases[i].text);
        if (ids != cases[i].ids) {
            ++mismatches;
            ADD_FAILURE() << "case " << i << " text=" << json(cases[i].text).dump() << "\n got " << json(ids).dump()
                          << "\nwant " << json(cases[i].ids).dump();
        }
    }
    EXPECT_EQ(mismatches, 0);
}

TEST_F(TokenizerTest, Roundtrip) {
    for (const Case& c : load_cases()) {
        if (c.roundtrip) {
            EXPECT_EQ(tok().decode(c.ids), c.text);
            EXPECT_EQ(tok().decode(encode(c.text)), c.text);
        }
    }
}

TEST_F(TokenizerTest, BosPrepended) {
    const std::vector<int32_t> plain = encode("Hello world");
    std::vector<int32_t> with_bos = encode("Hello world", true);
    ASSERT_EQ(with_bos.size(), plain.size() + 1);
    EXPECT_EQ(with_bos[0], 0);
    EXPECT_EQ(std::vector<int32_t>(with_bos.begin() + 1, with_bos.end()), plain);
    EXPECT_EQ(encode("", true), std::vector<int32_t>{0});
    EXPECT_TRUE(encode("").empty());
}

TEST_F(TokenizerTest, SpecialTokensInline) {
    const std::vector<int32_t> ids = encode("<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜>");
    ASSERT_GE(ids.size(), 4u);
    EXPECT_EQ(ids.front(), 0);
    EXPECT_EQ(ids[1], 128803);
    EXPECT_EQ(ids.back(), 128804);
    EXPECT_EQ(tok().decode(ids), "<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜>");
    EXPECT_EQ(tok().decode(ids, /*skip_special=*/true), "<｜User｜>hi<｜Assistant｜>");
    // Adjacent to text without spaces, and a near-miss that must stay plain text.
    const std::vector<int32_t> eos = encode("a<｜end▁of▁sentence｜>b");
    EXPECT_EQ(std::count(eos.begin(), eos.end(), 1), 1);
    const std::vector<int32_t> near = encode("<｜end▁of▁sentence");
    EXPECT_EQ(std::count(near.begin(), near.end(), 1), 0);
    EXPECT_EQ(tok().decode(near), "<｜end▁of▁sentence");
}

TEST_F(TokenizerTest, InvalidUtf8Rejected) {
    struct Bad {
        std::string text;
        size_t offset;
    };
    const std::vector<Bad> bad = {
        {"ab\xff", 2},            // never valid
        {"x\xc3", 1},             // truncated 2-byte sequence
        {"\xc0\xaf", 0},          // overlong
        {"ok \xed\xa0\x80", 3},   // surrogate
        {"\xf4\x90\x80\x80", 0},  // above U+10FFFF
        {"日本\xe8\xaa", 6},      // truncated 3-byte sequence
    };
    for (const Bad& b : bad) {
        auto ids = tok().encode(b.text, false);
        ASSERT_FALSE(ids.ok()) << "expected a rejection at offset " << b.offset;
        EXPECT_EQ(ids.status().code(), StatusCode::kInvalidArgument);
        EXPECT_NE(ids.status().message().find("offset " + std::to_string(b.offset)), std::string::npos)
            << ids.status().message();
    }
}

TEST_F(TokenizerTest, DecodeIsLossyLikeHf) {
    const int32_t ff = byte_token(0xFF);
    const int32_t e4 = byte_token(0xE4);
    const int32_t a = byte_token('a');
    ASSERT_GE(ff, 0);
    ASSERT_GE(e4, 0);
    EXPECT_EQ(tok().decode({a, ff, a}),
              "a\xEF\xBF\xBD"
              "a");
    EXPECT_EQ(tok().decode({a, e4}), "a\xEF\xBF\xBD");
    EXPECT_EQ(tok().decode({a, 999999, -5, a}), "aa");  // unknown ids are dropped
}

TEST_F(TokenizerTest, IncrementalDecoderNeverSplitsCharacters) {
    // Byte by byte: a 4-byte emoji and a 3-byte CJK character spelled with single-byte tokens.
    const std::string text = "😀中";
    std::vector<int32_t> ids;
    for (unsigned char c : text) {
        ids.push_back(byte_token(c));
        ASSERT_GE(ids.back(), 0);
    }
    IncrementalDecoder dec(tok());
    std::vector<std::string> outs;
    for (int32_t id : ids) {
        outs.push_back(dec.feed(id));
    }
    EXPECT_EQ(outs, (std::vector<std::string>{"", "", "", "😀", "", "", "中"}));
    EXPECT_EQ(dec.flush(), "");

    // Real tokenization of emoji/CJK text: every chunk is valid UTF-8 and the chunks add up.
    const std::string mixed = "emoji: 😀👍🏽👨‍👩‍👧 🇨🇳 中文テキスト, ok";
    IncrementalDecoder dec2(tok());
    std::string all;
    for (int32_t id : encode(mixed)) {
        std::string chunk = dec2.feed(id);
        EXPECT_FALSE(utf8::first_invalid_offset(chunk).has_value());
        all += chunk;
    }
    all += dec2.flush();
    EXPECT_EQ(all, mixed);
}

TEST_F(TokenizerTest, IncrementalDecoderMatchesDecodeOnRandomIds) {
    std::mt19937 rng(1234);
    std::uniform_int_distribution<int32_t> any_id(0, tok().vocab_size() - 1);
    for (int round = 0; round < 200; ++round) {
        std::vector<int32_t> ids;
        for (int i = 0; i < 20; ++i) {
            // Mix in single-byte tokens so partial and broken sequences are common.
            ids.push_back(i % 3 == 0 ? byte_token(static_cast<unsigned char>(rng() & 0xFF)) : any_id(rng));
        }
        IncrementalDecoder dec(tok(), /*skip_special=*/round % 2 == 0);
        std::string all;
        for (int32_t id : ids) {
            std::string chunk = dec.feed(id);
            EXPECT_FALSE(utf8::first_invalid_offset(chunk).has_value());
            EXPECT_LE(dec.pending_bytes(), 3u);
            all += chunk;
        }
        all += dec.flush();
        EXPECT_EQ(all, tok().decode(ids, round % 2 == 0));
    }
}

// Text decoded from random vocabulary ids: mostly pieces the per-thread cache has never seen, long
// letter runs (the heap merge path), and every script in the vocabulary. Lossless, and identical to
// the reference path (PCRE2 regexes, heap BPE, no cache). (Speed is measured by
// bench/model/tokenizer_bench, not asserted here.)
TEST_F(TokenizerTest, CacheHostileTextMatchesReference) {
    std::mt19937 rng(7);
    std::uniform_int_distribution<int32_t> any_id(0, 127999);
    std::vector<int32_t> random_ids;
    for (int i = 0; i < 40000; ++i) {
        random_ids.push_back(any_id(rng));
    }
    const std::string hostile = tok().decode(random_ids, /*skip_special=*/true);
    const std::vector<int32_t> ids = encode(hostile);
    EXPECT_EQ(tok().decode(ids), hostile);
    auto reference = tok().encode_reference(hostile, false);
    ASSERT_TRUE(reference.ok());
    EXPECT_TRUE(ids == *reference) << "fast and reference encodings differ";
}

TEST_F(TokenizerTest, FastPretokenizerIsUsedForDeepSeek) { EXPECT_TRUE(tok().has_fast_pretokenizer()); }

TEST_F(TokenizerTest, FastPathMatchesReferenceOnRandomText) {
    std::mt19937 rng(42);
    int mismatches = 0;
    for (int round = 0; round < 3000 && mismatches < 5; ++round) {
        const std::string text = random_tricky_text(rng);
        auto fast = tok().encode(text, false);
        auto reference = tok().encode_reference(text, false);
        ASSERT_TRUE(fast.ok()) << fast.status().to_string();
        ASSERT_TRUE(reference.ok()) << reference.status().to_string();
        if (*fast != *reference) {
            ++mismatches;
            ADD_FAILURE() << "text=" << json(text).dump() << "\n fast " << json(*fast).dump() << "\n  ref "
                          << json(*reference).dump();
        }
        EXPECT_EQ(tok().decode(*fast), text);
    }
    EXPECT_EQ(mismatches, 0);
}

// Stricter than comparing ids: the hand-written splitter must cut exactly the pieces that the three
// PCRE2 regexes (read from tokenizer.json) cut, applied in turn as nested Isolated splits.
TEST(DeepSeekSplitter, SamePiecesAsPcre2) {
    std::ifstream in(data_dir() + "/tokenizer.json");
    const json pre = json::parse(in)["pre_tokenizer"]["pretokenizers"];
    std::vector<std::string> patterns;
    std::vector<internal::Regex> regexes;
    for (const json& step : pre) {
        if (step["type"] == "Split") {
            patterns.push_back(step["pattern"]["Regex"].get<std::string>());
            auto regex = internal::Regex::compile(patterns.back(), false);
            ASSERT_TRUE(regex.ok());
            regexes.push_back(*regex);
        }
    }
    auto splitter = internal::DeepSeekSplitter::for_patterns(patterns);
    ASSERT_NE(splitter, nullptr);
    patterns.back() += "|x";
    EXPECT_EQ(internal::DeepSeekSplitter::for_patterns(patterns), nullptr) << "must only accept the exact patterns";

    internal::Regex::MatchScratch scratch;
    std::function<void(size_t, std::string_view, std::vector<std::string>*)> nested =
        [&](size_t level, std::string_view text, std::vector<std::string>* out) {
            if (level == regexes.size()) {
                out->emplace_back(text);
                return;
            }
            regexes[level].split_isolated(text, scratch, [&](std::string_view p) { nested(level + 1, p, out); });
        };
    std::mt19937 rng(99);
    int mismatches = 0;
    for (int round = 0; round < 5000 && mismatches < 5; ++round) {
        const std::string text = random_tricky_text(rng);
        std::vector<std::string> want;
        nested(0, text, &want);
        std::vector<std::string> got;
        splitter->split(text, [&](std::string_view p) { got.emplace_back(p); });
        if (got != want) {
            ++mismatches;
            ADD_FAILURE() << "text=" << json(text).dump() << "\n got " << json(got).dump() << "\nwant "
                          << json(want).dump();
        }
    }
    EXPECT_EQ(mismatches, 0);
}

// Long pieces bypass the cache and use the heap merge; the same piece many times hits the cache.
// All must agree with the reference.
TEST_F(TokenizerTest, LongAndRepeatedPiecesMatchReference) {
    std::mt19937 rng(5);
    for (size_t len : {2u, 21u, 22u, 23u, 63u, 64u, 65u, 300u, 5000u}) {
        std::string word;
        for (size_t i = 0; i < len; ++i) {
            word += static_cast<char>('a' + rng() % 26);
        }
        for (int rep = 0; rep < 3; ++rep) {
            auto fast = tok().encode(word, false);
            auto reference = tok().encode_reference(word, false);
            ASSERT_TRUE(fast.ok() && reference.ok());
            EXPECT_EQ(*fast, *reference) << "length " << len << " repetition " << rep;
        }
    }
    std::string cjk;
    for (int i = 0; i < 200; ++i) {
        cjk += "的一是不了人我在有他这为之大来以个中上们";
    }
    auto fast = tok().encode(cjk, false);
    auto reference = tok().encode_reference(cjk, false);
    ASSERT_TRUE(fast.ok() && reference.ok());
    EXPECT_EQ(*fast, *reference);
}

// Two tokenizers with different merges used alternately on one thread: the per-thread piece cache
// must never hand one tokenizer the other's result.
TEST_F(TokenizerTest, PieceCacheIsPerTokenizer) {
    std::ifstream in(data_dir() + "/tokenizer.json");
    json j = json::parse(in);
    json& merges = j["model"]["merges"];
    merges.erase(merges.begin() + 2000, merges.end());  // a much coarser BPE over the same vocab
    const std::string path = testing::TempDir() + "/tokenizer_few_merges.json";
    std::ofstream(path) << j.dump();
    auto coarse = Tokenizer::load(path);
    ASSERT_TRUE(coarse.ok()) << coarse.status().to_string();
    const std::string text = "Internationalization of tokenizers, 中文分词 and code: std::unordered_map<int>";
    for (int round = 0; round < 3; ++round) {
        const std::vector<int32_t> fine_ids = encode(text);
        auto coarse_ids = coarse->encode(text, false);
        ASSERT_TRUE(coarse_ids.ok());
        EXPECT_EQ(fine_ids, *tok().encode_reference(text, false));
        EXPECT_EQ(*coarse_ids, *coarse->encode_reference(text, false));
        EXPECT_GT(coarse_ids->size(), fine_ids.size());
        EXPECT_EQ(coarse->decode(*coarse_ids), text);
    }
}

TEST_F(TokenizerTest, ConcurrentEncodeIsConsistent) {
    // encode() is const and shared across request threads in the coordinator; the piece cache is the
    // only mutable state.
    const std::vector<Case> cases = load_cases();
    std::vector<std::thread> threads;
    std::atomic<int> mismatches{0};
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&, t] {
            for (int round = 0; round < 20; ++round) {
                for (size_t i = static_cast<size_t>(t); i < cases.size(); i += 2) {
                    auto ids = tok().encode(cases[i].text, false);
                    if (!ids.ok() || *ids != cases[i].ids) {
                        ++mismatches;
                    }
                }
            }
        });
    }
    for (std::thread& th : threads) {
        th.join();
    }
    EXPECT_EQ(mismatches.load(), 0);
}

TEST(TokenizerLoad, MissingAndMalformedFiles) {
    auto missing = Tokenizer::load("/nonexistent/dir");
    ASSERT_FALSE(missing.ok());
    EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);

    const std::string bad = testing::TempDir() + "/bad_tokenizer.json";
    std::ofstream(bad) << "{\"model\": {\"type\": \"BPE\", \"vocab\": 5";
    auto malformed = Tokenizer::load(bad);
    ASSERT_FALSE(malformed.ok());
    EXPECT_EQ(malformed.status().code(), StatusCode::kDataLoss);

    // The vocab is read while parsing (not through the DOM); its defects are still named.
    const std::string bad_vocab = testing::TempDir() + "/bad_vocab_tokenizer.json";
    for (const char* vocab : {R"({"a": "x"})", R"({"a": 1, "b": {"c": 2}})", R"({"a": [1]})"}) {
        std::ofstream(bad_vocab) << R"({"model": {"type": "BPE", "merges": [], "vocab": )" << vocab << "}}";
        auto loaded = Tokenizer::load(bad_vocab);
        ASSERT_FALSE(loaded.ok()) << vocab;
        EXPECT_EQ(loaded.status().code(), StatusCode::kInvalidArgument) << loaded.status().to_string();
        EXPECT_NE(loaded.status().message().find("not an integer"), std::string::npos) << loaded.status().to_string();
    }
    std::ofstream(bad_vocab) << R"({"model": {"type": "BPE", "merges": []}})";
    auto no_vocab = Tokenizer::load(bad_vocab);
    ASSERT_FALSE(no_vocab.ok());
    EXPECT_NE(no_vocab.status().message().find("model.vocab is missing"), std::string::npos)
        << no_vocab.status().to_string();
}

// A minimal byte-level BPE tokenizer.json: the 256 byte tokens (ids 0..255), no merges, and the
// given added tokens.
std::string byte_level_json(const std::string& added_tokens, const std::string& extra_vocab = "") {
    nlohmann::json vocab = nlohmann::json::object();
    int id = 0;
    uint32_t extra = 0;  // GPT-2's byte map: unprintable bytes go to U+0100.. in order
    for (int b = 0; b < 256; ++b) {
        const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        const uint32_t cp = printable ? static_cast<uint32_t>(b) : 256u + extra++;
        std::string u;
        if (cp < 0x80) {
            u.push_back(static_cast<char>(cp));
        } else {
            u.push_back(static_cast<char>(0xC0 | (cp >> 6)));
            u.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
        }
        vocab[u] = id++;
    }
    std::string v = vocab.dump();
    if (!extra_vocab.empty()) v = v.substr(0, v.size() - 1) + "," + extra_vocab + "}";
    return R"({"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false},
               "model": {"type": "BPE", "merges": [], "vocab": )" +
           v + R"(}, "added_tokens": )" + added_tokens + "}";
}

const char* kBosEos = R"({"bos_token": "<s>", "eos_token": "</s>"})";

// The tokenizer files are validated like the checkpoint: added tokens with a duplicate or
// out-of-range id, a repeated content, an id the vocabulary uses for other text, and vocabulary
// ids out of range or listed twice are refused at load with a message naming the entry. (An
// added token repeating another's content with a smaller id used to leave the decode tables too
// small, and the load wrote past their end.)
TEST(TokenizerLoad, AddedTokensAndIdsAreValidated) {
    auto parse = [](const std::string& added, const std::string& extra_vocab = "") {
        return Tokenizer::parse(byte_level_json(added, extra_vocab), std::string(kBosEos));
    };
    const std::string good = R"([{"id": 256, "content": "<s>", "special": true},
                                 {"id": 257, "content": "</s>", "special": true}])";
    auto ok = parse(good);
    ASSERT_TRUE(ok.ok()) << ok.status().to_string();
    EXPECT_EQ(ok->bos_id(), 256);
    EXPECT_EQ(ok->vocab_size(), 258);
    EXPECT_TRUE(ok->is_special(257));
    EXPECT_EQ(ok->decode({256, 'h', 'i'}, /*skip_special=*/true), "hi");

    struct Case {
        const char* added;
        const char* needle;
    };
    const Case cases[] = {
        // The same content twice, the first with the largest id: the tables were sized without it and
        // the load wrote id 900000's entry past their end.
        {R"([{"id": 256, "content": "<s>"}, {"id": 257, "content": "</s>"}, {"id": 900000, "content": "<x>"},
            {"id": 300, "content": "<x>"}])",
         "added_tokens[3]: the content '<x>' is already added_tokens[2]'s"},
        {R"([{"id": 256, "content": "<s>"}, {"id": 257, "content": "</s>"}, {"id": 900000, "content": "<a>"},
            {"id": 900000, "content": "<b>"}])",
         "added_tokens[3]: id 900000 is already added_tokens[2]'s"},
        {R"([{"id": 256, "content": "<s>"}, {"id": 257, "content": "</s>"}, {"id": 300, "content": "<s>"}])",
         "added_tokens[2]: the content '<s>' is already added_tokens[0]'s"},
        {R"([{"id": 256, "content": "<s>"}, {"id": 257, "content": "</s>"}, {"id": 3000000, "content": "<x>"}])",
         "added_tokens[2].id: 3000000 is out of range"},
        {R"([{"id": -1, "content": "<s>"}])", "added_tokens[0].id: -1 is out of range"},
        {R"([{"id": 256, "content": "<s>"}, {"id": 257, "content": "</s>"}, {"id": 65, "content": "<x>"}])",
         "added_tokens[2]: id 65 ('<x>') is the vocabulary's id for 'A'"},
        {R"([{"id": "256", "content": "<s>"}])", "added_tokens[0].id: expected an integer"},
        {R"([{"id": 256, "content": 5}])", "added_tokens[0].content: expected a non-empty string"},
        {R"([{"id": 256, "content": ""}])", "added_tokens[0].content: expected a non-empty string"},
        {R"([7])", "added_tokens[0]: expected an object"},
        {R"({"id": 256})", "added_tokens: expected an array"},
    };
    for (const Case& c : cases) {
        auto t = parse(c.added);
        ASSERT_FALSE(t.ok()) << c.added;
        EXPECT_EQ(t.status().code(), StatusCode::kInvalidArgument) << t.status().to_string();
        EXPECT_NE(t.status().message().find(c.needle), std::string::npos) << t.status().to_string();
    }
    // Vocabulary entries: an id out of range, an id given to two pieces, a piece listed twice.
    auto far = parse(good, R"("zz": 5000000)");
    ASSERT_FALSE(far.ok());
    EXPECT_NE(far.status().message().find("id 5000000 of 'zz' is out of range"), std::string::npos)
        << far.status().to_string();
    auto twice = parse(good, R"("zz": 65)");
    ASSERT_FALSE(twice.ok());
    EXPECT_NE(twice.status().message().find("gives id 65 to both"), std::string::npos) << twice.status().to_string();
    auto piece_twice = parse(good, R"("A": 300)");
    ASSERT_FALSE(piece_twice.ok());
    EXPECT_NE(piece_twice.status().message().find("lists the piece 'A' twice"), std::string::npos)
        << piece_twice.status().to_string();
    // Structure: a file nesting thousands of levels is refused, not a stack overflow.
    const std::string deep = R"({"normalizer": )" + std::string(100000, '[') + std::string(100000, ']') + "}";
    auto deep_t = Tokenizer::parse(deep, std::nullopt);
    ASSERT_FALSE(deep_t.ok());
    EXPECT_NE(deep_t.status().message().find("nests deeper"), std::string::npos) << deep_t.status().to_string();
}

TEST(TokenizerLoad, LoadsFromFilePathToo) {
    auto tok = Tokenizer::load(data_dir() + "/tokenizer.json");
    ASSERT_TRUE(tok.ok()) << tok.status().to_string();
    EXPECT_EQ(tok->bos_id(), 0);
}

// ---- `deepshard tokenize` end to end ----

std::string binary() {
    const char* dir = std::getenv("DS_BINARY_DIR");
    return std::string(dir != nullptr ? dir : DS_TEST_FALLBACK_BINARY_DIR) + "/bin/deepshard";
}

// Runs `deepshard tokenize <args>` with `input` on stdin; returns stdout and sets *rc.
std::string run_tokenize(const std::string& args, const std::string& input, int* rc) {
    // One file per process: ctest runs these tests in parallel processes, and a shared name let one
    // test read another's input.
    const std::string in_path = testing::TempDir() + "/tokenize_stdin_" + std::to_string(getpid()) + ".txt";
    { std::ofstream(in_path, std::ios::binary) << input; }
    const std::string cmd = binary() + " tokenize --model " + data_dir() + " " + args + " < " + in_path;
    FILE* pipe = popen(cmd.c_str(), "r");
    if (pipe == nullptr) {
        *rc = -1;
        return {};
    }
    std::string out;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) {
        out.append(buf, n);
    }
    *rc = pclose(pipe);
    return out;
}

class TokenizeCommandTest : public TokenizerTest {
protected:
    void SetUp() override {
        if (!std::filesystem::exists(binary())) {
            GTEST_SKIP() << binary() << " not built";
        }
    }
};

TEST_F(TokenizeCommandTest, EncodesWithBos) {
    int rc = 0;
    const std::string text = "Hello 世界 123456\n";
    const std::string out = run_tokenize("", text, &rc);
    ASSERT_EQ(rc, 0) << out;
    std::vector<int32_t> want = encode(text, true);
    EXPECT_EQ(json::parse(out).get<std::vector<int32_t>>(), want);

    const std::string no_bos = run_tokenize("--no-bos", text, &rc);
    ASSERT_EQ(rc, 0);
    EXPECT_EQ(json::parse(no_bos).get<std::vector<int32_t>>(), encode(text, false));
}

TEST_F(TokenizeCommandTest, Decodes) {
    int rc = 0;
    const std::string text = "Hello 世界 😀";
    const std::string out = run_tokenize("--decode", json(encode(text, true)).dump(), &rc);
    ASSERT_EQ(rc, 0) << out;
    EXPECT_EQ(out, "<｜begin▁of▁sentence｜>" + text);
}

TEST_F(TokenizeCommandTest, ChatPlainTextAndJson) {
    int rc = 0;
    const std::string out = run_tokenize("--chat", "What is 2+2?", &rc);
    ASSERT_EQ(rc, 0) << out;
    EXPECT_EQ(json::parse(out).get<std::vector<int32_t>>(),
              encode("<｜begin▁of▁sentence｜><｜User｜>What is 2+2?<｜Assistant｜>", false));

    const std::string conv = R"([{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}])";
    const std::string out2 = run_tokenize("--chat", conv, &rc);
    ASSERT_EQ(rc, 0) << out2;
    EXPECT_EQ(json::parse(out2).get<std::vector<int32_t>>(),
              encode("<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi<｜Assistant｜>", false));
}

TEST_F(TokenizeCommandTest, RejectsInvalidUtf8) {
    int rc = 0;
    run_tokenize("", "abc\xff", &rc);
    EXPECT_NE(rc, 0);
}

}  // namespace
}  // namespace deepshard::model
