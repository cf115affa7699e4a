// libFuzzer target: the plan file (`deepshard plan --out plan.json`), as its two readers take it:
// the shard job (shard_node::Layout::from_plan_json, against the tiny golden model's config) and
// deepshard-launch (launch::parse_plan_ranks, then the hostfile and rankfile it writes). Whatever is
// accepted must be self-consistent: a layout that passed validation covers every layer exactly once
// with world_size == stages x ranks_per_stage, and the launcher's ranks are world_size long. Any
// sanitizer report, uncaught exception or allocation past the RSS limit is a finding.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "launch/launch_config.h"
#include "model/config.h"
#include "shard_node/layout.h"

#ifndef DS_FUZZ_SOURCE_DIR
#define DS_FUZZ_SOURCE_DIR "."
#endif

namespace {

[[noreturn]] void fail(const std::string& what) {
    std::fprintf(stderr, "fuzz_plan: %s\n", what.c_str());
    std::abort();
}

const deepshard::model::ModelConfig& config() {
    static const deepshard::model::ModelConfig* c = [] {
        auto loaded = deepshard::model::ModelConfig::load(std::string(DS_FUZZ_SOURCE_DIR) + "/testdata/golden/tiny-bf16");
        if (!loaded.ok()) fail(loaded.status().to_string());
        return new deepshard::model::ModelConfig(std::move(loaded).value());
    }();
    return *c;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string text(reinterpret_cast<const char*>(data), size);
    const auto& c = config();
    auto layout = deepshard::shard_node::Layout::from_plan_json(text, c);
    if (layout.ok()) {
        int64_t covered = 0;
        for (const auto& st : layout->stages) covered += st.last_layer - st.first_layer;
        if (layout->stages.empty() || covered != c.num_hidden_layers) fail("accepted a plan that does not cover the layers");
        if (static_cast<int64_t>(layout->world_size) !=
            static_cast<int64_t>(layout->stages.size()) * layout->ranks_per_stage) {
            fail("accepted a plan whose world_size is not stages x ranks_per_stage");
        }
    }
    auto ranks = deepshard::launch::parse_plan_ranks(text, "fuzz-plan.json", "localhost");
    if (ranks.ok()) {
        if (static_cast<int>(ranks->ranks.size()) != ranks->world_size) fail("ranks.size() != world_size");
        (void)deepshard::launch::hostfile_text(*ranks);
        (void)deepshard::launch::rankfile_text(*ranks);
    }
    return 0;
}
