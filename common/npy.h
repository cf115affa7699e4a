// Minimal NumPy .npy (format 1.0/2.0) reading and writing of little-endian float32 arrays:
// used for --dump-logits and for the golden reference files.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace deepshard {

struct NpyArray {
    std::vector<int64_t> shape;
    std::vector<float> data;  // C order
};

StatusOr<NpyArray> read_npy_f32(const std::string& path);
Status write_npy_f32(const std::string& path, const std::vector<int64_t>& shape, const float* data);

}  // namespace deepshard
