// The tokenizer's `Split` pre-tokenizers (internal to model/tokenizer): a PCRE2-backed regex for any
// pattern, and a hand-compiled equivalent of DeepSeek-V3's three patterns, which is what encode()
// runs when it recognises them (several times faster than three nested PCRE2 scans).
// HF tokenizers uses Oniguruma; PCRE2 with UTF+UCP has the same semantics for the patterns we meet
// (Unicode properties, negative look-ahead), and RE2/std::regex do not.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace deepshard::model::internal {

// A compiled pattern (JIT-compiled where the platform allows). Matching is thread-safe: each thread
// brings its own MatchScratch.
class Regex {
public:
    // literal=true treats the pattern as a plain string (HF `{"String": ...}` split patterns).
    static StatusOr<Regex> compile(const std::string& pattern, bool literal);

    // Per-call match state (wraps pcre2_match_data).
    class MatchScratch {
    public:
        MatchScratch();
        ~MatchScratch();
        MatchScratch(const MatchScratch&) = delete;
        MatchScratch& operator=(const MatchScratch&) = delete;
        void* get() const { return data_; }

    private:
        void* data_;
    };

    // Finds the first match in subject at or after `start`; the subject is assumed valid UTF-8 (the
    // tokenizer validates once up front). Returns false when there is none. Matches are never empty
    // for our patterns; an empty match is reported as such and the caller steps over it.
    bool find(
        std::string_view subject, size_t start, MatchScratch& scratch, size_t* match_begin, size_t* match_end) const;

    // HF Split behaviour `Isolated`: calls emit(piece) for each match and for each non-empty stretch
    // between matches, in order, so the pieces tile `subject` exactly.
    template <typename Emit>
    void split_isolated(std::string_view subject, MatchScratch& scratch, Emit&& emit) const {
        size_t pos = 0;
        size_t search = 0;
        size_t begin = 0;
        size_t end = 0;
        while (search <= subject.size() && find(subject, search, scratch, &begin, &end)) {
            if (end == begin) {
                // Empty match: nothing to isolate; step one code point so the loop progresses.
                search = begin + 1;
                while (search < subject.size() && (static_cast<unsigned char>(subject[search]) & 0xC0) == 0x80) {
                    ++search;
                }
                continue;
            }
            if (begin > pos) {
                emit(subject.substr(pos, begin - pos));
            }
            emit(subject.substr(begin, end - begin));
            pos = end;
            search = end;
        }
        if (pos < subject.size()) {
            emit(subject.substr(pos));
        }
    }

private:
    struct CodeDeleter {
        void operator()(void* code) const noexcept;
    };
    explicit Regex(std::shared_ptr<void> code) : code_(std::move(code)) {}
    std::shared_ptr<void> code_;  // pcre2_code_8*, shared so copies of a Tokenizer stay cheap
};

// DeepSeek-V3's pre-tokenizer, i.e. these Isolated splits applied in turn:
//   1. \p{N}{1,3}
//   2. [U+4E00-U+9FA5 U+3040-U+309F U+30A0-U+30FF]+
//   3. [ASCII punct][A-Za-z]+ | [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+ | ' '?[\p{P}\p{S}]+[\r\n]* | \s*[\r\n]+
//      | \s+(?!\S) | \s+
// Each level sees the pieces of the previous one as whole subjects, exactly like nested
// Regex::split_isolated calls. The Unicode classes come from PCRE2 itself (a table built once per
// process by matching \p{..} over every code point), so the result is identical to the regex path by
// construction of the classes; the alternation logic is spelled out in match_main().
class DeepSeekSplitter {
public:
    // A splitter when `patterns` (the regex texts of the Isolated Split pre-tokenizers, in order) are
    // exactly DeepSeek-V3's; nullptr otherwise. Thread-safe; the returned object is immutable.
    static std::shared_ptr<const DeepSeekSplitter> for_patterns(const std::vector<std::string>& patterns);

    // Calls emit(piece) for each final piece; the pieces tile `text`, which must be valid UTF-8.
    template <typename Emit>
    void split(std::string_view text, Emit&& emit) const {
        split_numbers(text, emit);
    }

    // Class bits of a code point, from PCRE2's Unicode tables.
    enum : uint8_t {
        kN = 1,       // \p{N}
        kL = 2,       // \p{L}
        kM = 4,       // \p{M}
        kP = 8,       // \p{P}
        kS = 16,      // \p{S}
        kSpace = 32,  // \s
        kCjk = 64,    // the ranges of pattern 2
        kCrLf = 128,  // \r or \n
    };

