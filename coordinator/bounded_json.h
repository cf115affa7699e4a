// JSON parsing with bounds on structure, for bodies that come from clients: nesting depth (the
// DOM's copy, compare and dump recurse once per level, so an unbounded depth is a stack overflow)
// and the number of values (each costs a node of memory). One pass: limits are checked while the
// DOM is built, so nothing beyond them is ever allocated. Never throws.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace deepshard::coordinator {

struct JsonBounds {
    int max_depth = 32;
    size_t max_values = size_t{1} << 18;
};

// Parses `text` into *out. On failure returns false and sets *error: "malformed JSON ...", "nested
// deeper than N levels" or "more than N values".
bool parse_bounded_json(std::string_view text, const JsonBounds& bounds, nlohmann::json* out, std::string* error);

}  // namespace deepshard::coordinator
