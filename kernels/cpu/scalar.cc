// Portable kernels: the fallback for CPUs without AVX2 and the simplest statement of each
// algorithm. matmul decodes one row of W at a time into a scratch row and reuses it for every row
// of x, so W is read once per call whatever m is.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/dtype.h"
#include "kernels/cpu/cpu_kernels.h"

namespace deepshard::kernels::cpu {
namespace {

void decode_row(const WeightView& w, int64_t r, float* out) {
    const int64_t k = w.cols;
    switch (w.dtype) {
        case DType::kF32:
            std::memcpy(out, static_cast<const float*>(w.data) + r * w.ld, k * sizeof(float));
            return;
        case DType::kBF16: {
            const uint16_t* p = static_cast<const uint16_t*>(w.data) + r * w.ld;
            for (int64_t c = 0; c < k; ++c) out[c] = bf16_to_f32(p[c]);
            return;
        }
        case DType::kF16: {
            const uint16_t* p = static_cast<const uint16_t*>(w.data) + r * w.ld;
            for (int64_t c = 0; c < k; ++c) out[c] = f16_to_f32(p[c]);
            return;
        }
        case DType::kF8E4M3: {
            const uint8_t* p = static_cast<const uint8_t*>(w.data) + r * w.ld;
            const float* srow = w.scale + ((w.row_offset + r) / w.block_rows) * w.scale_ld;
            // Walk the view in segments that share one scale (the view may start mid-block).
            for (int64_t c = 0; c < k;) {
                const int64_t gc = w.col_offset + c;
                const int64_t end = std::min<int64_t>(k, c + (w.block_cols - gc % w.block_cols));
                const float s = srow[gc / w.block_cols];
                for (; c < end; ++c) out[c] = e4m3_to_f32(p[c]) * s;
            }
            return;
        }
        default:
            std::memset(out, 0, k * sizeof(float));
            return;
    }
}

float dot(const float* a, const float* b, int64_t k) {
    float s[8] = {};
    int64_t c = 0;
    for (; c + 8 <= k; c += 8) {
        for (int u = 0; u < 8; ++u) s[u] += a[c + u] * b[c + u];
    }
    for (; c < k; ++c) s[0] += a[c] * b[c];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

void matmul_rows(const MatmulArgs& a, int64_t n0, int64_t n1) {
    const WeightView& w = *a.w;
    float* row = static_cast<float*>(thread_scratch(0, w.cols * sizeof(float)));
    for (int64_t j = n0; j < n1; ++j) {
        decode_row(w, j, row);
        for (int64_t i = 0; i < a.m; ++i) {
            const float v = dot(a.x + i * a.ldx, row, w.cols);
            float& out = a.y[i * a.ldy + j];
            out = a.accumulate ? out + v : v;
        }
    }
}

void rmsnorm_rows(const float* x, int64_t n, int64_t ldx, const float* w, float eps, float* y, int64_t ldy,
                  int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
        const float* xi = x + i * ldx;
        float* yi = y + i * ldy;
        const float ss = dot(xi, xi, n);
        const float inv = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
        for (int64_t c = 0; c < n; ++c) yi[c] = xi[c] * inv * w[c];
    }
}

void silu_mul(const float* gate, const float* up, float* out, int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
        const float g = gate[i];
        out[i] = g / (1.0f + std::exp(-g)) * up[i];
    }
}

void axpy(float a, const float* x, float* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// One decoded W row at a time, added into every output row.
void matmul_xw(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy, int64_t c0,
               int64_t c1) {
    float* row = static_cast<float*>(thread_scratch(0, w.cols * sizeof(float)));
    for (int64_t i = 0; i < m; ++i) std::fill(y + i * ldy + c0, y + i * ldy + c1, 0.0f);
    for (int64_t d = 0; d < w.rows; ++d) {
        decode_row(w, d, row);
        for (int64_t i = 0; i < m; ++i) {
            const float s = x[i * ldx + d];
            float* yi = y + i * ldy;
            for (int64_t c = c0; c < c1; ++c) yi[c] += s * row[c];
        }
    }
}

}  // namespace

const KernelTable& scalar_table() {
    static const KernelTable t{matmul_rows, decode_row, rmsnorm_rows, silu_mul, axpy, matmul_xw, nullptr, nullptr};
    return t;
}

}  // namespace deepshard::kernels::cpu
