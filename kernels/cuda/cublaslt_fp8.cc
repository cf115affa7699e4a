// cuBLASLt FP8 block-scaled GEMM (see cublaslt_fp8.h): plan cache, scale repacking and the on-device
// self-test that picks the scale layouts. Plain C++ against the runtime and cuBLASLt.
#include "kernels/cuda/cublaslt_fp8.h"

#include <cmath>
#include <random>
#include <vector>

#include "common/dtype.h"
#include "common/logging.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/launch_util.h"

namespace deepshard::kernels::cuda {

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

struct Desc {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulPreference_t pref = nullptr;
    ~Desc() {
        if (pref) cublasLtMatmulPreferenceDestroy(pref);
        if (c) cublasLtMatrixLayoutDestroy(c);
        if (b) cublasLtMatrixLayoutDestroy(b);
        if (a) cublasLtMatrixLayoutDestroy(a);
        if (op) cublasLtMatmulDescDestroy(op);
    }
};

}  // namespace

struct Fp8Gemm::Plan {
    Desc d;
    cublasLtMatmulAlgo_t algo{};
    int64_t m_pad = 0, n = 0, k = 0;
    bool f32_output = true;
};

std::string describe(const Fp8GemmConfig& c) {
    std::string s = c.weight_layout == Fp8WeightScaleLayout::kBlocksKInner ? "weight scales [n/128][k/128" : "weight scales [k/128][n/128";
    s += c.weight_padded ? " pad 4]" : "]";
    s += c.act_layout == Fp8ActScaleLayout::kTokensInner ? ", activation scales [k/128][m]" : ", activation scales [m][k/128";
    if (c.act_layout == Fp8ActScaleLayout::kBlocksInner) s += c.act_padded ? " pad 4]" : "]";
    s += c.f32_output ? ", fp32 output" : ", bf16 output";
    return s;
}

int64_t fp8_padded_rows(int64_t m) {
    if (m <= 16) return 16;
    if (m <= 256) {
        int64_t p = 16;
        while (p < m) p *= 2;
        return p;
    }
    return round_up(m, 256);
}

bool fp8_lt_compatible(const WeightView& w) {
    return w.valid() && w.dtype == DType::kF8E4M3 && w.scale != nullptr && w.block_rows == 128 &&
           w.block_cols == 128 && w.row_offset % 128 == 0 && w.col_offset % 128 == 0 && w.cols % 128 == 0 &&
           w.rows % 16 == 0 && w.ld % 16 == 0 && reinterpret_cast<uintptr_t>(w.data) % 16 == 0;
}

int64_t fp8_weight_scale_floats(const WeightView& w, const Fp8GemmConfig& c) {
    const int64_t nb = ceil_div(w.rows, 128), kb = ceil_div(w.cols, 128);
    if (c.weight_layout == Fp8WeightScaleLayout::kBlocksKInner) return nb * (c.weight_padded ? round_up(kb, 4) : kb);
    return kb * (c.weight_padded ? round_up(nb, 4) : nb);
}

void pack_weight_scales_host(const WeightView& w, const float* grid, const Fp8GemmConfig& c, float* out) {
    const int64_t nb = ceil_div(w.rows, 128), kb = ceil_div(w.cols, 128);
    const int64_t r0 = w.row_offset / 128, c0 = w.col_offset / 128;
    const bool k_inner = c.weight_layout == Fp8WeightScaleLayout::kBlocksKInner;
    const int64_t inner = k_inner ? (c.weight_padded ? round_up(kb, 4) : kb) : (c.weight_padded ? round_up(nb, 4) : nb);
    const int64_t outer = k_inner ? nb : kb;
    for (int64_t o = 0; o < outer; ++o) {
        for (int64_t i = 0; i < inner; ++i) {
            const int64_t bn = k_inner ? o : i, bk = k_inner ? i : o;
            out[o * inner + i] = (bn < nb && bk < kb) ? grid[(r0 + bn) * w.scale_ld + c0 + bk] : 1.0f;
        }
    }
}

Fp8Gemm::~Fp8Gemm() = default;

