// AVX-512 + AVX512-BF16 + AMX kernels (Isa::kAmx): the kernels of avx512bf16.cc, except that the
// fast path's matmuls of 9 to 16 rows run on AMX tiles with W as the A operand
// (simd_amx_gemv.inc) and those of more than 16 rows on AMX tiles over packed panels
// (simd_gemm.inc); see rows_dtype. Compiled with -mamx-tile -mamx-bf16 -mavx512vbmi and only reached when cpuid reports AMX and
// the kernel granted this process the tile data state (dispatch.cc).
#include <immintrin.h>

#include "kernels/cpu/cpu_kernels.h"

#define DS_SIMD_BF16 1
#define DS_SIMD_AMX 1

namespace deepshard::kernels::cpu {
namespace {

#include "kernels/cpu/simd_avx512.inc"
#include "kernels/cpu/simd_kernels.inc"

}  // namespace

const KernelTable& amx_table() {
    static const KernelTable t{matmul_rows, decode_row, rmsnorm_rows, silu_mul, axpy, matmul_xw, attention, convert_bf16};
    return t;
}

}  // namespace deepshard::kernels::cpu
