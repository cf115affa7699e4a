// Shared helpers of the kernel tests: random weights in every dtype (with a full-tensor FP8 scale
// grid), the list of ISAs this CPU can run, and a double-precision reference matmul built on
// WeightView::at, the definition of the dequantized value.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "common/dtype.h"
#include "kernels/kernels.h"

namespace deepshard::kernels::testing {

// Owns the storage behind a WeightView of a full [rows, cols] tensor.
struct TestWeight {
    DType dtype;
    int64_t rows = 0, cols = 0;
    std::vector<uint8_t> bytes;
    std::vector<float> scale;
    int64_t scale_ld = 0;

    TestWeight(DType t, int64_t r, int64_t c, uint32_t seed) : dtype(t), rows(r), cols(c) {
        std::mt19937 rng(seed);
        std::normal_distribution<float> nd(0.0f, 1.0f);
        bytes.resize(r * c * dtype_size(t));
        for (int64_t i = 0; i < r * c; ++i) {
            const float v = nd(rng);
            switch (t) {
                case DType::kF32:
                    reinterpret_cast<float*>(bytes.data())[i] = v;
                    break;
                case DType::kBF16:
                    reinterpret_cast<uint16_t*>(bytes.data())[i] = f32_to_bf16(v);
                    break;
                case DType::kF16:
                    reinterpret_cast<uint16_t*>(bytes.data())[i] = f32_to_f16(v);
                    break;
                case DType::kF8E4M3: {
                    // Every non-NaN code appears, subnormals included.
                    uint8_t code = static_cast<uint8_t>(rng() & 0xff);
                    if ((code & 0x7f) == 0x7f) code &= 0xf0;
                    bytes[i] = code;
                    break;
                }
                default:
                    break;
            }
        }
        if (t == DType::kF8E4M3) {
            scale_ld = (c + 127) / 128;
            scale.resize(((r + 127) / 128) * scale_ld);
            std::uniform_real_distribution<float> ud(1e-4f, 3e-3f);
            for (float& s : scale) s = ud(rng);
        }
    }

    WeightView view() const {
        WeightView v;
        v.dtype = dtype;
        v.data = bytes.data();
        v.rows = rows;
        v.cols = cols;
        v.ld = cols;
        if (dtype == DType::kF8E4M3) {
            v.scale = scale.data();
            v.scale_ld = scale_ld;
        }
        return v;
    }
};

inline std::vector<Isa> runnable_isas() {
    std::vector<Isa> out;
    for (Isa i : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kAvx512Bf16, Isa::kAmx}) {
        if (static_cast<int>(i) <= static_cast<int>(detected_isa())) out.push_back(i);
    }
    return out;
}

// Restores the default ISA when a test ends.
struct IsaGuard {
    Isa saved = active_isa();
    ~IsaGuard() { set_isa(saved); }
};

inline std::vector<float> random_vec(int64_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> v(n);
    for (float& f : v) f = nd(rng);
    return v;
}

}  // namespace deepshard::kernels::testing
