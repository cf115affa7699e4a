// The matmul entry points (kernels.h): argument checks, the BF16 copy of the inputs for the fast
// path, cutting the weight rows of one or many matmuls into blocks, and running all blocks in one
// parallel region where each thread claims the next free block (common/thread_pool.h).
#include <algorithm>
#include <vector>

#include "common/status.h"
#include "common/thread_pool.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/kernels.h"

namespace deepshard::kernels {
namespace {

void check_weight(const WeightView& w, const char* what) {
    DS_CHECK(w.valid()) << what << ": invalid weight view";
    DS_CHECK(w.dtype == DType::kF32 || w.dtype == DType::kBF16 || w.dtype == DType::kF16 ||
             (w.dtype == DType::kF8E4M3 && w.scale != nullptr && w.block_rows > 0 && w.block_cols > 0))
        << what << ": unsupported weight dtype " << dtype_name(w.dtype);
}

// A block of W rows [r0, r1) of job `job`.
struct Unit {
    int32_t job;
    int64_t r0, r1;
};

// Rows per block: 128 (a FP8 scale block; a GEMM panel) unless that leaves fewer than 4 blocks per
// thread over all jobs, then smaller down to 16 (decode of small matrices), so that threads that
// fall behind (other processes on the core) can be helped by the others.
int64_t block_rows(int64_t total_rows, bool gemm) {
    const int64_t nt = ThreadPool::global().size();
    const int64_t floor = gemm ? 64 : 16;
    int64_t g = 128;
    while (g > floor && total_rows / g < 4 * nt) g /= 2;
    return g;
}

// Blocks of rows [0, rows) aligned to the global row grid (row_offset + r a multiple of `grain`), so
// a block never straddles a scale block needlessly.
void add_units(std::vector<Unit>& units, int32_t job, int64_t rows, int64_t row_offset, int64_t grain) {
    const int64_t skew = row_offset % grain;
    for (int64_t b = 0; b < rows;) {
        const int64_t e = std::min(rows, (b + skew) / grain * grain + grain - skew);
        units.push_back({job, b, e});
        b = e;
    }
}

void run_units(const std::vector<Unit>& units, const std::function<void(const Unit&)>& fn) {
    if (units.size() == 1) {
        fn(units[0]);
        return;
    }
    ThreadPool::global().parallel_tasks(static_cast<int64_t>(units.size()),
                                        [&](int64_t i) { fn(units[static_cast<size_t>(i)]); });
}

}  // namespace

namespace cpu {

int64_t bf16_stride(int64_t k) { return (k + 31) / 32 * 32; }

bool use_bf16(const KernelTable& t, Numerics numerics, DType w) {
    return numerics == Numerics::kFast && t.convert_bf16 != nullptr && w != DType::kF32;
}

void Bf16Inputs::prepare(const KernelTable& t, std::span<const Input> inputs) {
    offsets_.assign(inputs.size(), -1);
    int64_t total = 0;
    for (size_t i = 0; i < inputs.size(); ++i) {
        if (!inputs[i].wanted) continue;
        for (size_t j = 0; j < i; ++j) {  // the same x for several weights is converted once
            if (inputs[j].wanted && inputs[j].x == inputs[i].x && inputs[j].m == inputs[i].m &&
                inputs[j].k == inputs[i].k && inputs[j].ldx == inputs[i].ldx) {
                offsets_[i] = offsets_[j];
                break;
            }
        }
        if (offsets_[i] < 0) {
            offsets_[i] = total;
            total += inputs[i].m * bf16_stride(inputs[i].k);
        }
    }
    if (total == 0) return;
    base_ = static_cast<uint16_t*>(thread_scratch(2, static_cast<size_t>(total) * sizeof(uint16_t)));
    std::vector<int64_t> row_start;  // conversions to run: inputs whose offset is their own
    std::vector<size_t> owner;
    int64_t rows = 0;
    for (size_t i = 0; i < inputs.size(); ++i) {
        if (!inputs[i].wanted) continue;
        bool first = true;
        for (size_t j = 0; j < i; ++j) first = first && !(inputs[j].wanted && offsets_[j] == offsets_[i]);
        if (!first) continue;
        owner.push_back(i);
        row_start.push_back(rows);
        rows += inputs[i].m;
    }
    auto convert = [&](int64_t b, int64_t e) {
        for (size_t o = 0; o < owner.size(); ++o) {
            const Input& in = inputs[owner[o]];
            const int64_t lo = std::max(b, row_start[o]), hi = std::min(e, row_start[o] + in.m);
            if (lo >= hi) continue;
            const int64_t r = lo - row_start[o], kp = bf16_stride(in.k);
            t.convert_bf16(in.x + r * in.ldx, hi - lo, in.k, in.ldx, base_ + offsets_[owner[o]] + r * kp, kp);
        }
    };
    if (total < (1 << 16)) {
        convert(0, rows);
    } else {
        ThreadPool::global().parallel_for(rows, convert, 8);
    }
}

}  // namespace cpu

void matmul(const float* x, int64_t m, int64_t ldx, const WeightView& w, float* y, int64_t ldy, bool accumulate,
            Numerics numerics) {
    const MatmulJob job{x, m, ldx, &w, y, ldy, accumulate};
    matmul_batch(std::span<const MatmulJob>(&job, 1), numerics);
}

void matmul_batch(std::span<const MatmulJob> jobs, Numerics numerics) {
    const cpu::KernelTable& t = cpu::active_table();
    std::vector<cpu::Bf16Inputs::Input> inputs(jobs.size());
    int64_t total_rows = 0;
    bool gemm = false;
    for (size_t j = 0; j < jobs.size(); ++j) {
        const MatmulJob& jb = jobs[j];
        DS_CHECK(jb.w != nullptr) << "matmul: null weight";
        check_weight(*jb.w, "matmul");
        DS_CHECK(jb.m >= 0 && jb.ldx >= jb.w->cols && jb.ldy >= jb.w->rows) << "matmul: bad strides";
        inputs[j] = {jb.m > 0 && cpu::use_bf16(t, numerics, jb.w->dtype), jb.x, jb.m, jb.w->cols, jb.ldx};
        if (jb.m > 0) total_rows += jb.w->rows;
        gemm = gemm || jb.m > 16;
    }
    if (total_rows == 0) return;
    cpu::Bf16Inputs xb;
    xb.prepare(t, inputs);
    std::vector<cpu::MatmulArgs> args(jobs.size());
    std::vector<Unit> units;
    const int64_t grain = block_rows(total_rows, gemm);
    for (size_t j = 0; j < jobs.size(); ++j) {
        const MatmulJob& jb = jobs[j];
        args[j] = {jb.x, jb.m, jb.ldx, jb.w, jb.y, jb.ldy, jb.accumulate, xb.get(j), cpu::bf16_stride(jb.w->cols)};
        if (jb.m > 0) add_units(units, static_cast<int32_t>(j), jb.w->rows, jb.w->row_offset, grain);
    }
    run_units(units, [&](const Unit& u) { t.matmul_rows(args[static_cast<size_t>(u.job)], u.r0, u.r1); });
}

void swiglu(const float* x, int64_t m, int64_t ldx, const WeightView& w1, const WeightView& w3, float* out,
            int64_t ldo, Numerics numerics) {
    const SwigluJob job{x, m, ldx, &w1, &w3, out, ldo};
    swiglu_batch(std::span<const SwigluJob>(&job, 1), numerics);
}

void swiglu_batch(std::span<const SwigluJob> jobs, Numerics numerics) {
    const cpu::KernelTable& t = cpu::active_table();
    std::vector<cpu::Bf16Inputs::Input> inputs(jobs.size());
    int64_t total_rows = 0;
    bool gemm = false;
    for (size_t j = 0; j < jobs.size(); ++j) {
        const SwigluJob& jb = jobs[j];
        DS_CHECK(jb.w1 != nullptr && jb.w3 != nullptr) << "swiglu: null weight";
        check_weight(*jb.w1, "swiglu");
        check_weight(*jb.w3, "swiglu");
        DS_CHECK(jb.w1->rows == jb.w3->rows && jb.w1->cols == jb.w3->cols && jb.w1->dtype == jb.w3->dtype)
            << "swiglu: gate " << jb.w1->rows << "x" << jb.w1->cols << " and up " << jb.w3->rows << "x" << jb.w3->cols
            << " differ";
        DS_CHECK(jb.m >= 0 && jb.ldx >= jb.w1->cols && jb.ldo >= jb.w1->rows) << "swiglu: bad strides";
        inputs[j] = {jb.m > 0 && cpu::use_bf16(t, numerics, jb.w1->dtype), jb.x, jb.m, jb.w1->cols, jb.ldx};
        if (jb.m > 0) total_rows += jb.w1->rows;
        gemm = gemm || jb.m > 16;
    }
    if (total_rows == 0) return;
    cpu::Bf16Inputs xb;
    xb.prepare(t, inputs);
    std::vector<Unit> units;
    const int64_t grain = block_rows(total_rows, gemm);
    for (size_t j = 0; j < jobs.size(); ++j) {
        if (jobs[j].m > 0) add_units(units, static_cast<int32_t>(j), jobs[j].w1->rows, jobs[j].w1->row_offset, grain);
    }
    run_units(units, [&](const Unit& u) {
        const SwigluJob& jb = jobs[static_cast<size_t>(u.job)];
        const int64_t nr = u.r1 - u.r0;
        float* g = static_cast<float*>(cpu::thread_scratch(3, static_cast<size_t>(2 * jb.m * nr) * sizeof(float)));
        float* up = g + jb.m * nr;
        const WeightView v1 = jb.w1->slice_rows(u.r0, nr), v3 = jb.w3->slice_rows(u.r0, nr);
        const uint16_t* xbj = xb.get(static_cast<size_t>(u.job));
        const int64_t ldxb = cpu::bf16_stride(jb.w1->cols);
        t.matmul_rows({jb.x, jb.m, jb.ldx, &v1, g, nr, false, xbj, ldxb}, 0, nr);
        t.matmul_rows({jb.x, jb.m, jb.ldx, &v3, up, nr, false, xbj, ldxb}, 0, nr);
        for (int64_t i = 0; i < jb.m; ++i) t.silu_mul(g + i * nr, up + i * nr, jb.out + i * jb.ldo + u.r0, 0, nr);
    });
}

}  // namespace deepshard::kernels
