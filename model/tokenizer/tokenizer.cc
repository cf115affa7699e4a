// Loads an HF tokenizer.json (byte-level BPE as DeepSeek-V3 ships it) and encodes/decodes exactly as
// HF tokenizers does: added tokens are cut out of the raw text first (leftmost-longest), then each
// remaining stretch runs through the Split pre-tokenizers, then BPE per piece. Unsupported options are
// rejected at load time (kUnimplemented) rather than silently tokenizing differently.
#include "model/tokenizer/tokenizer.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <optional>
#include <unordered_map>

#include "model/tokenizer/bpe.h"
#include "model/tokenizer/regex_split.h"

namespace deepshard::model {

namespace internal {

using json = nlohmann::json;

namespace {

// GPT-2's regex, used when a ByteLevel pre-tokenizer has use_regex=true (not DeepSeek-V3's case).
constexpr const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr const char* kDefaultBos = "<｜begin▁of▁sentence｜>";
constexpr const char* kDefaultEos = "<｜end▁of▁sentence｜>";

// GPT-2 bytes_to_unicode: printable bytes map to themselves, the other 68 to U+0100.. in byte order,
// so every byte has a visible, non-space character.
void byte_to_codepoint_table(uint32_t (&table)[256]) {
    uint32_t extra = 0;
    for (uint32_t b = 0; b < 256; ++b) {
        const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        table[b] = printable ? b : 256 + extra++;
    }
}

std::string codepoint_to_utf8(uint32_t cp) {
    std::string out;
    if (cp < 0x80) {
        out.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
        out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
        out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
    return out;
}

// Calls fn(cp) for each code point of a well-formed UTF-8 string (JSON strings from nlohmann are valid).
template <typename Fn>
void for_each_codepoint(std::string_view s, Fn&& fn) {
    size_t i = 0;
    while (i < s.size()) {
        const auto b0 = static_cast<unsigned char>(s[i]);
        size_t len = b0 < 0x80 ? 1 : b0 < 0xE0 ? 2 : b0 < 0xF0 ? 3 : 4;
        uint32_t cp = len == 1 ? b0 : len == 2 ? (b0 & 0x1F) : len == 3 ? (b0 & 0x0F) : (b0 & 0x07);
        for (size_t k = 1; k < len && i + k < s.size(); ++k) {
            cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
        }
        fn(cp);
        i += len;
    }
}

StatusOr<std::string> read_file(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        return not_found("cannot open " + path.string());
    }
    std::ostringstream ss;
    ss << in.rdbuf();
    if (in.bad()) {
        return io_error("error reading " + path.string());
    }
    return ss.str();
}

// bos_token / eos_token in tokenizer_config.json: a plain string or an AddedToken object.
std::optional<std::string> token_content(const json& config, const char* key) {
    auto it = config.find(key);
    if (it == config.end() || it->is_null()) {
        return std::nullopt;
    }
    if (it->is_string()) {
        return it->get<std::string>();
    }
    if (it->is_object() && it->contains("content")) {
        return (*it)["content"].get<std::string>();
    }
    return std::nullopt;
}

}  // namespace

// Byte trie over added-token contents with leftmost-longest matching, the aho-corasick mode HF's
// AddedVocabulary uses. Contents are few (818) and short, so a hashed edge map is plenty fast.
class AddedTokenMatcher {
public:
    void add(std::string_view content, int32_t id) {
        if (content.empty()) {
            return;
        }
        first_byte_[static_cast<unsigned char>(content[0])] = true;
        int32_t node = 0;
        for (char c : content) {
            const uint64_t key = edge_key(node, c);
            auto it = edges_.find(key);
            if (it == edges_.end()) {
                ids_.push_back(-1);
                it = edges_.emplace(key, static_cast<int32_t>(ids_.size() - 1)).first;
            }
            node = it->second;
        }
        ids_[node] = id;
    }

    bool empty() const { return ids_.size() == 1; }

