// UTF-8 validation and lossy repair following Unicode Table 3-7 and the "maximal subpart" rule, which
// is what Rust's String::from_utf8_lossy (and so HF decode) applies; matching it byte for byte keeps
// our decode() equal to HF's on arbitrary id sequences.
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "model/tokenizer/tokenizer.h"

namespace deepshard::model::utf8 {

namespace {
constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD
}  // namespace

Seq next_sequence(std::string_view s) {
    const auto b0 = static_cast<unsigned char>(s[0]);
    if (b0 < 0x80) {
        return {SeqKind::kValid, 1};
    }
    size_t need = 0;
    unsigned char lo = 0x80;
    unsigned char hi = 0xBF;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        need = 1;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        need = 2;
        if (b0 == 0xE0) {
            lo = 0xA0;  // no overlongs
        } else if (b0 == 0xED) {
            hi = 0x9F;  // no surrogates
        }
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        need = 3;
        if (b0 == 0xF0) {
            lo = 0x90;
        } else if (b0 == 0xF4) {
            hi = 0x8F;  // nothing above U+10FFFF
        }
    } else {
        return {SeqKind::kInvalid, 1};
    }
    for (size_t i = 1; i <= need; ++i) {
        if (i >= s.size()) {
            return {SeqKind::kIncomplete, i};
        }
        const auto b = static_cast<unsigned char>(s[i]);
        if (b < lo || b > hi) {
            return {SeqKind::kInvalid, i};
        }
        lo = 0x80;  // only the second byte has a narrowed range
        hi = 0xBF;
    }
    return {SeqKind::kValid, need + 1};
}

std::optional<size_t> first_invalid_offset(std::string_view s) {
    size_t i = 0;
    while (i < s.size()) {
        // ASCII fast path, eight bytes at a time: most text the coordinator sees is mostly ASCII.
        if (i + 8 <= s.size()) {
            uint64_t word;
            std::memcpy(&word, s.data() + i, 8);
            if ((word & 0x8080808080808080ull) == 0) {
                i += 8;
                continue;
            }
        }
        if (static_cast<unsigned char>(s[i]) < 0x80) {
            ++i;
            continue;
        }
        Seq seq = next_sequence(s.substr(i));
        if (seq.kind != SeqKind::kValid) {
            return i;
        }
        i += seq.length;
    }
    return std::nullopt;
}

std::string to_valid_lossy(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    size_t i = 0;
    while (i < s.size()) {
        Seq seq = next_sequence(s.substr(i));
        if (seq.kind == SeqKind::kValid) {
            out.append(s.substr(i, seq.length));
        } else {
            out.append(kReplacement);
        }
        i += seq.length;
    }
    return out;
}

}  // namespace deepshard::model::utf8
