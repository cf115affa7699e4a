// Device-side weight loading shared by the GEMM kernels (internal; .cu files only): one element in its
// stored dtype (exactly WeightView::at) and 16-byte vector loads decoded to fp32.
#pragma once

#include <cuda_runtime.h>

#include "kernels/cuda/device_math.h"

namespace deepshard::kernels::cuda::internal {

template <DevDType DT>
__device__ __forceinline__ float load_w(const DevWeight& w, int64_t r, int64_t c) {
    const int64_t i = r * w.ld + c;
    if constexpr (DT == DevDType::kF32) {
        return static_cast<const float*>(w.data)[i];
    } else if constexpr (DT == DevDType::kBF16) {
        return decode_bf16(static_cast<const uint16_t*>(w.data)[i]);
    } else if constexpr (DT == DevDType::kF16) {
        return decode_f16(static_cast<const uint16_t*>(w.data)[i]);
    } else {
        return decode_e4m3(static_cast<const uint8_t*>(w.data)[i]) * weight_scale(w, r, c);
    }
}

template <DevDType DT>
__host__ __device__ constexpr int elem_size() {
    return DT == DevDType::kF32 ? 4 : (DT == DevDType::kF8E4M3 ? 1 : 2);
}

// Decodes the kVec = 16 / sizeof(element) weights of one 16-byte load (times `scale` for FP8).
template <DevDType DT>
struct Vec16;
template <>
struct Vec16<DevDType::kF32> {
    static constexpr int kVec = 4;
    __device__ static void decode(const uint4& u, float, float* out) {
        out[0] = __uint_as_float(u.x);
        out[1] = __uint_as_float(u.y);
        out[2] = __uint_as_float(u.z);
        out[3] = __uint_as_float(u.w);
    }
};
template <>
struct Vec16<DevDType::kBF16> {
    static constexpr int kVec = 8;
    __device__ static void decode(const uint4& u, float, float* out) {
        const uint32_t v[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            out[2 * i] = __uint_as_float(v[i] << 16);
            out[2 * i + 1] = __uint_as_float(v[i] & 0xffff0000u);
        }
    }
};
template <>
struct Vec16<DevDType::kF16> {
    static constexpr int kVec = 8;
    __device__ static void decode(const uint4& u, float, float* out) {
        const uint32_t v[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            out[2 * i] = decode_f16(static_cast<uint16_t>(v[i] & 0xffffu));
            out[2 * i + 1] = decode_f16(static_cast<uint16_t>(v[i] >> 16));
        }
    }
};
template <>
struct Vec16<DevDType::kF8E4M3> {
    static constexpr int kVec = 16;
    __device__ static void decode(const uint4& u, float scale, float* out) {
        const uint32_t v[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
#pragma unroll
            for (int b = 0; b < 4; ++b) out[4 * i + b] = decode_e4m3(static_cast<uint8_t>(v[i] >> (8 * b))) * scale;
        }
    }
};

// The 16 bytes of row r starting at column c (c a multiple of kVec; see weight_vec_ok).
template <DevDType DT>
__device__ __forceinline__ uint4 load_w16(const DevWeight& w, int64_t r, int64_t c) {
    const char* p = static_cast<const char*>(w.data) + (r * w.ld + c) * elem_size<DT>();
    return __ldg(reinterpret_cast<const uint4*>(p));
}

}  // namespace deepshard::kernels::cuda::internal
