// PCRE2 wrapper for the tokenizer's Split pre-tokenizers. The header keeps pcre2.h out of every
// includer, hence the void* handles here.
#include "model/tokenizer/regex_split.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <map>

namespace deepshard::model::internal {

namespace {
// Our patterns have no capture groups; one pair holds the whole match (rc 0 from pcre2_match would
// only mean "ovector too small", still a match).
constexpr uint32_t kOvectorPairs = 4;
}  // namespace

void Regex::CodeDeleter::operator()(void* code) const noexcept { pcre2_code_free(static_cast<pcre2_code*>(code)); }

StatusOr<Regex> Regex::compile(const std::string& pattern, bool literal) {
    int error_code = 0;
    PCRE2_SIZE error_offset = 0;
    uint32_t options = PCRE2_UTF | PCRE2_UCP;
    if (literal) {
        options |= PCRE2_LITERAL;
    }
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options, &error_code,
                                     &error_offset, nullptr);
    if (code == nullptr) {
        PCRE2_UCHAR buf[256];
        pcre2_get_error_message(error_code, buf, sizeof(buf));
        return invalid_argument("cannot compile pre-tokenizer regex at offset " + std::to_string(error_offset) + ": " +
                                reinterpret_cast<const char*>(buf));
    }
    // JIT is an optimisation only (5-10x on these patterns); the interpreter gives the same matches.
    (void)pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
    return Regex(std::shared_ptr<void>(code, CodeDeleter()));
}

Regex::MatchScratch::MatchScratch() : data_(pcre2_match_data_create(kOvectorPairs, nullptr)) {
    DS_CHECK(data_ != nullptr) << "out of memory creating PCRE2 match data";
}

Regex::MatchScratch::~MatchScratch() { pcre2_match_data_free(static_cast<pcre2_match_data*>(data_)); }

bool Regex::find(
    std::string_view subject, size_t start, MatchScratch& scratch, size_t* match_begin, size_t* match_end) const {
    auto* md = static_cast<pcre2_match_data*>(scratch.get());
    int rc = pcre2_match(static_cast<const pcre2_code*>(code_.get()), reinterpret_cast<PCRE2_SPTR>(subject.data()),
                         subject.size(), start, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc < 0 && rc != PCRE2_ERROR_NOMATCH) {
        // The JIT's fixed 32 KiB stack can run out on pathological input; the interpreter keeps its
        // backtracking state on the heap, so retry there before giving up.
        rc = pcre2_match(static_cast<const pcre2_code*>(code_.get()), reinterpret_cast<PCRE2_SPTR>(subject.data()),
                         subject.size(), start, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, nullptr);
    }
    if (rc < 0) {
        // No match (the normal end). A remaining resource error leaves the rest of the text as one
        // piece: still a lossless tokenization, just not HF's split.
        return false;
    }
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(md);
    *match_begin = ovector[0];
    *match_end = ovector[1];
    return true;
}

