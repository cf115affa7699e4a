// A model checkpoint on disk: config.json plus model.safetensors.index.json + shards, or a single
// model.safetensors (MODEL_SPEC §3, DESIGN §6). Files are memory-mapped; nothing is read until a
// tensor (or a row/column range of one, or a single expert) is used, so a rank touches only its
// own byte ranges. All header defects are reported at open() with the file and tensor named.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/mapped_file.h"
#include "common/status.h"
#include "kernels/weight_view.h"
#include "model/config.h"

namespace deepshard::model {

struct TensorInfo {
    std::string name;
    DType dtype = DType::kF32;
    std::vector<int64_t> shape;
    int file_index = 0;     // into Checkpoint::files()
    uint64_t offset = 0;    // absolute byte offset of the data in its file
    uint64_t nbytes = 0;
    int64_t numel() const {
        int64_t n = 1;
        for (auto d : shape) n *= d;
        return n;
    }
};

struct LoadStats {
    uint64_t bytes = 0;
    double seconds = 0;
    double gb_per_s() const { return seconds > 0 ? bytes / seconds / 1e9 : 0; }
};

class Checkpoint {
public:
    // Opens `dir`: reads config.json, the index (or the single file), every shard header; checks
    // offsets, sizes, dtypes and that the index names only existing shards and tensors.
    static StatusOr<std::unique_ptr<Checkpoint>> open(const std::string& dir);

    const ModelConfig& config() const { return config_; }
    const std::string& dir() const { return dir_; }
    const std::vector<TensorInfo>& tensors() const { return tensors_; }
    const std::vector<std::string>& file_names() const { return file_names_; }
    const TensorInfo* find(const std::string& name) const;

    // 2-D weight (with its `<name>_scale_inv` when FP8) as a view into the mapping. Checks the
    // expected shape and the scale grid shape [ceil(rows/128), ceil(cols/128)].
    StatusOr<kernels::WeightView> weight(const std::string& name, int64_t expect_rows, int64_t expect_cols) const;
    // Row range [r0, r0+n) / column range [c0, c0+n) of a 2-D weight (FP8 blocks respected).
    StatusOr<kernels::WeightView> weight_rows(const std::string& name, int64_t expect_rows, int64_t expect_cols,
                                              int64_t r0, int64_t n) const;
    StatusOr<kernels::WeightView> weight_cols(const std::string& name, int64_t expect_rows, int64_t expect_cols,
                                              int64_t c0, int64_t n) const;
    // 1-D tensor (norm weight, bias) of `expect_len` elements converted to float32.
    StatusOr<std::vector<float>> vector_f32(const std::string& name, int64_t expect_len) const;

    // Validates the whole checkpoint against config(): every tensor the config implies exists with
    // the right shape and dtype, FP8 scales present and shaped, no unexpected overlaps.
    Status validate() const;

    // Faults in the byte ranges of the given tensors (all if empty) with progress output (a bar on
    // a terminal, log lines otherwise) and returns the bytes/s achieved.
    StatusOr<LoadStats> load(const std::vector<std::string>& names = {}) const;

    // Identity of the model: hash of config + tensor names, dtypes, shapes and sizes (not data).
    uint64_t fingerprint() const;

    // Bytes of the mapped files resident in memory (mincore); for per-rank memory tests.
    uint64_t resident_bytes() const;

    const MappedFile& file(int index) const { return files_[index]; }

private:
    Checkpoint() = default;
    std::string dir_;
    ModelConfig config_;
    std::vector<std::string> file_names_;
    std::vector<MappedFile> files_;
    std::vector<TensorInfo> tensors_;
    std::map<std::string, size_t> by_name_;
};

// Expected HF tensor names of one layer / the whole model, for validation and generation.
std::string layer_prefix(int64_t layer);  // "model.layers.N."

}  // namespace deepshard::model
