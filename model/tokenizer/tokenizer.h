// DeepSeek-V3 tokenizer: byte-level BPE reproducing HF `tokenizers` for the model's tokenizer.json
// (added tokens split first, three PCRE2 Split pre-tokenizers, GPT-2 byte map, rank-ordered merges),
// plus an incremental decoder for streaming that never splits a UTF-8 character.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace deepshard::model {

namespace internal {
struct TokenizerImpl;
}  // namespace internal

// Immutable after load(); encode/decode are const and thread-safe. encode() keeps a per-thread cache
// of recent pieces (about 1 MiB per thread that encodes, allocated on first use, no locks).
// Copies are cheap: they share the loaded tables.
class Tokenizer {
public:
    // `dir_or_file` is a directory holding tokenizer.json (and optionally tokenizer_config.json for
    // add_bos_token / bos_token / eos_token), or the path of a tokenizer.json itself. Without a config
    // the DeepSeek defaults apply: BOS `<｜begin▁of▁sentence｜>`, EOS `<｜end▁of▁sentence｜>`, add BOS.
    static StatusOr<Tokenizer> load(const std::string& dir_or_file);
    // The same from the files' contents (`config_json` absent: the defaults); the origins name the
    // files in error messages. The tokenizer.json text is consumed.
    static StatusOr<Tokenizer> parse(std::string tokenizer_json, const std::optional<std::string>& config_json,
                                     const std::string& origin = "tokenizer.json",
                                     const std::string& config_origin = "tokenizer_config.json");

    // Text → ids. Added tokens written in the text (e.g. "<｜User｜>") become their ids. With add_bos
    // the BOS id is prepended. Invalid UTF-8 → InvalidArgument naming the first bad byte offset.
    StatusOr<std::vector<int32_t>> encode(std::string_view text, bool add_bos) const;

    // encode() computed the plain way: the PCRE2 pre-tokenizer regexes, heap-ordered BPE, no cache.
    // Same result, several times slower; it exists so tests and fuzzers can check the fast path.
    StatusOr<std::vector<int32_t>> encode_reference(std::string_view text, bool add_bos) const;
    // Whether encode() uses the built-in DeepSeek-V3 pre-tokenizer (recognised from tokenizer.json)
    // instead of running the Split regexes through PCRE2.
    bool has_fast_pretokenizer() const;

    // Ids → text, like HF decode: unknown ids are dropped, special tokens are kept unless skip_special,
    // and bytes that do not form valid UTF-8 become U+FFFD (maximal-subpart rule, as Rust's
    // String::from_utf8_lossy).
    std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const;

    // The raw bytes a single id stands for (empty for an unknown id). Not necessarily valid UTF-8.
    std::string_view token_bytes(int32_t id) const;

    int32_t bos_id() const;
    int32_t eos_id() const;
    // One past the largest id in use (vocabulary plus added tokens): 128815 for DeepSeek-V3. The
    // model's embedding may have more rows (129280); those ids decode to nothing.
    int32_t vocab_size() const;
    // Whether a model with `model_vocab_size` embedding rows (config.json vocab_size) can take every
    // id this tokenizer produces. If not: kInvalidArgument naming `model` and both numbers. make-model,
    // inspect, generate and the coordinator all refuse such a model with this message.
    Status check_model_vocab(int64_t model_vocab_size, const std::string& model) const;
    // Whether plain-text encoding should prepend BOS (tokenizer_config.json `add_bos_token`).
    bool add_bos_token() const;

    // Id of a vocabulary piece in its byte-level form (e.g. "Ġthe") or of an added token's content.
    std::optional<int32_t> token_id(std::string_view piece) const;
    // True for added tokens flagged special (BOS, EOS, placeholders, <|EOT|>, ...).
    bool is_special(int32_t id) const;

private:
    explicit Tokenizer(std::shared_ptr<internal::TokenizerImpl> impl) : impl_(std::move(impl)) {}
    std::shared_ptr<internal::TokenizerImpl> impl_;
};

// Streaming detokenizer. feed() returns only text made of complete UTF-8 characters; bytes of a
// character still being spelled out by later tokens are held back (at most 3). flush() returns the
// rest (an unfinished character becomes U+FFFD). The concatenation of all outputs equals
// Tokenizer::decode() of all ids fed. Not thread-safe; one decoder per stream. The tokenizer must
// outlive the decoder.
class IncrementalDecoder {
public:
    explicit IncrementalDecoder(const Tokenizer& tokenizer, bool skip_special = false)
        : tokenizer_(&tokenizer), skip_special_(skip_special) {}

    std::string feed(int32_t id);
    std::string flush();
    // Bytes currently held back waiting for the end of a character.
    size_t pending_bytes() const { return pending_.size(); }

private:
    const Tokenizer* tokenizer_;
    bool skip_special_;
    std::string pending_;
};

namespace utf8 {

// Length of the first UTF-8 sequence of s. kValid: a whole scalar value of `length` bytes.
// kInvalid: `length` (>= 1) bytes form the maximal ill-formed subpart. kIncomplete: s is a proper
// prefix of a well-formed sequence (only possible at the end of s).
enum class SeqKind { kValid, kInvalid, kIncomplete };
struct Seq {
    SeqKind kind;
    size_t length;
};
Seq next_sequence(std::string_view s);

// Offset of the first byte that is not part of well-formed UTF-8, or nullopt when s is valid.
std::optional<size_t> first_invalid_offset(std::string_view s);

// s with every ill-formed subpart (and a trailing incomplete sequence) replaced by U+FFFD.
std::string to_valid_lossy(std::string_view s);

}  // namespace utf8

}  // namespace deepshard::model