StatusOr<Fp8Gemm::Plan*> Fp8Gemm::plan(int64_t m_pad, int64_t n, int64_t k, int64_t lda, int64_t ldy,
                                       bool accumulate) {
    const auto key = std::make_tuple(m_pad, n, k, lda, ldy, accumulate);
    auto it = plans_.find(key);
    if (it != plans_.end()) return it->second.get();
    auto p = std::make_unique<Plan>();
    p->m_pad = m_pad;
    p->n = n;
    p->k = k;
    p->f32_output = config_.f32_output;
    DS_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescCreate(&p->d.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    DS_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(p->d.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    DS_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(p->d.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    const int32_t a_mode = CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F, b_mode = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
    DS_CUBLAS_RETURN_IF_ERROR(
        cublasLtMatmulDescSetAttribute(p->d.op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &a_mode, sizeof(a_mode)));
    DS_CUBLAS_RETURN_IF_ERROR(
        cublasLtMatmulDescSetAttribute(p->d.op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &b_mode, sizeof(b_mode)));
    // Placeholder scale pointers for the heuristic; gemm() sets the real ones per call.
    const void* sa = act_scale_.get();
    DS_CUBLAS_RETURN_IF_ERROR(
        cublasLtMatmulDescSetAttribute(p->d.op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sa, sizeof(sa)));
    DS_CUBLAS_RETURN_IF_ERROR(
        cublasLtMatmulDescSetAttribute(p->d.op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sa, sizeof(sa)));
    const cudaDataType_t out_type = config_.f32_output ? CUDA_R_32F : CUDA_R_16BF;
    DS_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&p->d.a, CUDA_R_8F_E4M3, k, n, lda));
    DS_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&p->d.b, CUDA_R_8F_E4M3, k, m_pad, k));
    DS_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&p->d.c, out_type, n, m_pad, config_.f32_output ? ldy : n));
    DS_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulPreferenceCreate(&p->d.pref));
    const uint64_t ws = handle_->workspace_bytes();
    DS_CUBLAS_RETURN_IF_ERROR(
        cublasLtMatmulPreferenceSetAttribute(p->d.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    cublasLtMatmulHeuristicResult_t heur{};
    int found = 0;
    DS_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulAlgoGetHeuristic(handle_->get(), p->d.op, p->d.a, p->d.b, p->d.c, p->d.c,
                                                             p->d.pref, 1, &heur, &found));
    if (found == 0) {
        return unavailable("cuBLASLt has no FP8 block-scaled algorithm for m=" + std::to_string(m_pad) +
                           " n=" + std::to_string(n) + " k=" + std::to_string(k) + " (" + describe(config_) + ")");
    }
    (void)accumulate;
    p->algo = heur.algo;
    Plan* raw = p.get();
    plans_[key] = std::move(p);
    return raw;
}

Status Fp8Gemm::gemm(const WeightView& w, const float* scales, const float* x, int64_t m, int64_t ldx, float* y,
                     int64_t ldy, bool accumulate, cudaStream_t stream) {
    const char* op = "fp8_gemm";
    if (!fp8_lt_compatible(w)) {
        return internal::bad_arg(op, "weight is not FP8 with an aligned 128x128 grid, k % 128, n % 16 (n " +
                                         std::to_string(w.rows) + ", k " + std::to_string(w.cols) + ")");
    }
    const int64_t n = w.rows, k = w.cols;
    if (m < 0 || m > max_m_ || k > max_k_ || n > max_n_ || ldx < k || ldy < n || ldy % 4 != 0 ||
        (m > 0 && (x == nullptr || y == nullptr || scales == nullptr))) {
        return internal::bad_arg(op, "need 0 <= m <= " + std::to_string(max_m_) + ", k <= " + std::to_string(max_k_) + ", n <= " + std::to_string(max_n_) +
                                         ", ldx >= k, ldy >= n with ldy % 4 == 0 and non-null pointers");
    }
    if (m == 0) return ok_status();
    const int64_t m_pad = fp8_padded_rows(m);
    DS_ASSIGN_OR_RETURN(Plan * p, plan(m_pad, n, k, w.ld, ldy, accumulate));
    const bool m_major = config_.act_layout == Fp8ActScaleLayout::kTokensInner;
    auto* q = act_q_.as<uint8_t>();
    auto* sx = act_scale_.as<float>();
    if (!m_major && config_.act_padded && (k / 128) % 4 != 0) {
        // Padded [m][kb_pad] scales: quantize with kb scales per row into a staging area, then spread.
        return internal::bad_arg(op, "padded token-row activation scales are not supported for k/128 % 4 != 0");
    }
    DS_RETURN_IF_ERROR(quantize_fp8_act(x, m, m_pad, k, ldx, q, sx, m_major, stream));
    DS_CUBLAS_RETURN_IF_ERROR(
        cublasLtMatmulDescSetAttribute(p->d.op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &scales, sizeof(scales)));
    const void* bs = sx;
    DS_CUBLAS_RETURN_IF_ERROR(
        cublasLtMatmulDescSetAttribute(p->d.op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &bs, sizeof(bs)));
    const float alpha = 1.0f;
    if (config_.f32_output) {
        const float beta = accumulate ? 1.0f : 0.0f;
        DS_CUBLAS_RETURN_IF_ERROR(cublasLtMatmul(handle_->get(), p->d.op, &alpha, w.data, p->d.a, q, p->d.b, &beta, y,
                                                 p->d.c, y, p->d.c, &p->algo, handle_->workspace(),
                                                 handle_->workspace_bytes(), stream));
        return ok_status();
    }
    const float beta = 0.0f;
    auto* ob = out_bf16_.as<uint16_t>();
    DS_CUBLAS_RETURN_IF_ERROR(cublasLtMatmul(handle_->get(), p->d.op, &alpha, w.data, p->d.a, q, p->d.b, &beta, ob,
                                             p->d.c, ob, p->d.c, &p->algo, handle_->workspace(),
                                             handle_->workspace_bytes(), stream));
    return widen_bf16(ob, m, n, n, y, ldy, accumulate, stream);
}

