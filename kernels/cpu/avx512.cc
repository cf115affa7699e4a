// AVX-512 (F/BW/VL/DQ) kernels; compiled with -mavx512* (see kernels/CMakeLists.txt) and only
// reached when cpuid reports AVX-512. Exact float32 arithmetic only: the BF16 dot products of the
// fast path live in avx512bf16.cc, compiled separately so that this object never contains an
// AVX512-BF16 instruction a CPU without it would fault on.
#include <immintrin.h>

#include "kernels/cpu/cpu_kernels.h"

#define DS_SIMD_BF16 0
#define DS_SIMD_AMX 0

namespace deepshard::kernels::cpu {
namespace {

#include "kernels/cpu/simd_avx512.inc"
#include "kernels/cpu/simd_kernels.inc"

}  // namespace

const KernelTable& avx512_table() {
    static const KernelTable t{matmul_rows, decode_row, rmsnorm_rows, silu_mul, axpy, matmul_xw, attention, nullptr};
    return t;
}

}  // namespace deepshard::kernels::cpu
