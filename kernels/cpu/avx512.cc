// AVX-512 (F/BW/VL/DQ) kernels; compiled with -mavx512* (see kernels/CMakeLists.txt) and only
// reached when cpuid reports AVX-512. Also serves Isa::kAvx512Bf16: the default path stays exact
// fp32, so BF16 dot-product instructions (which round activations) are not used here.
#include <immintrin.h>

#include "kernels/cpu/cpu_kernels.h"

namespace deepshard::kernels::cpu {
namespace {

struct Simd {
    using V = __m512;
    static constexpr int kW = 16;
    static constexpr int kMaxAcc = 16;     // accumulators per register tile (of 32 zmm)
    static constexpr int kMaxMr = 8;       // rows of x per register tile
    static constexpr int kDirectMaxM = 16; // up to here W is decoded straight into registers
    static constexpr int kPanelMr = 4;     // 4x4 tiles from the dequantized panel

    static __mmask16 mask(int n) { return static_cast<__mmask16>((1u << n) - 1u); }
    static V zero() { return _mm512_setzero_ps(); }
    static V set1(float v) { return _mm512_set1_ps(v); }
    static V load(const float* p) { return _mm512_loadu_ps(p); }
    static V load_n(const float* p, int n) { return _mm512_maskz_loadu_ps(mask(n), p); }
    static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
    static void store_n(float* p, V v, int n) { _mm512_mask_storeu_ps(p, mask(n), v); }
    static V add(V a, V b) { return _mm512_add_ps(a, b); }
    static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
    static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
    static float hsum(V a) { return _mm512_reduce_add_ps(a); }

    static V widen_bf16(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
    static V bf16(const uint16_t* p) { return widen_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
    static V bf16_n(const uint16_t* p, int n) { return widen_bf16(_mm256_maskz_loadu_epi16(mask(n), p)); }
    static V f16(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
    static V f16_n(const uint16_t* p, int n) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask(n), p)); }
    // e4m3 byte b -> f16 bits ((b + (b & 0x80)) << 7): sign to bit 15, exponent/mantissa to 13..7.
    // The f16 value is e4m3(b) * 2^-8 exactly (subnormals included).
    static V widen_fp8(__m128i b) {
        const __m256i w = _mm256_cvtepu8_epi16(b);
        const __m256i h = _mm256_slli_epi16(_mm256_add_epi16(w, _mm256_and_si256(w, _mm256_set1_epi16(0x80))), 7);
        return _mm512_cvtph_ps(h);
    }
    static V fp8(const uint8_t* p) { return widen_fp8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
    static V fp8_n(const uint8_t* p, int n) { return widen_fp8(_mm_maskz_loadu_epi8(mask(n), p)); }
};

#include "kernels/cpu/simd_kernels.inc"

}  // namespace

const KernelTable& avx512_table() {
    static const KernelTable t{matmul_rows, decode_row, rmsnorm_rows, scalar_table().silu_mul};
    return t;
}

}  // namespace deepshard::kernels::cpu