// One candidate configuration on a small problem: m = 12 (padded rows), n = 256 (2 row blocks),
// k = 384 (3 column blocks: the padded and unpadded grids differ), non-uniform weight scales and
// activation rows / blocks of very different magnitudes, so a misread scale changes the result by O(1).
Status Fp8Gemm::try_config(const Fp8GemmConfig& c, cudaStream_t stream, std::string* why) {
    config_ = c;
    plans_.clear();
    const int64_t m = 12, n = 256, k = 384;
    std::mt19937 rng(1234);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::uniform_int_distribution<int> code(0, 0x7e), expo(-3, 3);
    std::vector<uint8_t> wq(n * k);
    for (auto& v : wq) v = static_cast<uint8_t>(code(rng) | (rng() & 1 ? 0x80 : 0));
    const int64_t nb = n / 128, kb = k / 128;
    std::vector<float> grid(nb * kb);
    for (auto& v : grid) v = std::ldexp(1.0f + 0.25f * static_cast<float>(rng() % 4), expo(rng));
    std::vector<float> x(m * k);
    for (int64_t i = 0; i < m; ++i) {
        for (int64_t b = 0; b < kb; ++b) {
            const float mag = std::ldexp(1.0f, expo(rng));
            for (int64_t j = 0; j < 128; ++j) x[i * k + b * 128 + j] = nd(rng) * mag;
        }
    }
    WeightView hw;
    hw.dtype = DType::kF8E4M3;
    hw.data = wq.data();
    hw.rows = n;
    hw.cols = k;
    hw.ld = k;
    hw.scale = grid.data();
    hw.scale_ld = kb;
    std::vector<float> packed(static_cast<size_t>(fp8_weight_scale_floats(hw, c)));
    pack_weight_scales_host(hw, grid.data(), c, packed.data());

    DS_ASSIGN_OR_RETURN(DeviceBuffer dw, DeviceBuffer::create(wq.size()));
    DS_ASSIGN_OR_RETURN(DeviceBuffer ds, DeviceBuffer::create(packed.size() * 4));
    DS_ASSIGN_OR_RETURN(DeviceBuffer dx, DeviceBuffer::create(x.size() * 4));
    DS_ASSIGN_OR_RETURN(DeviceBuffer dy, DeviceBuffer::create(fp8_padded_rows(m) * n * 4));
    DS_RETURN_IF_ERROR(dw.upload(wq.data(), wq.size()));
    DS_RETURN_IF_ERROR(ds.upload(packed.data(), packed.size() * 4));
    DS_RETURN_IF_ERROR(dx.upload(x.data(), x.size() * 4));
    WeightView dev = hw;
    dev.data = dw.get();
    dev.scale = ds.as<float>();  // only its non-nullness is checked on this path
    Status s = gemm(dev, ds.as<float>(), dx.as<float>(), m, k, dy.as<float>(), n, false, stream);
    if (!s.ok()) {
        *why = s.message();
        return s;
    }
    DS_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
    std::vector<float> y(m * n);
    DS_RETURN_IF_ERROR(dy.download(y.data(), y.size() * 4));
    // The activations exactly as quantize_fp8_act quantized them (same arithmetic on the host).
    double err = 0, ref_norm = 0;
    for (int64_t i = 0; i < m; ++i) {
        std::vector<double> xa(k);
        for (int64_t b = 0; b < kb; ++b) {
            float amax = 0;
            for (int64_t j = 0; j < 128; ++j) amax = std::max(amax, std::fabs(x[i * k + b * 128 + j]));
            const float sc = amax > 0 ? amax / 448.0f : 1.0f;
            for (int64_t j = 0; j < 128; ++j) {
                xa[b * 128 + j] = static_cast<double>(e4m3_to_f32(f32_to_e4m3(x[i * k + b * 128 + j] / sc))) * sc;
            }
        }
        for (int64_t r = 0; r < n; ++r) {
            double acc = 0;
            for (int64_t j = 0; j < k; ++j) {
                acc += xa[j] * e4m3_to_f32(wq[r * k + j]) * grid[(r / 128) * kb + j / 128];
            }
            const double d = y[i * n + r] - acc;
            err += d * d;
            ref_norm += acc * acc;
        }
    }
    const double rel = std::sqrt(err / std::max(ref_norm, 1e-30));
    if (!(rel < 1e-3)) {
        *why = describe(c) + ": relative error " + std::to_string(rel);
        return internal::bad_arg("fp8_gemm self-test", *why);
    }
    return ok_status();
}