    // Leftmost match at or after `from`, the longest one starting there.
    bool find(std::string_view text, size_t from, size_t* begin, size_t* end, int32_t* id) const {
        for (size_t i = from; i < text.size(); ++i) {
            if (!first_byte_[static_cast<unsigned char>(text[i])]) {
                continue;
            }
            int32_t node = 0;
            int32_t best_id = -1;
            size_t best_end = 0;
            for (size_t j = i; j < text.size(); ++j) {
                auto it = edges_.find(edge_key(node, text[j]));
                if (it == edges_.end()) {
                    break;
                }
                node = it->second;
                if (ids_[node] >= 0) {
                    best_id = ids_[node];
                    best_end = j + 1;
                }
            }
            if (best_id >= 0) {
                *begin = i;
                *end = best_end;
                *id = best_id;
                return true;
            }
        }
        return false;
    }

    // Calls emit(segment, id): id >= 0 for an added token, -1 for the text between them.
    template <typename Emit>
    void split(std::string_view text, Emit&& emit) const {
        size_t pos = 0;
        size_t begin = 0;
        size_t end = 0;
        int32_t id = -1;
        while (!empty() && find(text, pos, &begin, &end, &id)) {
            if (begin > pos) {
                emit(text.substr(pos, begin - pos), -1);
            }
            emit(text.substr(begin, end - begin), id);
            pos = end;
        }
        if (pos < text.size()) {
            emit(text.substr(pos), -1);
        }
    }

private:
    static uint64_t edge_key(int32_t node, char c) {
        return (static_cast<uint64_t>(node) << 8) | static_cast<unsigned char>(c);
    }
    bool first_byte_[256] = {};
    std::unordered_map<uint64_t, int32_t> edges_;
    std::vector<int32_t> ids_{-1};  // per trie node: the token ending there, or -1; node 0 is the root
};

// model.vocab entries taken out of the JSON while it is parsed: 128k keys in nlohmann's std::map
// would cost a third of the load time, and only one pass over them is needed.
struct VocabCapture {
    bool seen = false;  // tokenizer.json has a model.vocab object
    std::vector<std::pair<std::string, int64_t>> entries;
    std::string bad_piece;          // first entry whose value is not an integer
    std::vector<std::string> path;  // object keys down to the current depth

    // nlohmann parser callback (depth: 1 for the root's keys). Returning false for a key keeps the
    // key and its value out of the DOM (the value is still reported, with the same depth).
    bool on_event(int depth, json::parse_event_t event, json& parsed) {
        const bool in_vocab = depth == 3 && path.size() >= 2 && path[0] == "model" && path[1] == "vocab";
        if (event == json::parse_event_t::key) {
            path.resize(static_cast<size_t>(depth));
            path[static_cast<size_t>(depth) - 1] = parsed.get_ref<const std::string&>();
            if (depth == 2 && path[0] == "model" && path[1] == "vocab") {
                seen = true;
            }
            return !in_vocab;
        }
        if (in_vocab && bad_piece.empty() &&
            (event == json::parse_event_t::object_start || event == json::parse_event_t::array_start)) {
            bad_piece = path[2].empty() ? "\"\"" : path[2];
        }
        if (in_vocab && event == json::parse_event_t::value && path.size() == 3) {
            if (parsed.is_number_integer()) {
                entries.emplace_back(path[2], parsed.get<int64_t>());
            } else if (bad_piece.empty()) {
                bad_piece = path[2].empty() ? "\"\"" : path[2];
            }
        }
        return true;
    }
};

// Lets the string-keyed map be searched with a string_view (no temporary std::string).
struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

struct AddedToken {
    int32_t id = -1;
    std::string content;
    bool normalized = true;
    bool special = false;
};

constexpr int kMaxJsonDepth = 64;
struct TooDeep {};

// Ids index the decode tables, so they are bounded: 2^21 is 8x the largest vocabularies in use
// (DeepSeek-V3 has 129280 rows, Gemma 262144) and keeps a hostile file's tables under 100 MB.
constexpr int64_t kMaxTokenId = int64_t{1} << 21;

struct TokenizerImpl {
    // byte-level vocab strings + added contents
    std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> piece_to_id;
    std::vector<std::string> id_bytes;                      // id → raw bytes it decodes to
    std::vector<uint8_t> id_flags;                          // kKnown | kSpecial
    AddedTokenMatcher raw_added;                            // normalized=false: matched on raw text
    AddedTokenMatcher normalized_added;                     // normalized=true: after the (empty) normalizer
    std::vector<Regex> splits;                              // Isolated Split pre-tokenizers, in order
    std::vector<std::string> split_patterns;                // their regex texts ("" for literal ones)
    std::shared_ptr<const DeepSeekSplitter> fast_splitter;  // set when split_patterns are DeepSeek-V3's
    std::unique_ptr<BpeModel> bpe;
    int32_t bos_id = -1;
    int32_t eos_id = -1;
    bool add_bos = true;

