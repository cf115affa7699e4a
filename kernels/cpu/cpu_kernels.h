// Internal interface between the ISA-neutral driver (dispatch.cc: ISA selection, threading, argument
// checks) and the per-ISA kernel files (scalar.cc, avx2.cc, avx512.cc). Each ISA file is compiled
// with its own -m flags, so it must only be called after the driver has checked the CPU supports it.
// Kernels run on one thread over a range of output columns; the driver splits the work.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "kernels/kernels.h"
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
    // Fast numerics (BF16 tables only): x rounded to BF16, row stride ldxb (a multiple of 32 >= k,
    // zero past k). nullptr = exact float32 path.
    const uint16_t* xb = nullptr;
    int64_t ldxb = 0;
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
// One unit of MLA attention (kernels/mla.h): `rows` query rows (a query and a head each) that attend
// to keys of one block table row. keys[j] = cache slot of position j (latent R floats, then rd rope
// floats), j < nkeys; row i reads q_lat[i] (R), q_pe[i] (rd), attends to keys [0, last_key[i]] and
// writes out[i] (R). Rows of one query are consecutive and share last_key.
struct AttnTile {
    const float* const* keys = nullptr;
    int64_t nkeys = 0;
    int64_t rows = 0;
    const float* const* q_lat = nullptr;
    const float* const* q_pe = nullptr;
    const int32_t* last_key = nullptr;
    float* const* out = nullptr;
    int64_t R = 0, rd = 0;
    float scale = 1.0f;
};
using AttentionFn = void (*)(const AttnTile& t);

// y[i, c0:c1] = sum_d x[i, d] * float32(W[d, c0:c1]) for i < m, d < w.rows: W NOT transposed.
using MatmulXwFn = void (*)(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy,
                            int64_t c0, int64_t c1);

// y[i] += a * x[i] for i < n (weighted scatter of expert outputs). a == 1 adds exactly.
using AxpyFn = void (*)(float a, const float* x, float* y, int64_t n);
// out[i, 0..kpad) = BF16(x[i, 0..k)) rounded to nearest even, zero in [k, kpad). BF16 tables only.
using ConvertBf16Fn = void (*)(const float* x, int64_t m, int64_t k, int64_t ldx, uint16_t* out, int64_t kpad);

struct KernelTable {
    MatmulRowsFn matmul_rows;
    DecodeRowFn decode_row;
    RmsnormRowsFn rmsnorm_rows;
    SiluMulFn silu_mul;
    AxpyFn axpy;
    MatmulXwFn matmul_xw;
    AttentionFn attention;  // nullptr: the generic loop in mla_ops.cc
    ConvertBf16Fn convert_bf16;  // nullptr: no fast path on this ISA
};

const KernelTable& scalar_table();
const KernelTable& avx2_table();
const KernelTable& avx512_table();
const KernelTable& avx512bf16_table();
const KernelTable& amx_table();
// The table of the active ISA (set_isa / DS_ISA).
const KernelTable& active_table();

// A per-thread, 64-byte aligned scratch buffer of at least `bytes` (grows, never shrinks; lives as
// long as the thread). Defined in dispatch.cc so no ISA-flagged file instantiates library code.
// Independent slots, so nested users do not clobber each other:
//   0, 1: inside matmul_rows (GEMM panel, staging rows); 2: the driver's BF16 copy of x;
//   3: fused ops around matmul_rows (SwiGLU gate/up, MoE down-projection tiles); 4, 5: attention;
//   6, 7: moe_ffn's gathered inputs and activations (calling thread).
//   8: the FP8 lookup tables of the fast path (simd_fp8_lut.inc), inside matmul_rows.
constexpr int kScratchSlots = 9;
void* thread_scratch(int slot, size_t bytes);

// Row stride of a BF16 copy of x with k columns (a multiple of 32: whole vectors, zero padded).
int64_t bf16_stride(int64_t k);
// Whether a matmul on weights of dtype `w` takes the BF16 path under `numerics` on table `t`.
bool use_bf16(const KernelTable& t, Numerics numerics, DType w);

// The BF16 copies of the inputs of a batch of matmuls (fast numerics), in the calling thread's
// scratch slot 2; identical inputs are converted once. get(i) is nullptr where not wanted.
class Bf16Inputs {
public:
    struct Input {
        bool wanted = false;
        const float* x = nullptr;
        int64_t m = 0, k = 0, ldx = 0;
    };
    void prepare(const KernelTable& t, std::span<const Input> inputs);
    const uint16_t* get(size_t i) const { return i < offsets_.size() && offsets_[i] >= 0 ? base_ + offsets_[i] : nullptr; }

private:
    std::vector<int64_t> offsets_;
    uint16_t* base_ = nullptr;
};

}  // namespace deepshard::kernels::cpu
