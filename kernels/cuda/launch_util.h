// Host-side argument checks and launch geometry shared by the .cu launchers (internal header).
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"
#include "kernels/cuda/device_math.h"
#include "kernels/weight_view.h"

namespace deepshard::kernels::cuda::internal {

// Validates a device WeightView for `op` (dtype readable, sizes, FP8 scale grid present, positive
// block sizes) and converts it.
Status check_weight(const char* op, const WeightView& w, DevWeight* out);

// 16-byte weight loads are possible: every row 16-byte aligned and whole chunks (16 bytes of elements)
// that never straddle an FP8 scale block.
inline bool weight_vec_ok(const DevWeight& w) {
    const int64_t esz = w.dtype == DevDType::kF32 ? 4 : (w.dtype == DevDType::kF8E4M3 ? 1 : 2);
    const int64_t v = 16 / esz;
    if (reinterpret_cast<uintptr_t>(w.data) % 16 != 0 || (w.ld * esz) % 16 != 0 || w.cols % v != 0) return false;
    return w.dtype != DevDType::kF8E4M3 || (w.col_offset % v == 0 && w.block_cols % v == 0);
}

// kInvalidArgument "op: what" helper.
inline Status bad_arg(const char* op, const std::string& what) {
    return invalid_argument(std::string("cuda::") + op + ": " + what);
}

// Grid size for n work items with `per_block` items per block, capped for grid-stride loops.
inline unsigned grid_for(int64_t n, int64_t per_block, int64_t cap = int64_t{1} << 20) {
    int64_t g = (n + per_block - 1) / per_block;
    if (g < 1) g = 1;
    if (g > cap) g = cap;
    return static_cast<unsigned>(g);
}

}  // namespace deepshard::kernels::cuda::internal
