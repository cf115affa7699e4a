// AVX2 + FMA + F16C kernels; compiled with -mavx2 -mfma -mf16c (see kernels/CMakeLists.txt) and
// only reached when cpuid reports AVX2 and FMA. Same algorithms as avx512.cc at 8 lanes; tails use
// maskload/maskstore for fp32 and a zero-filled copy for the narrow weight types. No BF16 dot
// products on AVX2: the fast numerics mode computes exactly what exact does here.
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
    static constexpr int kGemmMr = 6;      // GEMM micro tile: 6 x rows x 2 vectors (12 accumulators)
    static constexpr int kGemmNv = 2;
    static constexpr int kAttnMr = 2;      // attention: 2 rows x 4 vectors (8 accumulators)

    static __m256i mask(int n) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMaskTable + 8 - n)); }
    static V zero() { return _mm256_setzero_ps(); }
    static V set1(float v) { return _mm256_set1_ps(v); }
    static V load(const float* p) { return _mm256_loadu_ps(p); }
    static V load_n(const float* p, int n) { return _mm256_maskload_ps(p, mask(n)); }
    static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
    static void store_n(float* p, V v, int n) { _mm256_maskstore_ps(p, mask(n), v); }
    static V add(V a, V b) { return _mm256_add_ps(a, b); }
    static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
    static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
    static V div(V a, V b) { return _mm256_div_ps(a, b); }
    static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
    static V min(V a, V b) { return _mm256_min_ps(a, b); }
    static V max(V a, V b) { return _mm256_max_ps(a, b); }
    static V round(V a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
    static V pow2i(V n) {
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
    }
    static float hsum(V a) {
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        return _mm_cvtss_f32(s);
    }
    static float hmax(V a) {
        __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        s = _mm_max_ss(s, _mm_movehdup_ps(s));
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
    // e4m3 bytes -> float32 e4m3(b) * 2^-120 by bit operations (see simd_kernels.inc).
    static V widen_fp8(__m128i b) {
        const __m256i v = _mm256_slli_epi32(_mm256_cvtepi8_epi32(b), 20);
        return _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(static_cast<int>(0x87F00000u))));
    }
    static V fp8raw(const uint8_t* p) { return widen_fp8(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))); }
    static V fp8raw_n(const uint8_t* p, int n) {
        alignas(16) uint8_t t[16] = {};
        for (int i = 0; i < n; ++i) t[i] = p[i];
        return widen_fp8(_mm_load_si128(reinterpret_cast<const __m128i*>(t)));
    }

    // In-place transpose of an 8 x 8 block of 32-bit elements (r[i] = row i).
    static void transpose(V* r) {
        const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
        const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
        const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
        const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
        const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
        const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
        const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
        const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
        r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
        r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
        r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
        r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
        r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
        r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
        r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
        r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
    }
};

#define DS_SIMD_BF16 0
#define DS_SIMD_AMX 0
#include "kernels/cpu/simd_kernels.inc"

}  // namespace

const KernelTable& avx2_table() {
    static const KernelTable t{matmul_rows, decode_row, rmsnorm_rows, silu_mul, axpy, matmul_xw, attention, nullptr};
    return t;
}

}  // namespace deepshard::kernels::cpu
