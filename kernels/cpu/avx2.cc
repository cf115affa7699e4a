// AVX2 + FMA + F16C kernels; compiled with -mavx2 -mfma -mf16c (see kernels/CMakeLists.txt) and
// only reached when cpuid reports AVX2 and FMA. Same algorithms as avx512.cc at 8 lanes; tails use
// maskload/maskstore for fp32 and a zero-filled copy for the narrow weight types.
#include <immintrin.h>

#include "kernels/cpu/cpu_kernels.h"

namespace deepshard::kernels::cpu {
namespace {

alignas(32) const int32_t kMaskTable[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

struct Simd {
    using V = __m256;
    static constexpr int kW = 8;
    static constexpr int kMaxAcc = 8;      // accumulators per register tile (of 16 ymm)
    static constexpr int kMaxMr = 4;
    static constexpr int kDirectMaxM = 8;
    static constexpr int kPanelMr = 2;     // 2x4 tiles from the dequantized panel

    static __m256i mask(int n) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMaskTable + 8 - n)); }
    static V zero() { return _mm256_setzero_ps(); }
    static V set1(float v) { return _mm256_set1_ps(v); }
    static V load(const float* p) { return _mm256_loadu_ps(p); }
    static V load_n(const float* p, int n) { return _mm256_maskload_ps(p, mask(n)); }
    static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
    static void store_n(float* p, V v, int n) { _mm256_maskstore_ps(p, mask(n), v); }
    static V add(V a, V b) { return _mm256_add_ps(a, b); }
    static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
    static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
    static float hsum(V a) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        return _mm_cvtss_f32(s);
    }

    static __m128i copy16(const uint16_t* p, int n) {
        alignas(16) uint16_t t[8] = {};
        for (int i = 0; i < n; ++i) t[i] = p[i];
        return _mm_load_si128(reinterpret_cast<const __m128i*>(t));
    }
    static V widen_bf16(__m128i h) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); }
    static V bf16(const uint16_t* p) { return widen_bf16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
    static V bf16_n(const uint16_t* p, int n) { return widen_bf16(copy16(p, n)); }
    static V f16(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
    static V f16_n(const uint16_t* p, int n) { return _mm256_cvtph_ps(copy16(p, n)); }
    // See avx512.cc: e4m3 -> f16 bits of value * 2^-8, exact.
    static V widen_fp8(__m128i b) {
        const __m128i w = _mm_cvtepu8_epi16(b);
        return _mm256_cvtph_ps(_mm_slli_epi16(_mm_add_epi16(w, _mm_and_si128(w, _mm_set1_epi16(0x80))), 7));
    }
    static V fp8(const uint8_t* p) { return widen_fp8(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))); }
    static V fp8_n(const uint8_t* p, int n) {
        alignas(16) uint8_t t[16] = {};
        for (int i = 0; i < n; ++i) t[i] = p[i];
        return widen_fp8(_mm_load_si128(reinterpret_cast<const __m128i*>(t)));
    }
};

#include "kernels/cpu/simd_kernels.inc"

}  // namespace

const KernelTable& avx2_table() {
    static const KernelTable t{matmul_rows, decode_row, rmsnorm_rows, scalar_table().silu_mul};
    return t;
}

}  // namespace deepshard::kernels::cpu
