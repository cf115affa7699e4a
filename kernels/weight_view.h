// A non-owning view of a weight matrix W [rows, cols] in its stored dtype (row-major; a linear
// layer computes y = x * W^T). FP8 weights carry the float32 block-scale grid of the *full* tensor
// (DeepSeek's weight_scale_inv: W[i,j] = e4m3(q[i,j]) * scale[i/128][j/128]); a view of a row or
// column range keeps pointing into the same grid through row_offset/col_offset, so a rank can use
// a slice of a memory-mapped checkpoint without copying or re-blocking it.
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace deepshard::kernels {

struct WeightView {
    DType dtype = DType::kF32;    // kF32, kBF16, kF16 or kF8E4M3
    const void* data = nullptr;   // element (0,0) of this view
    int64_t rows = 0;
    int64_t cols = 0;
    int64_t ld = 0;               // elements between consecutive rows in storage (>= cols)
    // FP8 only.
    const float* scale = nullptr; // scale grid of the full tensor, row-major
    int64_t scale_ld = 0;         // columns of the scale grid
    int64_t row_offset = 0;       // position of this view's (0,0) in the full tensor
    int64_t col_offset = 0;
    int64_t block_rows = 128;
    int64_t block_cols = 128;

    bool valid() const { return data != nullptr && rows > 0 && cols > 0 && ld >= cols; }

    // Reference (slow) element access, exactly the dequantized value as float32.
    float at(int64_t r, int64_t c) const {
        const int64_t i = r * ld + c;
        switch (dtype) {
            case DType::kF32:
                return static_cast<const float*>(data)[i];
            case DType::kBF16:
                return bf16_to_f32(static_cast<const uint16_t*>(data)[i]);
            case DType::kF16:
                return f16_to_f32(static_cast<const uint16_t*>(data)[i]);
            case DType::kF8E4M3: {
                const float s = scale[((row_offset + r) / block_rows) * scale_ld + (col_offset + c) / block_cols];
                return e4m3_to_f32(static_cast<const uint8_t*>(data)[i]) * s;
            }
            default:
                return 0.0f;
        }
    }

    WeightView slice_rows(int64_t r0, int64_t n) const {
        WeightView v = *this;
        v.data = static_cast<const uint8_t*>(data) + r0 * ld * static_cast<int64_t>(dtype_size(dtype));
        v.rows = n;
        v.row_offset = row_offset + r0;
        return v;
    }
    WeightView slice_cols(int64_t c0, int64_t n) const {
        WeightView v = *this;
        v.data = static_cast<const uint8_t*>(data) + c0 * static_cast<int64_t>(dtype_size(dtype));
        v.cols = n;
        v.col_offset = col_offset + c0;
        return v;
    }
    // Bytes of weight data (plus scales) a full pass over this view reads.
    int64_t bytes() const {
        int64_t b = rows * cols * static_cast<int64_t>(dtype_size(dtype));
        if (dtype == DType::kF8E4M3) {
            b += ((rows + block_rows - 1) / block_rows) * ((cols + block_cols - 1) / block_cols) * 4;
        }
        return b;
    }
};

}  // namespace deepshard::kernels
