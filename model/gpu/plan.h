// Host-side planning of the CUDA engine, CUDA-free so that it is tested on any machine: the fixed
// workspace (every activation buffer of a step, sized once at start from the model's dimensions and the
// step limits), the decode CUDA-graph buckets, and the splitting of a step that exceeds the limits into
// consecutive sub-steps (the same tokens in the same order, so the result is the same).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"
#include "kernels/cuda/sampling_math.h"
#include "model/engine.h"
#include "model/shard_weights.h"

namespace deepshard::model::gpu {

// The sizes a shard's forward pass works with (held widths: TP slices, local heads, local vocab).
struct EngineDims {
    int64_t hidden = 0, q_lora = 0, heads = 0, nope = 0, rope = 0, v_head = 0, kv_lora = 0;
    int64_t dense_inter = 0;   // widest held dense MLP slice (0 when no dense layer is held)
    int64_t moe_inter = 0;     // routed expert width
    int64_t shared_inter = 0;  // held shared-expert slice
    int64_t experts = 0, top_k = 0;
    bool has_moe = false;
    int64_t vocab = 0, vocab_local = 0;
    bool has_embedding = false, has_head = false;
    int64_t num_layers = 0;
    int64_t qk() const { return nope + rope; }
    // Width of the dense MLP buffers: dense, shared, and routed experts run one at a time through them
    // (expert parallelism over a host exchange).
    int64_t mlp_inter() const {
        const int64_t a = dense_inter > shared_inter ? dense_inter : shared_inter;
        return a > moe_inter ? a : moe_inter;
    }
};
EngineDims dims_of(const ShardWeights& w);

// What one (sub-)step may hold; everything is sized for these.
struct StepLimits {
    int64_t max_tokens = 2048;      // tokens per sub-step
    int64_t max_seqs = 256;         // chunks (sequences) per sub-step; also the largest decode graph
    int64_t max_logits_rows = 256;  // head rows computed per pass (more rows: several passes)
    int64_t max_blocks_per_seq = 0; // block-table width
    int32_t mla_max_ctas = 264;     // decode schedule target (twice the SMs / head groups)
    int64_t max_penalty_entries = int64_t{1} << 20;  // GPU sampler penalty list capacity per step
};

// Rows a GEMM output of m rows may write (the FP8 cuBLASLt path pads m; kernels::cuda::fp8_padded_rows
// computes the same, which a CUDA-side test checks).
int64_t gemm_rows_padded(int64_t m);

struct Slice {
    uint64_t offset = 0, bytes = 0;
};

// Every device buffer of the engine's workspace, 256-byte aligned inside one allocation.
struct WorkspaceLayout {
    // int32 step inputs
    Slice tok_local, tok_pos, tok_row, tables, seq_lens, logit_rows, mla_offsets;
    // fp32 activations
    Slice h, a, out, qa, q, kv, q_lat, o_lat, o, mla_scratch, g, u;
    // MoE
    Slice router, route_e, route_w, moe_offsets, pair_token, pair_weight, pair_pos, items, num_items;
    Slice x_perm, g_perm, u_perm, y_perm;
    // head + sampling
    Slice fn, logits, logits_full, sample_params, penalty_ids, penalty_vals, sample_out;
    uint64_t total = 0;
    std::vector<std::pair<std::string, Slice>> named;  // for logs and tests
};

StatusOr<WorkspaceLayout> plan_workspace(const EngineDims& d, const StepLimits& lim);

// Decode graph buckets: powers of two up to max_batch, plus max_batch itself.
std::vector<int64_t> decode_buckets(int64_t max_batch);
// The smallest bucket >= batch, or -1 when batch exceeds every bucket (or is not positive).
int64_t choose_bucket(const std::vector<int64_t>& buckets, int64_t batch);

// Splits `chunks` into consecutive sub-steps of at most max_tokens tokens and max_seqs chunks each,
// cutting a chunk where needed: its pieces keep their token order and positions, LogitsMode::kLast /
// kSample apply to its last piece only (earlier pieces get kNone), kAll to every piece. Concatenating the
// sub-steps' outputs (logits rows, samples, hidden rows) gives the outputs of the whole step in order.
// Chunks must have num_tokens > 0 (the engine checks that first).
std::vector<std::vector<SeqChunk>> split_step(std::span<const SeqChunk> chunks, int64_t max_tokens,
                                              int64_t max_seqs);

// True when every chunk is a single token (a decode step, which can replay a graph).
bool is_decode_step(std::span<const SeqChunk> chunks);

}  // namespace deepshard::model::gpu