    struct Table {
        std::vector<uint16_t> block_of;  // code point >> 8 -> block index
        std::vector<uint8_t> blocks;     // block * 256 + (code point & 255) -> class bits
    };

private:
    explicit DeepSeekSplitter(const Table* table) : table_(table) {}

    // Class bits of the character starting at s[i]; *len receives its byte length.
    uint8_t class_at(std::string_view s, size_t i, size_t* len) const {
        const auto b0 = static_cast<unsigned char>(s[i]);
        uint32_t cp;
        if (b0 < 0x80) {
            *len = 1;
            return table_->blocks[b0];  // block 0 is code points 0..255
        }
        const auto b1 = static_cast<uint32_t>(static_cast<unsigned char>(s[i + 1]) & 0x3F);
        if (b0 < 0xE0) {
            *len = 2;
            cp = ((b0 & 0x1Fu) << 6) | b1;
        } else if (b0 < 0xF0) {
            *len = 3;
            cp = ((b0 & 0x0Fu) << 12) | (b1 << 6) | (static_cast<unsigned char>(s[i + 2]) & 0x3Fu);
        } else {
            *len = 4;
            cp = ((b0 & 0x07u) << 18) | (b1 << 12) | ((static_cast<unsigned char>(s[i + 2]) & 0x3Fu) << 6) |
                 (static_cast<unsigned char>(s[i + 3]) & 0x3Fu);
        }
        return table_->blocks[static_cast<size_t>(table_->block_of[cp >> 8]) * 256 + (cp & 0xFF)];
    }

    // End of the run of characters having any of `bits`, starting at i.
    size_t skip_run(std::string_view s, size_t i, uint8_t bits) const {
        size_t len = 0;
        while (i < s.size() && (class_at(s, i, &len) & bits) != 0) {
            i += len;
        }
        return i;
    }

    // Level 1: \p{N}{1,3}.
    template <typename Emit>
    void split_numbers(std::string_view s, Emit& emit) const {
        size_t gap = 0;
        size_t i = 0;
        size_t len = 0;
        while (i < s.size()) {
            if ((class_at(s, i, &len) & kN) == 0) {
                i += len;
                continue;
            }
            if (i > gap) {
                split_cjk(s.substr(gap, i - gap), emit);
            }
            size_t end = i + len;
            for (int count = 1; count < 3 && end < s.size() && (class_at(s, end, &len) & kN) != 0; ++count) {
                end += len;
            }
            split_cjk(s.substr(i, end - i), emit);
            i = gap = end;
        }
        if (gap < s.size()) {
            split_cjk(s.substr(gap), emit);
        }
    }

    // Level 2: runs of the CJK ranges.
    template <typename Emit>
    void split_cjk(std::string_view s, Emit& emit) const {
        size_t gap = 0;
        size_t i = 0;
        size_t len = 0;
        while (i < s.size()) {
            if ((class_at(s, i, &len) & kCjk) == 0) {
                i += len;
                continue;
            }
            if (i > gap) {
                split_main(s.substr(gap, i - gap), emit);
            }
            const size_t end = skip_run(s, i + len, kCjk);
            split_main(s.substr(i, end - i), emit);
            i = gap = end;
        }
        if (gap < s.size()) {
            split_main(s.substr(gap), emit);
        }
    }

    // Level 3: the six-way alternation; text no alternative matches is emitted as gap pieces.
    template <typename Emit>
    void split_main(std::string_view s, Emit& emit) const {
        size_t gap = 0;
        size_t i = 0;
        size_t len = 0;
        while (i < s.size()) {
            const size_t end = match_main(s, i, &len);
            if (end == 0) {
                i += len;
                continue;
            }
            if (i > gap) {
                emit(s.substr(gap, i - gap));
            }
            emit(s.substr(i, end - i));
            i = gap = end;
        }
        if (gap < s.size()) {
            emit(s.substr(gap));
        }
    }

    // End of the level-3 match starting exactly at p (PCRE semantics: first alternative that
    // matches, greedy quantifiers with backtracking), or 0 when none does. *len0 receives the byte
    // length of the character at p.
    size_t match_main(std::string_view s, size_t p, size_t* len0) const;

    const Table* table_;  // process-wide, never freed
};

}  // namespace deepshard::model::internal
