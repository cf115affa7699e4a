// CPU MLA ops (kernels/mla.h): the arithmetic the forward pass has always used, in named ops so that
// every CUDA op has a twin to be compared with. Parallel over tokens or heads on the global pool.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "common/status.h"
#include "common/thread_pool.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/kernels.h"
#include "kernels/mla.h"

namespace deepshard::kernels {
namespace {

// Rotates consecutive pairs of v[0, rope_dim) by pos * inv_freq[i] (interleaved layout).
void rope_one(float* v, int64_t rope_dim, int32_t pos, const float* inv_freq) {
    const int64_t pairs = rope_dim / 2;
    for (int64_t i = 0; i < pairs; ++i) {
        const float angle = static_cast<float>(pos) * inv_freq[i];
        const float cs = std::cos(angle), sn = std::sin(angle);
        const float x0 = v[2 * i], x1 = v[2 * i + 1];
        v[2 * i] = x0 * cs - x1 * sn;
        v[2 * i + 1] = x0 * sn + x1 * cs;
    }
}

// Block id holding position `pos` of table row `row`, checked against the table and the pool.
int32_t block_of(const BlockTables& t, const LatentCache& c, int64_t row, int64_t pos) {
    const int64_t k = pos / c.block_size;
    DS_CHECK(row >= 0 && row < t.rows) << "mla: block table row " << row << " outside [0, " << t.rows << ")";
    DS_CHECK(k < t.max_blocks_per_seq) << "mla: position " << pos << " needs block " << k << ", table row " << row
                                       << " has " << t.max_blocks_per_seq;
    const int32_t b = t.data[row * t.max_blocks_per_seq + k];
    DS_CHECK(b >= 0 && b < c.num_blocks) << "mla: block id " << b << " outside the pool of " << c.num_blocks;
    return b;
}

}  // namespace

void rope_interleaved(float* x, int64_t T, int64_t ld_token, int64_t heads, int64_t ld_head, int64_t offset,
                      int64_t rope_dim, const int32_t* positions, const float* inv_freq) {
    DS_CHECK(rope_dim % 2 == 0) << "rope_interleaved: rope_dim " << rope_dim << " is odd";
    ThreadPool::global().parallel_for(T, [&](int64_t b, int64_t e) {
        for (int64_t t = b; t < e; ++t) {
            for (int64_t h = 0; h < heads; ++h) {
                rope_one(x + t * ld_token + h * ld_head + offset, rope_dim, positions[t], inv_freq);
            }
        }
    });
}

void mla_cache_write(float* kv, int64_t T, int64_t ld, const float* norm_w, float eps, const int32_t* positions,
                     const float* inv_freq, const LatentCache& cache, const BlockTables& tables,
                     const int32_t* table_rows) {
    const int64_t R = cache.latent_dim, rd = cache.rope_dim;
    DS_CHECK(ld >= R + rd && cache.token_stride >= R + rd) << "mla_cache_write: row strides too small";
    ThreadPool::global().parallel_for(T, [&](int64_t b, int64_t e) {
        for (int64_t t = b; t < e; ++t) {
            float* row = kv + t * ld;
            rmsnorm(row, 1, R, R, norm_w, eps, row, R);
            rope_one(row + R, rd, positions[t], inv_freq);
            const int32_t blk = block_of(tables, cache, table_rows[t], positions[t]);
            std::copy(row, row + R + rd, cache.slot(blk, positions[t] % cache.block_size));
        }
    });
}

void mla_absorb_q(const float* q, int64_t T, int64_t ld_token, int64_t ld_head, int64_t heads, int64_t nope,
                  const WeightView& wkv_b, int64_t head_rows, float* q_lat) {
    const int64_t R = wkv_b.cols;
    DS_CHECK(heads * head_rows <= wkv_b.rows && nope <= head_rows) << "mla_absorb_q: wkv_b has " << wkv_b.rows
                                                                   << " rows, too few for " << heads << " heads";
    const cpu::KernelTable& kt = cpu::active_table();
    // q_lat[t, h, :] = q_nope[t, h, :] . W_UK[h] (W_UK[h] = [nope, R], applied untransposed): a
    // small GEMM per head, split over heads and column blocks of the latent.
    const int64_t cw = R > 128 ? 128 : R;
    const int64_t col_blocks = (R + cw - 1) / cw;
    ThreadPool::global().parallel_tasks(heads * col_blocks, [&](int64_t u) {
        const int64_t h = u / col_blocks, c0 = (u % col_blocks) * cw, c1 = std::min(R, c0 + cw);
        const WeightView wuk = wkv_b.slice_rows(h * head_rows, nope);
        kt.matmul_xw(q + h * ld_head, T, ld_token, wuk, q_lat + h * R, heads * R, c0, c1);
    });
}

namespace {

// Reference loop for one unit (scalar ISA): per row, two passes over its keys.
void attention_generic(const cpu::AttnTile& t) {
    std::vector<float> p;
    for (int64_t i = 0; i < t.rows; ++i) {
        const int64_t n = int64_t{t.last_key[i]} + 1;
        p.resize(static_cast<size_t>(n));
        float mx = -INFINITY;
        for (int64_t j = 0; j < n; ++j) {
            const float* s = t.keys[j];
            float acc = 0.0f;
            for (int64_t r = 0; r < t.R; ++r) acc += t.q_lat[i][r] * s[r];
            float accpe = 0.0f;
            for (int64_t r = 0; r < t.rd; ++r) accpe += t.q_pe[i][r] * s[t.R + r];
            p[j] = (acc + accpe) * t.scale;
            mx = std::max(mx, p[j]);
        }
        float sum = 0.0f;
        for (int64_t j = 0; j < n; ++j) {
            p[j] = std::exp(p[j] - mx);
            sum += p[j];
        }
        const float inv = 1.0f / sum;
        float* dst = t.out[i];
        std::fill(dst, dst + t.R, 0.0f);
        for (int64_t j = 0; j < n; ++j) {
            const float* s = t.keys[j];
            const float w = p[j] * inv;
            for (int64_t r = 0; r < t.R; ++r) dst[r] += w * s[r];
        }
    }
}

// A unit of work: queries [q0, q1) (consecutive, one table row) x heads [h0, h1).
struct AttnUnit {
    int64_t q0, q1, h0, h1;
};

}  // namespace

void mla_attention(const MlaAttentionArgs& a, const int32_t* query_rows, const int32_t* query_pos) {
    const int64_t R = a.cache.latent_dim, rd = a.cache.rope_dim, nh = a.num_heads, bs = a.cache.block_size;
    const int64_t nq = a.num_queries;
    if (nq <= 0 || nh <= 0) return;
    // Runs of consecutive queries on the same table row, cut into blocks of ~64 rows (query x head);
    // with too few blocks to keep every thread busy (decode), the heads are split as well.
    const int64_t qb = std::max<int64_t>(1, 64 / nh);
    std::vector<AttnUnit> base;
    for (int64_t q = 0; q < nq;) {
        int64_t e = q + 1;
        while (e < nq && e - q < qb && query_rows[e] == query_rows[q]) ++e;
        base.push_back({q, e, 0, nh});
        q = e;
    }
    const int64_t nt = ThreadPool::global().size();
    int64_t groups = 1;
    while (static_cast<int64_t>(base.size()) * groups < 2 * nt && nh % (2 * groups) == 0) groups *= 2;
    std::vector<AttnUnit> units;
    for (const AttnUnit& u : base) {
        for (int64_t g = 0; g < groups; ++g) units.push_back({u.q0, u.q1, g * nh / groups, (g + 1) * nh / groups});
    }
    const cpu::KernelTable& kt = cpu::active_table();
    ThreadPool::global().parallel_tasks(static_cast<int64_t>(units.size()), [&](int64_t ui) {
        const AttnUnit& u = units[static_cast<size_t>(ui)];
        const int64_t row = query_rows[u.q0];
        int64_t max_pos = 0;
        for (int64_t q = u.q0; q < u.q1; ++q) max_pos = std::max<int64_t>(max_pos, query_pos[q]);
        // Resolve the key slots once for the unit (checked against the table and the pool).
        std::vector<const float*> keys(static_cast<size_t>(max_pos + 1));
        for (int64_t j = 0; j <= max_pos; j += bs) {
            const int32_t blk = block_of(a.tables, a.cache, row, j);
            for (int64_t o = 0; o < bs && j + o <= max_pos; ++o) keys[j + o] = a.cache.slot(blk, o);
        }
        const int64_t rows = (u.q1 - u.q0) * (u.h1 - u.h0);
        std::vector<const float*> ql(rows), qp(rows);
        std::vector<float*> out(rows);
        std::vector<int32_t> last(rows);
        int64_t r = 0;
        for (int64_t q = u.q0; q < u.q1; ++q) {
            for (int64_t h = u.h0; h < u.h1; ++h, ++r) {
                ql[r] = a.q_lat + q * a.q_lat_ld_token + h * a.q_lat_ld_head;
                qp[r] = a.q_pe + q * a.q_pe_ld_token + h * a.q_pe_ld_head;
                out[r] = a.out + q * a.out_ld_token + h * a.out_ld_head;
                last[r] = query_pos[q];
            }
        }
        cpu::AttnTile t;
        t.keys = keys.data();
        t.nkeys = max_pos + 1;
        t.rows = rows;
        t.q_lat = ql.data();
        t.q_pe = qp.data();
        t.last_key = last.data();
        t.out = out.data();
        t.R = R;
        t.rd = rd;
        t.scale = a.softmax_scale;
        if (kt.attention != nullptr) {
            kt.attention(t);
        } else {
            attention_generic(t);
        }
    });
}

void mla_absorb_out(const float* o_lat, int64_t T, int64_t heads, const WeightView& wkv_b, int64_t head_rows,
                    int64_t nope, int64_t v, float* o, Numerics numerics) {
    const int64_t R = wkv_b.cols;
    std::vector<WeightView> wuv(static_cast<size_t>(heads));
    std::vector<MatmulJob> jobs(static_cast<size_t>(heads));
    for (int64_t h = 0; h < heads; ++h) {
        wuv[h] = wkv_b.slice_rows(h * head_rows + nope, v);
        jobs[h] = {o_lat + h * R, T, heads * R, &wuv[h], o + h * v, heads * v, false};
    }
    matmul_batch(jobs, numerics);
}

}  // namespace deepshard::kernels