namespace {

// DeepSeek-V3's Split patterns, byte for byte as tokenizer.json spells them (after JSON unescaping).
constexpr std::string_view kDeepSeekNumbers = R"(\p{N}{1,3})";
constexpr std::string_view kDeepSeekCjk =
    "[\xe4\xb8\x80-\xe9\xbe\xa5\xe3\x81\x80-\xe3\x82\x9f\xe3\x82\xa0-\xe3\x83\xbf]+";
constexpr std::string_view kDeepSeekMain = R"([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^)"
                                           "\r\n"
                                           R"(\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[)"
                                           "\r\n"
                                           R"(]*|\s*[)"
                                           "\r\n"
                                           R"(]+|\s+(?!\S)|\s+)";

constexpr uint32_t kNumCodepoints = 0x110000;

// The 32 ASCII punctuation characters of pattern 3's first class, as a byte lookup.
constexpr auto kAsciiPunct = [] {
    std::array<bool, 256> table{};
    for (char c : std::string_view(R"(!"#$%&'()*+,-./:;<=>?@[\]^_`{|}~)")) {
        table[static_cast<unsigned char>(c)] = true;
    }
    return table;
}();

void append_utf8(uint32_t cp, std::string* out) {
    if (cp < 0x80) {
        out->push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
        out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
        out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
        out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
        out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
        out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
        out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
        out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
}

// Asks PCRE2 which code points each class holds: one scan of `<class>+` over a string of every
// scalar value, in order, so each match is a run of consecutive code points. ~50 ms, once per process.
std::unique_ptr<DeepSeekSplitter::Table> build_table() {
    std::string all;
    all.reserve(4 * kNumCodepoints);
    std::vector<uint32_t> starts;  // byte offset -> code point, only at match boundaries via binary search
    starts.reserve(kNumCodepoints);
    for (uint32_t cp = 0; cp < kNumCodepoints; ++cp) {
        if (cp >= 0xD800 && cp <= 0xDFFF) {
            continue;  // surrogates are not scalar values and cannot occur in valid UTF-8
        }
        starts.push_back(static_cast<uint32_t>(all.size()));
        append_utf8(cp, &all);
    }
    auto cp_at_offset = [&](size_t offset) {
        const auto idx = static_cast<uint32_t>(std::lower_bound(starts.begin(), starts.end(), offset) - starts.begin());
        return idx < 0xD800 ? idx : idx + 0x800;
    };
    std::vector<uint8_t> classes(kNumCodepoints, 0);
    const std::pair<const char*, uint8_t> class_patterns[] = {
        {R"(\p{N}+)", DeepSeekSplitter::kN}, {R"(\p{L}+)", DeepSeekSplitter::kL}, {R"(\p{M}+)", DeepSeekSplitter::kM},
        {R"(\p{P}+)", DeepSeekSplitter::kP}, {R"(\p{S}+)", DeepSeekSplitter::kS}, {R"(\s+)", DeepSeekSplitter::kSpace},
    };
    Regex::MatchScratch scratch;
    for (const auto& [pattern, bit] : class_patterns) {
        StatusOr<Regex> regex = Regex::compile(pattern, false);
        if (!regex.ok()) {
            return nullptr;
        }
        size_t begin = 0;
        size_t end = 0;
        size_t search = 0;
        while (search < all.size() && regex->find(all, search, scratch, &begin, &end) && end > begin) {
            const uint32_t first = cp_at_offset(begin);
            const uint32_t last = cp_at_offset(end);  // one past; `end` is a character boundary
            for (uint32_t cp = first; cp < last; ++cp) {
                classes[cp] |= bit;
            }
            search = end;
        }
    }
    for (uint32_t cp = 0x4E00; cp <= 0x9FA5; ++cp) {
        classes[cp] |= DeepSeekSplitter::kCjk;
    }
    for (uint32_t cp = 0x3040; cp <= 0x30FF; ++cp) {
        classes[cp] |= DeepSeekSplitter::kCjk;
    }
    classes['\r'] |= DeepSeekSplitter::kCrLf;
    classes['\n'] |= DeepSeekSplitter::kCrLf;

    // Two-stage table: identical 256-code-point blocks (most of the space) are stored once.
    auto table = std::make_unique<DeepSeekSplitter::Table>();
    // Fixed-size keys: a vector key's variable-length compare made GCC 12 at -O3 warn about an
    // impossible memcmp bound (-Wstringop-overread false positive); an array compares 256 bytes.
    using Block = std::array<uint8_t, 256>;
    std::map<Block, uint16_t> block_ids;
    for (uint32_t block = 0; block < kNumCodepoints / 256; ++block) {
        Block bytes;
        std::copy_n(classes.begin() + block * 256, 256, bytes.begin());
        auto [it, inserted] = block_ids.emplace(bytes, static_cast<uint16_t>(block_ids.size()));
        if (inserted) {
            table->blocks.insert(table->blocks.end(), it->first.begin(), it->first.end());
        }
        table->block_of.push_back(it->second);
    }
    return table;
}

}  // namespace

std::shared_ptr<const DeepSeekSplitter> DeepSeekSplitter::for_patterns(const std::vector<std::string>& patterns) {
    if (patterns.size() != 3 || patterns[0] != kDeepSeekNumbers || patterns[1] != kDeepSeekCjk ||
        patterns[2] != kDeepSeekMain) {
        return nullptr;
    }
    static const std::unique_ptr<Table> table = build_table();
    if (!table) {
        return nullptr;
    }
    return std::shared_ptr<const DeepSeekSplitter>(new DeepSeekSplitter(table.get()));
}

size_t DeepSeekSplitter::match_main(std::string_view s, size_t p, size_t* len0) const {
    const size_t n = s.size();
    const uint8_t c0 = class_at(s, p, len0);
    const auto b0 = static_cast<unsigned char>(s[p]);
    size_t len = 0;
    auto is_alpha = [](unsigned char c) { return (c | 0x20) >= 'a' && (c | 0x20) <= 'z'; };
    // [!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+ : the class is exactly ASCII punctuation.
    if (kAsciiPunct[b0] && p + 1 < n && is_alpha(static_cast<unsigned char>(s[p + 1]))) {
        size_t q = p + 2;
        while (q < n && is_alpha(static_cast<unsigned char>(s[q]))) {
            ++q;
        }
        return q;
    }
    // [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+ : when the optional character is itself a mark, taking it
    // or not ends at the same place, so "starts with L/M" covers both.
    if ((c0 & (kL | kM)) != 0) {
        return skip_run(s, p + *len0, kL | kM);
    }
    if ((c0 & (kCrLf | kP | kS)) == 0 && p + *len0 < n && (class_at(s, p + *len0, &len) & (kL | kM)) != 0) {
        return skip_run(s, p + *len0 + len, kL | kM);
    }
    //  ?[\p{P}\p{S}]+[\r\n]* : a space joins only when punctuation/symbols follow.
    size_t q = p;
    if (b0 == ' ' && p + 1 < n && (class_at(s, p + 1, &len) & (kP | kS)) != 0) {
        q = p + 1;
    }
    if (q > p || (c0 & (kP | kS)) != 0) {
        q = skip_run(s, q, kP | kS);
        while (q < n && (s[q] == '\r' || s[q] == '\n')) {
            ++q;
        }
        return q;
    }
    if ((c0 & kSpace) == 0) {
        return 0;
    }
    // Whitespace run W = s[p, q).
    size_t last_newline_end = 0;
    size_t last_start = p;
    size_t count = 0;
    q = p;
    while (q < n) {
        const uint8_t c = class_at(s, q, &len);
        if ((c & kSpace) == 0) {
            break;
        }
        if ((c & kCrLf) != 0) {
            last_newline_end = q + len;
        }
        last_start = q;
        q += len;
        ++count;
    }
    if (last_newline_end != 0) {
        return last_newline_end;  // \s*[\r\n]+ : \s* backs off to the last newline of W
    }
    if (q == n) {
        return q;  // \s+(?!\S) at the end of the subject
    }
    if (count >= 2) {
        return last_start;  // \s+(?!\S) backs off one character so a non-space does not follow
    }
    return q;  // \s+
}

}  // namespace deepshard::model::internal