    static constexpr uint8_t kKnown = 1;
    static constexpr uint8_t kSpecial = 2;

    // Recursively applies split `level` and beyond through PCRE2, then BPE on the final pieces.
    void pretokenize_pcre(size_t level,
                          std::string_view piece,
                          Regex::MatchScratch& scratch,
                          bool reference_bpe,
                          std::vector<int32_t>* out) const {
        if (level == splits.size()) {
            if (reference_bpe) {
                bpe->encode_piece_reference(piece, out);
            } else {
                bpe->encode_piece(piece, out);
            }
            return;
        }
        splits[level].split_isolated(
            piece, scratch, [&](std::string_view p) { pretokenize_pcre(level + 1, p, scratch, reference_bpe, out); });
    }

    StatusOr<std::vector<int32_t>> encode(std::string_view text, bool add_bos, bool reference) const;

    // Calls text_fn(stretch) for text between added tokens and pushes added-token ids in between.
    template <typename TextFn>
    void split_added(std::string_view text, std::vector<int32_t>* ids, TextFn&& text_fn) const {
        raw_added.split(text, [&](std::string_view segment, int32_t id) {
            if (id >= 0) {
                ids->push_back(id);
                return;
            }
            normalized_added.split(segment, [&](std::string_view piece, int32_t id2) {
                if (id2 >= 0) {
                    ids->push_back(id2);
                } else {
                    text_fn(piece);
                }
            });
        });
    }

    Status parse_normalizer(const json& j) const {
        if (j.is_null() || (j.value("type", "") == "Sequence" && j.value("normalizers", json::array()).empty())) {
            return ok_status();
        }
        return unimplemented("tokenizer.json normalizer " + j.dump().substr(0, 80) + " is not supported");
    }

    Status parse_pre_tokenizer(const json& j) {
        if (j.is_null()) {
            return ok_status();
        }
        const std::string type = j.value("type", "");
        if (type == "Sequence") {
            for (const json& step : j.at("pretokenizers")) {
                DS_RETURN_IF_ERROR(parse_pre_tokenizer(step));
            }
            return ok_status();
        }
        if (type == "Split") {
            if (j.value("behavior", "") != "Isolated" || j.value("invert", false)) {
                return unimplemented("Split pre-tokenizer behaviour other than Isolated is not supported");
            }
            const json& pattern = j.at("pattern");
            const bool literal = pattern.contains("String");
            const std::string text =
                literal ? pattern.at("String").get<std::string>() : pattern.at("Regex").get<std::string>();
            DS_ASSIGN_OR_RETURN(Regex regex, Regex::compile(text, literal));
            splits.push_back(std::move(regex));
            split_patterns.push_back(literal ? std::string() : text);
            return ok_status();
        }
        if (type == "ByteLevel") {
            // The byte map itself is built into BpeModel; only the optional extras matter here.
            if (j.value("add_prefix_space", false)) {
                return unimplemented("ByteLevel add_prefix_space=true is not supported");
            }
            if (j.value("use_regex", true)) {
                DS_ASSIGN_OR_RETURN(Regex regex, Regex::compile(kGpt2Pattern, false));
                splits.push_back(std::move(regex));
                split_patterns.push_back(kGpt2Pattern);
            }
            return ok_status();
        }
        return unimplemented("pre-tokenizer type '" + type + "' is not supported");
    }

