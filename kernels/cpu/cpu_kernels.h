// Internal interface between the ISA-neutral driver (dispatch.cc: ISA selection, threading, argument
// checks) and the per-ISA kernel files (scalar.cc, avx2.cc, avx512.cc). Each ISA file is compiled
// with its own -m flags, so it must only be called after the driver has checked the CPU supports it.
// Kernels run on one thread over a range of output columns; the driver splits the work.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/weight_view.h"

namespace deepshard::kernels::cpu {

struct MatmulArgs {
    const float* x;
    int64_t m;
    int64_t ldx;
    const WeightView* w;
    float* y;
    int64_t ldy;
    bool accumulate;
};

// Computes y[:, n0:n1] (rows n0..n1 of W) for all m rows of x. Single-threaded.
using MatmulRowsFn = void (*)(const MatmulArgs& a, int64_t n0, int64_t n1);
// out[c] = float32(W[r, c]) for c in [0, w.cols): exactly WeightView::at.
using DecodeRowFn = void (*)(const WeightView& w, int64_t r, float* out);
// y[i, :] = x / sqrt(mean(x^2) + eps) * w for rows [r0, r1).
using RmsnormRowsFn = void (*)(const float* x, int64_t n, int64_t ldx, const float* w, float eps, float* y,
                               int64_t ldy, int64_t r0, int64_t r1);
// out[i] = silu(gate[i]) * up[i] for i in [b, e).
using SiluMulFn = void (*)(const float* gate, const float* up, float* out, int64_t b, int64_t e);

struct KernelTable {
    MatmulRowsFn matmul_rows;
    DecodeRowFn decode_row;
    RmsnormRowsFn rmsnorm_rows;
    SiluMulFn silu_mul;
};

const KernelTable& scalar_table();
const KernelTable& avx2_table();
const KernelTable& avx512_table();

// A per-thread, 64-byte aligned scratch buffer of at least `bytes` (grows, never shrinks; lives as
// long as the thread). Defined in dispatch.cc so no ISA-flagged file instantiates library code.
void* thread_scratch(size_t bytes);

// Row-block granularity at which the driver splits W (the FP8 scale block; 128 in DeepSeek-V3).
constexpr int64_t kRowBlock = 128;

}  // namespace deepshard::kernels::cpu
