// CPU compute kernels: the numerical reference of deepshard and its CPU fallback.
// All activations are float32 and all accumulation is float32; weights stay in their stored dtype
// (FP8 e4m3 with block scales, BF16, F16, F32) and are dequantized inside the inner loops, never
// into a second copy of the model. Calls split work over ThreadPool::global() and block until done.
// The ISA (AVX-512 [+BF16/AMX], AVX2, scalar) is chosen once at run time (DS_ISA overrides).
#pragma once

#include <cstdint>

#include "kernels/weight_view.h"

namespace deepshard::kernels {

enum class Isa { kScalar, kAvx2, kAvx512, kAvx512Bf16 };
const char* isa_name(Isa isa);
Isa detected_isa();   // what this CPU supports
Isa active_isa();     // what the kernels use (detected, or DS_ISA)
void set_isa(Isa isa);  // tests: force an ISA (must be <= detected)

// y[m, n] = x[m, k] * W^T with W = [n, k].  x row stride ldx >= k, y row stride ldy >= n.
// accumulate: y += instead of y =.  For m == 1 this is a GEMV that streams W once; for m > 1 every
// weight element is read once for the whole batch (blocked over rows of x).
// The result equals, up to float32 summation order, sum_k x[i,k] * float32(W[j,k]) where
// float32(W) is exactly WeightView::at().
void matmul(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy,
            bool accumulate = false);

// out[i, :] = float32(W[rows[i], :]) for i in [0, n): embedding lookup / dequantization of rows.
void gather_rows(const WeightView& w, const int32_t* rows, int64_t n, float* out, int64_t ldo);

// y[i,:] = x[i,:] / sqrt(mean(x[i,:]^2) + eps) * w   (w given as float32).  In place allowed.
void rmsnorm(const float* x, int64_t m, int64_t n, int64_t ldx, const float* w, float eps, float* y, int64_t ldy);

// out[i] = silu(gate[i]) * up[i]
void silu_mul(const float* gate, const float* up, int64_t n, float* out);

}  // namespace deepshard::kernels