    Status parse_model(const json& model,
                       const VocabCapture& capture,
                       uint32_t (&byte_cp)[256],
                       std::vector<uint32_t>* cp_to_byte) {
        if (model.value("type", "BPE") != "BPE") {
            return unimplemented("tokenizer model type '" + model.value("type", "") + "' is not BPE");
        }
        auto non_empty = [&](const char* key) {
            auto it = model.find(key);
            return it != model.end() && !it->is_null() && !(it->is_string() && it->get<std::string>().empty());
        };
        if (non_empty("dropout") || non_empty("continuing_subword_prefix") || non_empty("end_of_word_suffix") ||
            model.value("byte_fallback", false) || model.value("ignore_merges", false)) {
            return unimplemented("BPE options dropout/subword affixes/byte_fallback/ignore_merges are not supported");
        }
        if (!capture.seen) {
            return invalid_argument("model.vocab is missing");
        }
        if (!capture.bad_piece.empty()) {
            return invalid_argument("model.vocab entry '" + capture.bad_piece + "' is not an integer id");
        }
        // Every id indexes the decode tables, which are sized by the largest one: bound them, and
        // make the vocabulary a function both ways (a piece or an id listed twice would make
        // encode and decode disagree).
        piece_to_id.reserve(capture.entries.size() + 1024);
        std::unordered_map<int32_t, const std::string*> id_owner;
        id_owner.reserve(capture.entries.size());
        for (const auto& [piece, id] : capture.entries) {
            if (id < 0 || id >= kMaxTokenId) {
                return invalid_argument("model.vocab: id " + std::to_string(id) + " of '" + piece +
                                        "' is out of range [0, " + std::to_string(kMaxTokenId) + ")");
            }
            const auto id32 = static_cast<int32_t>(id);
            if (!piece_to_id.emplace(piece, id32).second) {
                return invalid_argument("model.vocab lists the piece '" + piece + "' twice");
            }
            if (auto [it, fresh] = id_owner.emplace(id32, &piece); !fresh) {
                return invalid_argument("model.vocab gives id " + std::to_string(id) + " to both '" + *it->second +
                                        "' and '" + piece + "'");
            }
        }
        int32_t byte_ids[256];
        cp_to_byte->assign(512, 256);  // 256 = "no byte"
        for (uint32_t b = 0; b < 256; ++b) {
            (*cp_to_byte)[byte_cp[b]] = b;
            auto it = piece_to_id.find(codepoint_to_utf8(byte_cp[b]));
            if (it == piece_to_id.end()) {
                return invalid_argument("vocab lacks the byte-level token for byte " + std::to_string(b));
            }
            byte_ids[b] = it->second;
        }
        const json& merges = model.at("merges");
        std::vector<BpeModel::Merge> merge_ids;
        merge_ids.reserve(merges.size());
        std::string joined;  // reused: left + right without an allocation per merge
        for (size_t i = 0; i < merges.size(); ++i) {
            const json& m = merges[i];
            std::string_view left;
            std::string_view right;
            if (m.is_string()) {
                const std::string_view s = m.get_ref<const std::string&>();
                const size_t space = s.find(' ');
                if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
                    return invalid_argument("merge " + std::to_string(i) + " is not 'a b': " + std::string(s));
                }
                left = s.substr(0, space);
                right = s.substr(space + 1);
            } else {
                left = m.at(0).get_ref<const std::string&>();
                right = m.at(1).get_ref<const std::string&>();
            }
            joined.assign(left);
            joined.append(right);
            auto l = piece_to_id.find(left);
            auto r = piece_to_id.find(right);
            auto merged = piece_to_id.find(joined);
            if (l == piece_to_id.end() || r == piece_to_id.end() || merged == piece_to_id.end()) {
                return invalid_argument("merge " + std::to_string(i) + " (" + std::string(left) + " " +
                                        std::string(right) + ") uses a piece missing from the vocab");
            }
            merge_ids.push_back({l->second, r->second, merged->second});
        }
        DS_ASSIGN_OR_RETURN(bpe, BpeModel::create(byte_ids, merge_ids));
        return ok_status();
    }

