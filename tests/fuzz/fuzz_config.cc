// libFuzzer target: ModelConfig::from_json on arbitrary JSON. Whatever it accepts must survive a
// to_json -> from_json round trip unchanged (same hash) and give finite derived quantities.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using deepshard::model::ModelConfig;
    nlohmann::json j = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) {
        return 0;
    }
    auto c = ModelConfig::from_json(j, "fuzz.json");
    if (!c.ok()) {
        return 0;
    }
    auto again = ModelConfig::from_json(c->to_json(), "roundtrip");
    if (!again.ok() || again->hash() != c->hash())
        std::abort();
    if (!std::isfinite(c->softmax_scale()))
        std::abort();
    return 0;
}
