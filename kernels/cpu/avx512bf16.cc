// AVX-512 + AVX512-BF16 kernels (Isa::kAvx512Bf16): the exact path of avx512.cc plus the fast path
// (BF16 activations and weights, vdpbf16ps into float32). Compiled with -mavx512bf16 -mavx512vbmi and only
// reached when cpuid reports it.
#include <immintrin.h>

#include "kernels/cpu/cpu_kernels.h"

#define DS_SIMD_BF16 1
#define DS_SIMD_AMX 0

namespace deepshard::kernels::cpu {
namespace {

#include "kernels/cpu/simd_avx512.inc"
#include "kernels/cpu/simd_kernels.inc"

}  // namespace

const KernelTable& avx512bf16_table() {
    static const KernelTable t{matmul_rows, decode_row, rmsnorm_rows, silu_mul, axpy, matmul_xw, attention, convert_bf16};
    return t;
}

}  // namespace deepshard::kernels::cpu