    // Added tokens, checked like the vocabulary: ids in range, each id and each content once, and an
    // id the vocabulary already uses only for that same text (DeepSeek-V3 repeats BOS/EOS/pad so).
    Status parse_added_tokens(const json& added, std::vector<AddedToken>* out) {
        if (!added.is_array()) return invalid_argument("added_tokens: expected an array");
        std::unordered_map<int32_t, size_t> by_id;
        std::unordered_map<std::string, size_t> by_content;
        std::unordered_map<int32_t, const std::string*> vocab_piece;
        for (const auto& [piece, id] : piece_to_id) vocab_piece.emplace(id, &piece);
        for (size_t i = 0; i < added.size(); ++i) {
            const json& t = added[i];
            const std::string where = "added_tokens[" + std::to_string(i) + "]";
            if (!t.is_object()) return invalid_argument(where + ": expected an object");
            if (t.value("lstrip", false) || t.value("rstrip", false) || t.value("single_word", false)) {
                return unimplemented("added token options lstrip/rstrip/single_word are not supported");
            }
            const auto id_it = t.find("id");
            if (id_it == t.end() || !id_it->is_number_integer()) return invalid_argument(where + ".id: expected an integer");
            const int64_t id = id_it->get<int64_t>();
            if (id < 0 || id >= kMaxTokenId) {
                return invalid_argument(where + ".id: " + std::to_string(id) + " is out of range [0, " +
                                        std::to_string(kMaxTokenId) + ")");
            }
            const auto content_it = t.find("content");
            if (content_it == t.end() || !content_it->is_string() || content_it->get_ref<const std::string&>().empty()) {
                return invalid_argument(where + ".content: expected a non-empty string");
            }
            AddedToken tok;
            tok.id = static_cast<int32_t>(id);
            tok.content = content_it->get<std::string>();
            tok.normalized = t.value("normalized", true);
            tok.special = t.value("special", false);
            if (auto [it, fresh] = by_id.emplace(tok.id, i); !fresh) {
                return invalid_argument(where + ": id " + std::to_string(id) + " is already added_tokens[" +
                                        std::to_string(it->second) + "]'s");
            }
            if (auto [it, fresh] = by_content.emplace(tok.content, i); !fresh) {
                return invalid_argument(where + ": the content '" + tok.content + "' is already added_tokens[" +
                                        std::to_string(it->second) + "]'s");
            }
            if (auto v = vocab_piece.find(tok.id); v != vocab_piece.end() && *v->second != tok.content) {
                return invalid_argument(where + ": id " + std::to_string(id) + " ('" + tok.content +
                                        "') is the vocabulary's id for '" + *v->second + "'");
            }
            out->push_back(std::move(tok));
        }
        for (const AddedToken& t : *out) {
            piece_to_id[t.content] = t.id;  // an added token wins over a vocab entry with the same text
            (t.normalized ? normalized_added : raw_added).add(t.content, t.id);
        }
        return ok_status();
    }

    Status parse(const json& root, const VocabCapture& capture) {
        DS_RETURN_IF_ERROR(parse_normalizer(root.value("normalizer", json())));
        DS_RETURN_IF_ERROR(parse_pre_tokenizer(root.value("pre_tokenizer", json())));
        fast_splitter = DeepSeekSplitter::for_patterns(split_patterns);
        uint32_t byte_cp[256];
        byte_to_codepoint_table(byte_cp);
        std::vector<uint32_t> cp_to_byte;
        DS_RETURN_IF_ERROR(parse_model(root.at("model"), capture, byte_cp, &cp_to_byte));
        std::vector<AddedToken> added;
        DS_RETURN_IF_ERROR(parse_added_tokens(root.value("added_tokens", json::array()), &added));

        // Every id written below is < max_id + 1 (all are bounded by kMaxTokenId, so this is too).
        int32_t max_id = -1;
        for (const auto& [piece, id] : piece_to_id) {
            max_id = std::max(max_id, id);
        }
        for (const AddedToken& t : added) {
            max_id = std::max(max_id, t.id);
        }
        id_bytes.assign(static_cast<size_t>(max_id + 1), std::string());
        id_flags.assign(static_cast<size_t>(max_id + 1), 0);
        // ByteLevel decoder: map each character back to its byte; a token containing any character
        // outside the map (e.g. "<｜User｜>") contributes its UTF-8 text unchanged, as HF does.
        auto to_bytes = [&](const std::string& piece) {
            std::string bytes;
            bytes.reserve(piece.size());
            bool mapped = true;
            for_each_codepoint(piece, [&](uint32_t cp) {
                mapped = mapped && cp < cp_to_byte.size() && cp_to_byte[cp] <= 255;
                if (mapped) {
                    bytes.push_back(static_cast<char>(cp_to_byte[cp]));
                }
            });
            return mapped ? bytes : piece;
        };
        for (const auto& [piece, id] : piece_to_id) {
            id_bytes[id] = to_bytes(piece);
            id_flags[id] = kKnown;
        }
        for (const AddedToken& t : added) {
            id_bytes[t.id] = to_bytes(t.content);
            id_flags[t.id] |= kKnown | (t.special ? kSpecial : 0);
        }
        return ok_status();
    }

