// CPU compute kernels: the numerical reference of deepshard and its CPU fallback.
// Weights stay in their stored dtype (FP8 e4m3 with block scales, BF16, F16, F32) and are
// dequantized inside the inner loops, never into a second copy of the model. Calls split work over
// ThreadPool::global() and block until done. The ISA (AVX-512 [+BF16], AVX2, scalar) is chosen
// once at run time (DS_ISA overrides; AMX is used where the CPU and the kernel allow it).
//
// Two numerics modes for the matrix products (everything else is float32 in both):
//  - exact: float32 activations, float32 accumulation; the dequantized weight is exactly
//    WeightView::at(). The reference, held to the official float32 implementation by the golden tests.
//  - fast: on CPUs with AVX512-BF16 the matmul inputs are rounded to BF16 (activations RNE, weights
//    dequantized then rounded, as the official bf16 generate.py does) and multiplied by vdpbf16ps
//    into float32 accumulators: twice the multiply throughput and half the bytes for activations.
//    On every other ISA (AVX-512 without BF16, AVX2, scalar) there is no faster reduced-precision
//    instruction, so fast computes exactly what exact does (fast_is_exact() says which applies).
//    F32 weights are always multiplied exactly. Where the CPU also has AMX (Isa::kAmx), fast's
//    prefill-sized products run on AMX tiles (TDPBF16PS: the same BF16 products, float32 sums).
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

#include "kernels/weight_view.h"

namespace deepshard::kernels {

enum class Isa { kScalar, kAvx2, kAvx512, kAvx512Bf16, kAmx };
const char* isa_name(Isa isa);
Isa detected_isa();   // what this CPU supports
Isa active_isa();     // what the kernels use (detected, or DS_ISA)
void set_isa(Isa isa);  // tests: force an ISA (must be <= detected)

enum class Numerics { kExact, kFast };
const char* numerics_name(Numerics n);  // "exact", "fast"
// Parses "exact" / "fast"; false for anything else.
bool parse_numerics(std::string_view s, Numerics* out);
// True when `fast` computes exactly what `exact` does on the active ISA (no BF16 dot products).
bool fast_is_exact();

// y[m, n] = x[m, k] * W^T with W = [n, k].  x row stride ldx >= k, y row stride ldy >= n.
// accumulate: y += instead of y =.  For small m W is streamed once straight into registers
// (decode); for larger m it is packed panel by panel into an L2-sized buffer and multiplied by a
// blocked GEMM (prefill). Either way every weight element is read from memory once per call.
// exact: equals, up to float32 summation order, sum_k x[i,k] * float32(W[j,k]) where float32(W)
// is exactly WeightView::at(). fast: see the header comment.
void matmul(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy,
            bool accumulate = false, Numerics numerics = Numerics::kExact);

// Many matmuls (e.g. the experts of a step) in ONE parallel region: the row blocks of all jobs are
// claimed by whichever thread is free, so small matrices do not each pay a region and the threads
// stay busy across job boundaries. Jobs must not write overlapping outputs.
struct MatmulJob {
    const float* x = nullptr;
    int64_t m = 0;
    int64_t ldx = 0;
    const WeightView* w = nullptr;
    float* y = nullptr;
    int64_t ldy = 0;
    bool accumulate = false;
};
#if __cplusplus >= 202002L  // std::span; the .cu files include this header as C++17 (nvcc)
void matmul_batch(std::span<const MatmulJob> jobs, Numerics numerics = Numerics::kExact);
#endif

// SwiGLU input half of an MLP, fused: out[m, inter] = silu(x * W1^T) * (x * W3^T) with W1, W3 =
// [inter, k]. Each block of rows of W1/W3 is computed into thread-local scratch and activated there;
// the gate and up products never make a round trip through memory. Jobs run in one region.
struct SwigluJob {
    const float* x = nullptr;
    int64_t m = 0;
    int64_t ldx = 0;
    const WeightView* w1 = nullptr;
    const WeightView* w3 = nullptr;
    float* out = nullptr;
    int64_t ldo = 0;
};
#if __cplusplus >= 202002L  // std::span; the .cu files include this header as C++17 (nvcc)
void swiglu_batch(std::span<const SwigluJob> jobs, Numerics numerics = Numerics::kExact);
#endif
void swiglu(const float* x, int64_t m, int64_t ldx, const WeightView& w1, const WeightView& w3, float* out,
            int64_t ldo, Numerics numerics = Numerics::kExact);

// out[i, :] = float32(W[rows[i], :]) for i in [0, n): embedding lookup / dequantization of rows.
void gather_rows(const WeightView& w, const int32_t* rows, int64_t n, float* out, int64_t ldo);

// y[i,:] = x[i,:] / sqrt(mean(x[i,:]^2) + eps) * w   (w given as float32).  In place allowed.
void rmsnorm(const float* x, int64_t m, int64_t n, int64_t ldx, const float* w, float eps, float* y, int64_t ldy);

// out[i] = silu(gate[i]) * up[i]
void silu_mul(const float* gate, const float* up, int64_t n, float* out);

}  // namespace deepshard::kernels
