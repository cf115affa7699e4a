#include "coordinator/bounded_json.h"

namespace deepshard::coordinator {

namespace {

using json = nlohmann::json;

// nlohmann's SAX interface, forwarding to its own DOM builder after the bounds checks. sax_parse()
// calls these statically (a template parameter), so no virtual interface is needed.
class BoundedSax {
public:
    BoundedSax(json* out, const JsonBounds& bounds) : dom_(*out, /*allow_exceptions=*/false), bounds_(bounds) {}

    bool null() { return value() && dom_.null(); }
    bool boolean(bool v) { return value() && dom_.boolean(v); }
    bool number_integer(json::number_integer_t v) { return value() && dom_.number_integer(v); }
    bool number_unsigned(json::number_unsigned_t v) { return value() && dom_.number_unsigned(v); }
    bool number_float(json::number_float_t v, const json::string_t& s) { return value() && dom_.number_float(v, s); }
    bool string(json::string_t& v) { return value() && dom_.string(v); }
    bool binary(json::binary_t& v) { return value() && dom_.binary(v); }
    bool start_object(std::size_t n) { return value() && enter() && dom_.start_object(n); }
    bool key(json::string_t& k) { return dom_.key(k); }
    bool end_object() {
        --depth_;
        return dom_.end_object();
    }
    bool start_array(std::size_t n) { return value() && enter() && dom_.start_array(n); }
    bool end_array() {
        --depth_;
        return dom_.end_array();
    }
    bool parse_error(std::size_t pos, const std::string& token, const nlohmann::detail::exception& ex) {
        error_ = std::string("malformed JSON: ") + ex.what();
        return dom_.parse_error(pos, token, ex);
    }

    const std::string& error() const { return error_; }

private:
    bool value() {
        if (++values_ <= bounds_.max_values) return true;
        error_ = "the JSON has more than " + std::to_string(bounds_.max_values) + " values";
        return false;
    }
    bool enter() {
        if (++depth_ <= bounds_.max_depth) return true;
        error_ = "the JSON nests deeper than " + std::to_string(bounds_.max_depth) + " levels";
        return false;
    }

    nlohmann::detail::json_sax_dom_parser<json> dom_;
    JsonBounds bounds_;
    int depth_ = 0;
    size_t values_ = 0;
    std::string error_;
};

}  // namespace

bool parse_bounded_json(std::string_view text, const JsonBounds& bounds, json* out, std::string* error) {
    *out = json();
    BoundedSax sax(out, bounds);
    bool ok = false;
    try {
        ok = json::sax_parse(text.begin(), text.end(), &sax, json::input_format_t::json, /*strict=*/true);
    } catch (const std::exception& e) {  // allow_exceptions=false: not expected, but never let one escape
        *error = std::string("malformed JSON: ") + e.what();
        *out = json();
        return false;
    }
    if (!ok) {
        *error = sax.error().empty() ? "malformed JSON" : sax.error();
        *out = json();  // a partial DOM is discarded (destruction is iterative, whatever the depth)
        return false;
    }
    return true;
}

}  // namespace deepshard::coordinator