StatusOr<std::unique_ptr<Fp8Gemm>> Fp8Gemm::create(const CublasLtHandle* handle, int64_t max_m, int64_t max_k,
                                                   int64_t max_n, cudaStream_t stream) {
    if (handle == nullptr || handle->get() == nullptr) return invalid_argument("Fp8Gemm: empty cuBLASLt handle");
    if (max_m <= 0 || max_k <= 0 || max_k % 128 != 0 || max_n <= 0) {
        return invalid_argument("Fp8Gemm: max_m, max_n > 0 and max_k a positive multiple of 128 required");
    }
    int device = 0, major = 0;
    DS_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
    DS_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    if (major < 9) {
        return unavailable("FP8 block-scaled GEMM needs compute capability 9.0 (device " + std::to_string(device) +
                           " is " + std::to_string(major) + ".x)");
    }
    std::unique_ptr<Fp8Gemm> g(new Fp8Gemm());
    g->handle_ = handle;
    g->max_m_ = max_m;
    g->max_k_ = std::max<int64_t>(max_k, 384);
    g->max_n_ = std::max<int64_t>(max_n, 256);
    const int64_t rows = fp8_padded_rows(std::max<int64_t>(max_m, 12));
    DS_ASSIGN_OR_RETURN(g->act_q_, DeviceBuffer::create(static_cast<size_t>(rows * g->max_k_)));
    DS_ASSIGN_OR_RETURN(g->act_scale_, DeviceBuffer::create(static_cast<size_t>(rows * round_up(g->max_k_ / 128, 4)) * 4));
    std::string tried;
    for (bool f32 : {true, false}) {
        for (const auto& [wl, wpad] : {std::pair{Fp8WeightScaleLayout::kBlocksKInner, true},
                                       std::pair{Fp8WeightScaleLayout::kBlocksKInner, false},
                                       std::pair{Fp8WeightScaleLayout::kBlocksNInner, true},
                                       std::pair{Fp8WeightScaleLayout::kBlocksNInner, false}}) {
            for (const auto& [al, apad] : {std::pair{Fp8ActScaleLayout::kTokensInner, false},
                                           std::pair{Fp8ActScaleLayout::kBlocksInner, false}}) {
                Fp8GemmConfig c;
                c.weight_layout = wl;
                c.weight_padded = wpad;
                c.act_layout = al;
                c.act_padded = apad;
                c.f32_output = f32;
                if (!f32 && g->out_bf16_.bytes() == 0) {
                    DS_ASSIGN_OR_RETURN(g->out_bf16_, DeviceBuffer::create(static_cast<size_t>(rows * g->max_n_) * 2));
                }
                std::string why;
                Status s = g->try_config(c, stream, &why);
                cudaGetLastError();  // a failed trial leaves no sticky state behind
                if (s.ok()) {
                    g->plans_.clear();
                    spdlog::info("cuda: FP8 block-scaled cuBLASLt GEMM verified ({})", describe(c));
                    return g;
                }
                tried += "\n  " + (why.empty() ? describe(c) + ": " + s.message() : why);
            }
        }
    }
    return unavailable("cuBLASLt FP8 block-scaled GEMM failed its self-test in every scale layout:" + tried);
}

}  // namespace deepshard::kernels::cuda
