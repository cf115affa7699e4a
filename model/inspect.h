// `deepshard inspect`: what a checkpoint holds (parameters and bytes by kind, by dtype and per
// layer, computed from the headers alone) and whether it matches its config (Checkpoint::validate).
#pragma once

#include <cstdint>
#include <map>
#include <ostream>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/status.h"
#include "model/checkpoint.h"
#include "model/make_model.h"

namespace deepshard::model {

struct CountRow {
    int64_t tensors = 0;
    int64_t params = 0;  // elements of weights (scale grids excluded)
    uint64_t bytes = 0;  // stored bytes, FP8 scales included
    std::map<DType, uint64_t> bytes_by_dtype;
};

struct LayerSummary {
    int64_t layer = 0;
    bool moe = false;
    std::map<TensorKind, CountRow> by_kind;
    CountRow total;
};

struct ModelSummary {
    std::map<TensorKind, CountRow> by_kind;
    CountRow other;  // tensors the config does not imply (e.g. MTP layers)
    std::vector<std::string> other_names;
    std::map<DType, CountRow> by_dtype;
    std::vector<LayerSummary> layers;
    CountRow total;
    int64_t active_params = 0;  // per token: routed experts count top-k of n
};

ModelSummary summarize(const Checkpoint& ck);
std::string format_summary(const Checkpoint& ck, const ModelSummary& s);

// Opens `dir`, writes the summary to `out`, then validates. Returns the first failure (open or
// validation) with its reason; the summary is printed whenever the files could be opened.
Status inspect_model(const std::string& dir, std::ostream& out);

}  // namespace deepshard::model