    Status parse_config(const json& config) {
        add_bos = config.value("add_bos_token", true);
        const std::string bos = token_content(config, "bos_token").value_or(kDefaultBos);
        const std::string eos = token_content(config, "eos_token").value_or(kDefaultEos);
        auto b = piece_to_id.find(bos);
        auto e = piece_to_id.find(eos);
        if (b == piece_to_id.end() || e == piece_to_id.end()) {
            return invalid_argument("bos/eos token '" + bos + "' / '" + eos + "' not in the vocabulary");
        }
        bos_id = b->second;
        eos_id = e->second;
        return ok_status();
    }
};

}  // namespace internal

StatusOr<Tokenizer> Tokenizer::load(const std::string& dir_or_file) {
    namespace fs = std::filesystem;
    std::error_code ec;
    fs::path path(dir_or_file);
    fs::path dir = path;
    if (fs::is_directory(path, ec)) {
        path /= "tokenizer.json";
    } else {
        dir = path.parent_path();
    }
    DS_ASSIGN_OR_RETURN(std::string text, internal::read_file(path));
    std::optional<std::string> config;
    const fs::path config_path = dir / "tokenizer_config.json";
    if (fs::exists(config_path, ec)) {
        DS_ASSIGN_OR_RETURN(config, internal::read_file(config_path));
    }
    return parse(std::move(text), config, path.string(), config_path.string());
}

StatusOr<Tokenizer> Tokenizer::parse(std::string tokenizer_json, const std::optional<std::string>& config_json,
                                     const std::string& origin, const std::string& config_origin) {
    using internal::json;
    auto impl = std::make_shared<internal::TokenizerImpl>();
    try {
        internal::VocabCapture vocab;
        // The DOM is copied, compared and printed recursively: a nesting bound keeps a hostile file
        // from overflowing the stack (a real tokenizer.json nests 6 levels).
        const json root = json::parse(tokenizer_json, [&vocab](int depth, json::parse_event_t event, json& parsed) {
            if ((event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) &&
                depth >= internal::kMaxJsonDepth) {
                throw internal::TooDeep{};
            }
            return vocab.on_event(depth, event, parsed);
        });
        tokenizer_json = std::string();  // the raw text is no longer needed; free it before building the tables
        if (!root.is_object()) return data_loss(origin + ": not a JSON object");
        DS_RETURN_IF_ERROR(impl->parse(root, vocab).with_context(origin));
        json config = json::object();
        if (config_json) {
            config = json::parse(*config_json);
            if (!config.is_object()) return data_loss(config_origin + ": not a JSON object");
        }
        DS_RETURN_IF_ERROR(impl->parse_config(config).with_context(config_origin));
    } catch (const internal::TooDeep&) {
        return data_loss(origin + ": the JSON nests deeper than " + std::to_string(internal::kMaxJsonDepth) + " levels");
    } catch (const json::exception& e) {
        // Malformed JSON or a field of the wrong type: a defect of the file, not of our code.
        return data_loss("tokenizer files " + origin + (config_json ? " / " + config_origin : "") + ": " + e.what());
    }
    return Tokenizer(std::move(impl));
}

