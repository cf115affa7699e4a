// AVX-512 + AVX512-BF16 kernels (Isa::kAvx512Bf16): the exact path of avx512.cc plus the fast path
// (BF16 activations and weights, vdpbf16ps into float32). Compiled with -mavx512bf16 and only
// reached when cpuid reports it.
#include <immintrin.h>

#include "kernels/cpu/cpu_kernels.h"

#define DS_SIMD_BF16 1

namespace deepshard::kernels::cpu {
namespace {

#include "kernels/cpu/simd_avx512.inc"
#include "kernels/cpu/simd_kernels.inc"

// out[i, 0..kpad) = BF16(x[i, 0..k)) (RNE), zero past k.
void convert_bf16(const float* x, int64_t m, int64_t k, int64_t ldx, uint16_t* out, int64_t kpad) {
    for (int64_t i = 0; i < m; ++i) {
        const float* xi = x + i * ldx;
        uint16_t* oi = out + i * kpad;
        int64_t c = 0;
        for (; c + kW <= k; c += kW) {
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(oi + c), Simd::to_bf16(Simd::load(xi + c)));
        }
        if (c < k) {
            const int n = static_cast<int>(k - c);
            _mm256_mask_storeu_epi16(oi + c, Simd::mask(n), Simd::to_bf16(Simd::load_n(xi + c, n)));
            c = k;
        }
        for (; c < kpad; ++c) oi[c] = 0;
    }
}

}  // namespace

const KernelTable& avx512bf16_table() {
    static const KernelTable t{matmul_rows, decode_row, rmsnorm_rows, silu_mul, axpy, matmul_xw, attention, convert_bf16};
    return t;
}

}  // namespace deepshard::kernels::cpu
