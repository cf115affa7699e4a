// Host-side logic of the CUDA kernels, run on the CPU (no GPU needed): the FP8 activation encoder against
// the host encoder for every representable neighbourhood, the balanced MLA decode schedule, the cuBLASLt
// FP8 scale repacking and row padding, the MoE work-list bound, and the argument checks every new
// launcher makes before touching a device.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "common/dtype.h"
#include "kernels/cuda/cublaslt_fp8.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_math.h"
#include "kernels/cuda/mla_attention.h"
#include "kernels/cuda/mla_ops.h"
#include "kernels/cuda/moe_ops.h"
#include "kernels/cuda/sampling.h"
#include "model/gpu/plan.h"

namespace deepshard::kernels::cuda {
namespace {

TEST(CudaHostLogic, EncodeE4M3MatchesTheHostEncoder) {
    // Every code's value, its neighbours' midpoints and points around them, both signs; then random floats.
    std::vector<float> probes = {0.0f, -0.0f, 448.0f, 449.0f, 464.0f, 1e9f, INFINITY, -INFINITY, NAN, 1e-30f};
    for (int c = 0; c < 0x7f; ++c) {
        const float v = e4m3_to_f32(static_cast<uint8_t>(c));
        const float next = c < 0x7e ? e4m3_to_f32(static_cast<uint8_t>(c + 1)) : 480.0f;
        const float mid = 0.5f * (v + next);
        for (float p : {v, mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e9f), std::nextafter(v, 1e9f)}) {
            probes.push_back(p);
            probes.push_back(-p);
        }
    }
    std::mt19937 rng(3);
    std::uniform_real_distribution<float> expo(-12.0f, 10.0f);
    for (int i = 0; i < 200000; ++i) probes.push_back((rng() & 1 ? -1.0f : 1.0f) * std::exp2(expo(rng)));
    for (float p : probes) {
        ASSERT_EQ(encode_e4m3(p), f32_to_e4m3(p)) << "value " << p;
    }
}

TEST(CudaHostLogic, BalancedDecodeScheduleCoversEveryTileOnce) {
    std::mt19937 rng(9);
    for (int rep = 0; rep < 300; ++rep) {
        const int32_t batch = 1 + static_cast<int32_t>(rng() % 200);
        const int32_t ctas = 1 + static_cast<int32_t>(rng() % 400);
        std::vector<int32_t> lens(batch);
        for (int32_t& l : lens) l = rng() % 4 == 0 ? static_cast<int32_t>(rng() % 40) : static_cast<int32_t>(rng() % 40000);
        if (rep % 7 == 0) lens[0] = -5;  // a bad length still gets a slot (the kernel poisons it)
        std::vector<int32_t> off(batch + 1);
        mla_plan_splits(lens.data(), batch, ctas, off.data());
        ASSERT_EQ(off[0], 0);
        ASSERT_LE(off[batch], mla_schedule_max_slots(batch, ctas));
        int64_t work = 0;
        for (int32_t l : lens) work += (std::max(l, 0) + kMlaTileTokens - 1) / kMlaTileTokens;
        int64_t max_tiles = 0;
        for (int32_t q = 0; q < batch; ++q) {
            const int32_t ns = off[q + 1] - off[q];
            ASSERT_GE(ns, 1);
            ASSERT_LE(ns, kMlaMaxSplits);
            // The splits of q are exactly [0, len) in order, tile-aligned.
            const int32_t len = std::max(lens[q], 0);
            int32_t at = 0;
            for (int32_t s = 0; s < ns; ++s) {
                int32_t b = 0, e = 0;
                mla_split_range(len, ns, s, &b, &e);
                if (b < e) {
                    ASSERT_EQ(b, at);
                    at = e;
                }
                max_tiles = std::max<int64_t>(max_tiles, (e - b + kMlaTileTokens - 1) / kMlaTileTokens);
            }
            ASSERT_EQ(at, len);
            for (int32_t slot = off[q]; slot < off[q + 1]; ++slot) ASSERT_EQ(mla_slot_query(off.data(), batch, slot), q);
        }
        // Balance: no block gets much more than the per-block share (a split of a long sequence can exceed
        // the chunk only where it hits kMlaMaxSplits).
        const int64_t chunk = std::max<int64_t>(kMlaMinTilesPerSplit, (work + batch + ctas - 1) / ctas);
        bool capped = false;
        for (int32_t q = 0; q < batch; ++q) capped = capped || off[q + 1] - off[q] == kMlaMaxSplits;
        if (!capped) {
            ASSERT_LE(max_tiles, chunk) << "batch " << batch << " ctas " << ctas;
        }
    }
    // One long sequence among short ones gets most of the splits.
    std::vector<int32_t> lens = {32768, 5, 5, 5};
    std::vector<int32_t> off(5);
    mla_plan_splits(lens.data(), 4, 132, off.data());
    EXPECT_EQ(off[1] - off[0], kMlaMaxSplits);
    EXPECT_EQ(off[2] - off[1], 1);
}

TEST(CudaHostLogic, Fp8ScalePackingAndPadding) {
    // A [384, 640] FP8 weight (3 x 5 blocks) viewed from row block 1 of a taller grid: the checkpoint
    // grid rows the view uses, repacked in each layout with the padding at 1.
    const int64_t grid_rows = 4, grid_cols = 5;
    std::vector<float> grid(grid_rows * grid_cols);
    for (size_t i = 0; i < grid.size(); ++i) grid[i] = static_cast<float>(i + 1);
    WeightView w;
    w.dtype = DType::kF8E4M3;
    static uint8_t dummy alignas(16)[16];
    w.data = dummy;
    w.rows = 384;
    w.cols = 640;
    w.ld = 640;
    w.scale = grid.data();
    w.scale_ld = grid_cols;
    w.row_offset = 128;
    EXPECT_TRUE(fp8_lt_compatible(w));
    Fp8GemmConfig c;
    c.weight_layout = Fp8WeightScaleLayout::kBlocksKInner;
    c.weight_padded = true;
    ASSERT_EQ(fp8_weight_scale_floats(w, c), 3 * 8);
    std::vector<float> out(24, -1.0f);
    pack_weight_scales_host(w, grid.data(), c, out.data());
    for (int nb = 0; nb < 3; ++nb) {
        for (int kb = 0; kb < 8; ++kb) {
            EXPECT_EQ(out[nb * 8 + kb], kb < 5 ? grid[(nb + 1) * grid_cols + kb] : 1.0f) << nb << "," << kb;
        }
    }
    c.weight_layout = Fp8WeightScaleLayout::kBlocksNInner;
    c.weight_padded = false;
    ASSERT_EQ(fp8_weight_scale_floats(w, c), 5 * 3);
    out.assign(15, -1.0f);
    pack_weight_scales_host(w, grid.data(), c, out.data());
    for (int kb = 0; kb < 5; ++kb) {
        for (int nb = 0; nb < 3; ++nb) EXPECT_EQ(out[kb * 3 + nb], grid[(nb + 1) * grid_cols + kb]);
    }
    // What the cuBLASLt path refuses: misaligned grids, k not a multiple of 128, BF16.
    WeightView bad = w;
    bad.row_offset = 64;
    EXPECT_FALSE(fp8_lt_compatible(bad));
    bad = w;
    bad.cols = 600;
    EXPECT_FALSE(fp8_lt_compatible(bad));
    bad = w;
    bad.dtype = DType::kBF16;
    EXPECT_FALSE(fp8_lt_compatible(bad));
    // Row padding: the engine's workspace planner and the GEMM agree.
    for (int64_t m : {1, 12, 16, 17, 100, 256, 257, 1000, 2048, 4097}) {
        EXPECT_EQ(fp8_padded_rows(m), model::gpu::gemm_rows_padded(m)) << m;
        EXPECT_GE(fp8_padded_rows(m), m);
        EXPECT_EQ(fp8_padded_rows(m) % 4, 0);
    }
}

TEST(CudaHostLogic, MoeWorkListBound) {
    // The worst case of moe_group's list: every expert has a partial item.
    for (int64_t P : {1, 8, 100, 2048, 32768}) {
        for (int64_t E : {1, 16, 256}) {
            for (int64_t rows : {8, 64}) {
                // Adversarial counts: as many experts as possible with count % rows == 1.
                int64_t items = 0, left = P;
                for (int64_t e = 0; e < E && left > 0; ++e) {
                    const int64_t n = e + 1 < E ? std::min<int64_t>(left, 1) : left;
                    items += (n + rows - 1) / rows;
                    left -= n;
                }
                EXPECT_LE(items, moe_max_items(P, E, rows));
            }
        }
    }
}

TEST(CudaHostLogic, NewLaunchersCheckArgumentsBeforeTheDevice) {
    auto expect_bad = [](const Status& s, const char* what) {
        EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
        EXPECT_NE(s.message().find(what), std::string::npos) << "expected '" << what << "' in " << s.message();
    };
    std::vector<float> fake(64);
    std::vector<int32_t> fake_i(64);
    MlaCache c;
    c.data = fake.data();
    c.latent_dim = 512;
    c.rope_dim = 63;  // odd
    c.block_size = 16;
    c.num_blocks = 4;
    c.token_stride = 576;
    c.block_stride = 16 * 576;
    expect_bad(mla_cache_write(fake.data(), 1, 576, fake.data(), 1e-6f, fake_i.data(), fake.data(), c, fake_i.data(), 1,
                               1, fake_i.data(), nullptr),
               "mla_cache_write");
    WeightView w;
    w.dtype = DType::kBF16;
    w.data = fake.data();
    w.rows = 4;
    w.cols = 8;
    w.ld = 8;
    expect_bad(mla_absorb_q(fake.data(), 1, 8, 8, 2, 4, w, 4, fake.data(), nullptr), "mla_absorb_q");  // 2*4 > 4 rows
    expect_bad(mla_absorb_out(fake.data(), 1, 1, w, 4, 2, 4, fake.data(), nullptr), "mla_absorb_out");
    expect_bad(quantize_fp8_act(fake.data(), 1, 1, 100, 100, reinterpret_cast<uint8_t*>(fake.data()), fake.data(),
                                true, nullptr),
               "multiple of 128");
    expect_bad(add_rmsnorm(fake.data(), nullptr, 1, 8, fake.data(), 1e-6f, fake.data(), nullptr), "distinct");
    expect_bad(grouped_matmul(fake.data(), 4, nullptr, DevDType::kBF16, false, 8, 8, nullptr, nullptr, 1, fake.data(), 8,
                              GroupedKernel::kGemv, nullptr),
               "ldx >= k");
    expect_bad(grouped_matmul(fake.data(), 8, nullptr, DevDType::kBF16, false, 8, 8, nullptr, nullptr, 70000,
                              fake.data(), 8, GroupedKernel::kGemv, nullptr),
               "max_items");
    RouteParams rp;
    rp.num_experts = 2048;
    rp.n_group = 8;
    rp.topk_group = 4;
    rp.top_k = 8;
    expect_bad(moe_route_warp(fake.data(), 1, 2048, nullptr, rp, fake_i.data(), fake.data(), nullptr), "experts");
    expect_bad(moe_group(fake_i.data(), fake.data(), 1, 40, 16, nullptr, 8, fake_i.data(), fake_i.data(), fake.data(),
                         fake_i.data(), nullptr, fake_i.data(), nullptr),
               "K <=");
    expect_bad(moe_combine(fake.data(), 4, fake_i.data(), fake.data(), fake_i.data(), 1, 8, 8, fake.data(), 8, nullptr),
               "ldy/ldo");
    expect_bad(sample_rows(fake.data(), 10, 20, nullptr, 1, nullptr, nullptr, nullptr, nullptr), "ld >= vocab");
    expect_bad(mla_plan_decode(fake_i.data(), 4, 0, fake_i.data(), nullptr), "max_ctas");
    // Zero-sized work is fine without a device (no launch).
    EXPECT_TRUE(sample_rows(fake.data(), 10, 10, nullptr, 0, nullptr, nullptr, nullptr, nullptr).ok());
    EXPECT_TRUE(moe_combine(nullptr, 8, nullptr, nullptr, nullptr, 0, 8, 8, nullptr, 8, nullptr).ok());
    EXPECT_TRUE(add_rmsnorm(nullptr, nullptr, 0, 8, nullptr, 1e-6f, nullptr, nullptr).ok());
}

}  // namespace
}  // namespace deepshard::kernels::cuda