namespace internal {
namespace {

Status check_utf8(std::string_view text) {
    if (auto bad = utf8::first_invalid_offset(text)) {
        char byte_hex[8];
        std::snprintf(byte_hex, sizeof(byte_hex), "0x%02X", static_cast<unsigned char>(text[*bad]));
        return invalid_argument("invalid UTF-8 at byte offset " + std::to_string(*bad) + " (byte " + byte_hex + ")");
    }
    return ok_status();
}

}  // namespace

StatusOr<std::vector<int32_t>> TokenizerImpl::encode(std::string_view text, bool add_bos, bool reference) const {
    DS_RETURN_IF_ERROR(check_utf8(text));
    std::vector<int32_t> ids;
    ids.reserve(text.size() / 3 + 2);
    if (add_bos) {
        ids.push_back(bos_id);
    }
    if (fast_splitter && !reference) {
        const BpeModel& model = *bpe;
        split_added(text, &ids, [&](std::string_view stretch) {
            fast_splitter->split(stretch, [&](std::string_view piece) { model.encode_piece(piece, &ids); });
        });
        return ids;
    }
    Regex::MatchScratch scratch;
    split_added(text, &ids, [&](std::string_view stretch) { pretokenize_pcre(0, stretch, scratch, reference, &ids); });
    return ids;
}

}  // namespace internal

StatusOr<std::vector<int32_t>> Tokenizer::encode(std::string_view text, bool add_bos) const {
    return impl_->encode(text, add_bos, /*reference=*/false);
}

StatusOr<std::vector<int32_t>> Tokenizer::encode_reference(std::string_view text, bool add_bos) const {
    return impl_->encode(text, add_bos, /*reference=*/true);
}

bool Tokenizer::has_fast_pretokenizer() const { return impl_->fast_splitter != nullptr; }

std::string_view Tokenizer::token_bytes(int32_t id) const {
    if (id < 0 || static_cast<size_t>(id) >= impl_->id_bytes.size()) {
        return {};
    }
    return impl_->id_bytes[id];
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
    std::string bytes;
    for (int32_t id : ids) {
        if (skip_special && is_special(id)) {
            continue;
        }
        bytes.append(token_bytes(id));
    }
    return utf8::to_valid_lossy(bytes);
}

int32_t Tokenizer::bos_id() const { return impl_->bos_id; }

int32_t Tokenizer::eos_id() const { return impl_->eos_id; }

int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->id_bytes.size()); }

Status Tokenizer::check_model_vocab(int64_t model_vocab_size, const std::string& model) const {
    const int64_t ids = vocab_size();
    if (model_vocab_size >= ids) {
        return ok_status();
    }
    return invalid_argument(model + ": the model's vocabulary has " + std::to_string(model_vocab_size) +
                            " token ids (config.json vocab_size) but its tokenizer uses " + std::to_string(ids) +
                            " (ids 0.." + std::to_string(ids - 1) + "), so any text containing an id of " +
                            std::to_string(model_vocab_size) +
                            " or above would be refused; remake the model with vocab_size >= " + std::to_string(ids) +
                            " (`deepshard make-model --tokenizer` sizes it) or pair it with its own tokenizer");
}

bool Tokenizer::add_bos_token() const { return impl_->add_bos; }

std::optional<int32_t> Tokenizer::token_id(std::string_view piece) const {
    auto it = impl_->piece_to_id.find(piece);
    if (it == impl_->piece_to_id.end()) {
        return std::nullopt;
    }
    return it->second;
}

bool Tokenizer::is_special(int32_t id) const {
    return id >= 0 && static_cast<size_t>(id) < impl_->id_flags.size() &&
           (impl_->id_flags[id] & internal::TokenizerImpl::kSpecial) != 0;
}

std::string IncrementalDecoder::feed(int32_t id) {
    if (skip_special_ && tokenizer_->is_special(id)) {
        return {};
    }
    pending_.append(tokenizer_->token_bytes(id));
    // Hold back only a trailing *valid prefix* of a character; anything already ill-formed is final
    // and is replaced now, exactly as a whole-sequence lossy decode would.
    size_t keep_from = pending_.size();
    size_t i = 0;
    while (i < pending_.size()) {
        utf8::Seq seq = utf8::next_sequence(std::string_view(pending_).substr(i));
        if (seq.kind == utf8::SeqKind::kIncomplete) {
            keep_from = i;
            break;
        }
        i += seq.length;
    }
    std::string out = utf8::to_valid_lossy(std::string_view(pending_).substr(0, keep_from));
    pending_.erase(0, keep_from);
    return out;
}

std::string IncrementalDecoder::flush() {
    std::string out = utf8::to_valid_lossy(pending_);
    pending_.clear();
    return out;
}

}  // namespace deepshard::model
