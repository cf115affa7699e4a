// Runtime ISA selection, per-thread scratch and the element-wise entry points (the matmul drivers
// are in matmul_driver.cc). Compiled for baseline x86-64; the AVX2/AVX-512 tables are only touched
// after cpuid says the CPU (and OS) supports them.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>

#if defined(__x86_64__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "common/env.h"
#include "common/status.h"
#include "common/thread_pool.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/kernels.h"

namespace deepshard::kernels {
namespace {

// AMX-TILE and AMX-BF16 per cpuid, and the kernel's permission for this process to use the tile
// data state (Linux >= 5.16 hands it out only on request; using a tile without it is SIGILL).
// The permission covers every thread of the process, present and future.
bool amx_usable() {
#if defined(__x86_64__)
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    const bool tile = (d >> 24) & 1u, bf16 = (d >> 22) & 1u;
    if (!tile || !bf16) return false;
    constexpr long kArchGetXcompPerm = 0x1022, kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0) return false;
    unsigned long long perm = 0;
    if (syscall(SYS_arch_prctl, kArchGetXcompPerm, &perm) != 0) return false;
    return (perm >> kXfeatureXtiledata) & 1u;
#else
    return false;
#endif
}

Isa detect() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    // F16C is implied by every AVX2 CPU shipped; the AVX2 kernels use vcvtph2ps for the FP8 decode.
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (avx512) {
        // The BF16 tables also use AVX512-VBMI (the FP8 lookups, simd_fp8_lut.inc). Every CPU with
        // AVX512-BF16 has it except Cooper Lake, which runs the avx512 table (fast == exact there).
        if (!__builtin_cpu_supports("avx512bf16") || !__builtin_cpu_supports("avx512vbmi")) return Isa::kAvx512;
        return amx_usable() ? Isa::kAmx : Isa::kAvx512Bf16;
    }
    if (avx2) {
        return Isa::kAvx2;
    }
#endif
    return Isa::kScalar;
}

Isa parse_isa(const std::string& s, Isa fallback) {
    if (s == "scalar") return Isa::kScalar;
    if (s == "avx2") return Isa::kAvx2;
    if (s == "avx512") return Isa::kAvx512;
    if (s == "avx512bf16") return Isa::kAvx512Bf16;
    if (s == "amx") return Isa::kAmx;
    return fallback;
}

Isa initial_isa() {
    const Isa det = detected_isa();
    const Isa want = parse_isa(env_str("DS_ISA"), det);
    // Never run an ISA the CPU lacks, whatever DS_ISA says.
    return static_cast<int>(want) <= static_cast<int>(det) ? want : det;
}

std::atomic<int>& isa_slot() {
    static std::atomic<int> slot{static_cast<int>(initial_isa())};
    return slot;
}

const cpu::KernelTable& table() {
    switch (static_cast<Isa>(isa_slot().load(std::memory_order_relaxed))) {
        case Isa::kAmx:
            return cpu::amx_table();
        case Isa::kAvx512Bf16:
            return cpu::avx512bf16_table();
        case Isa::kAvx512:
            return cpu::avx512_table();
        case Isa::kAvx2:
            return cpu::avx2_table();
        case Isa::kScalar:
            break;
    }
    return cpu::scalar_table();
}

}  // namespace

const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::kScalar:
            return "scalar";
        case Isa::kAvx2:
            return "avx2";
        case Isa::kAvx512:
            return "avx512";
        case Isa::kAvx512Bf16:
            return "avx512bf16";
        case Isa::kAmx:
            return "amx";
    }
    return "?";
}

Isa detected_isa() {
    static const Isa isa = detect();
    return isa;
}

Isa active_isa() { return static_cast<Isa>(isa_slot().load(std::memory_order_relaxed)); }

void set_isa(Isa isa) {
    DS_CHECK(static_cast<int>(isa) <= static_cast<int>(detected_isa()))
        << "set_isa(" << isa_name(isa) << ") but the CPU only supports " << isa_name(detected_isa());
    isa_slot().store(static_cast<int>(isa), std::memory_order_relaxed);
}

void gather_rows(const WeightView& w, const int32_t* rows, int64_t n, float* out, int64_t ldo) {
    DS_CHECK(w.valid() && ldo >= w.cols) << "gather_rows: bad arguments";
    const cpu::KernelTable& t = table();
    ThreadPool::global().parallel_for(n, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
            DS_CHECK(rows[i] >= 0 && rows[i] < w.rows) << "gather_rows: row " << rows[i] << " out of range";
            t.decode_row(w, rows[i], out + i * ldo);
        }
    });
}

void rmsnorm(const float* x, int64_t m, int64_t n, int64_t ldx, const float* w, float eps, float* y, int64_t ldy) {
    const cpu::KernelTable& t = table();
    // Small rows: not worth waking the pool for fewer than ~64K elements.
    if (m * n < (1 << 16)) {
        t.rmsnorm_rows(x, n, ldx, w, eps, y, ldy, 0, m);
        return;
    }
    ThreadPool::global().parallel_for(m, [&](int64_t b, int64_t e) { t.rmsnorm_rows(x, n, ldx, w, eps, y, ldy, b, e); });
}

void silu_mul(const float* gate, const float* up, int64_t n, float* out) {
    const cpu::KernelTable& t = table();
    if (n < (1 << 16)) {
        t.silu_mul(gate, up, out, 0, n);
        return;
    }
    ThreadPool::global().parallel_for(n, [&](int64_t b, int64_t e) { t.silu_mul(gate, up, out, b, e); }, 64);
}

const char* numerics_name(Numerics n) { return n == Numerics::kFast ? "fast" : "exact"; }

bool parse_numerics(std::string_view s, Numerics* out) {
    if (s == "exact") {
        *out = Numerics::kExact;
        return true;
    }
    if (s == "fast") {
        *out = Numerics::kFast;
        return true;
    }
    return false;
}

bool fast_is_exact() { return table().convert_bf16 == nullptr; }

namespace cpu {

const KernelTable& active_table() { return table(); }

void* thread_scratch(int slot, size_t bytes) {
    struct Scratch {
        void* p[kScratchSlots] = {};
        size_t size[kScratchSlots] = {};
        ~Scratch() {
            for (void* q : p) std::free(q);
        }
    };
    thread_local Scratch s;
    DS_CHECK(slot >= 0 && slot < kScratchSlots) << "thread_scratch: bad slot " << slot;
    if (s.size[slot] < bytes) {
        std::free(s.p[slot]);
        s.size[slot] = (bytes + 4095) & ~size_t{4095};
        s.p[slot] = std::aligned_alloc(64, s.size[slot]);
        DS_CHECK(s.p[slot] != nullptr) << "out of memory for a " << s.size[slot] << "-byte kernel scratch buffer";
    }
    return s.p[slot];
}

}  // namespace cpu
}  // namespace deepshard::kernels
