// The CUDA engine's forward pass: the CPU engine's sequence of ops (model/cpu_engine.cc), each through its
// CUDA twin, on the workspace buffers. Residual adds are fused with the RMSNorm that follows them.
// Nothing here allocates or synchronizes unless a host-side observer or host collective asks for data
// (hooks, a host TpReducer, the host MoE exchange: never in a graph pass).
#include <algorithm>
#include <cstring>

#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/mla_ops.h"
#include "kernels/cuda/moe_ops.h"
#include "model/gpu/cuda_engine_impl.h"

namespace deepshard::model::gpu {

namespace kc = kernels::cuda;

Status CudaEngine::tp_allreduce(float* data, int64_t n, bool graph) {
    if (device_collectives_ != nullptr) return device_collectives_->allreduce_sum(data, n, stream());
    if (reducer_ == nullptr || n == 0) return ok_status();
    if (graph) return internal_error("cuda: a host reducer inside a graph pass");
    float* host = pin_out_.as<float>();
    DS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host, data, static_cast<size_t>(n) * 4, cudaMemcpyDeviceToHost, stream()));
    DS_RETURN_IF_ERROR(sync());
    DS_RETURN_IF_ERROR(reducer_->allreduce_sum(host, n));
    DS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(data, host, static_cast<size_t>(n) * 4, cudaMemcpyHostToDevice, stream()));
    return sync();  // the pinned buffer is reused right away
}

Status CudaEngine::hidden_hook(int64_t layer, int64_t T) {
    if (hooks_ == nullptr || !hooks_->on_hidden) return ok_status();
    const int64_t H = dims_.hidden;
    float* host = pin_out_.as<float>();
    DS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host, f(ws_.h), static_cast<size_t>(T * H) * 4, cudaMemcpyDeviceToHost,
                                            stream()));
    DS_RETURN_IF_ERROR(sync());
    hooks_->on_hidden(layer, host, T, H);
    return ok_status();
}

Status CudaEngine::embed(const Pass& p) {
    const ShardWeights& w = *weights_;
    if (!w.has_embedding()) return ok_status();  // h came with the inputs
    const int64_t H = dims_.hidden;
    DS_RETURN_IF_ERROR(kc::embedding(model_->embed(), i32(ws_.tok_local), p.T, f(ws_.h), H, stream()));
    if (w.vocab_begin() != 0 || w.vocab_end() != config().vocab_size) {
        // Ids of other ranks' vocabulary rows embedded as zeros: the sum over the stage completes them.
        DS_RETURN_IF_ERROR(tp_allreduce(f(ws_.h), p.T * H, p.graph));
    }
    return ok_status();
}

Status CudaEngine::mla(const DevLayer& L, int64_t layer, const Pass& p) {
    const ModelConfig& c = config();
    const int64_t H = dims_.hidden, nope = dims_.nope, rd = dims_.rope, vd = dims_.v_head, qk = nope + rd;
    const int64_t R = dims_.kv_lora, nh = dims_.heads, T = p.T;
    const float eps = static_cast<float>(c.rms_norm_eps);
    cudaStream_t s = stream();
    float* a = f(ws_.a);
    float* q = f(ws_.q);
    if (dims_.q_lora > 0) {
        float* qa = f(ws_.qa);
        DS_RETURN_IF_ERROR(gemm_.run(L.wq_a, a, T, H, qa, dims_.q_lora, false, s));
        DS_RETURN_IF_ERROR(kc::rmsnorm(qa, T, dims_.q_lora, dims_.q_lora, L.q_norm, eps, qa, dims_.q_lora, s));
        DS_RETURN_IF_ERROR(gemm_.run(L.wq_b, qa, T, dims_.q_lora, q, nh * qk, false, s));
    } else {
        DS_RETURN_IF_ERROR(gemm_.run(L.wq, a, T, H, q, nh * qk, false, s));
    }
    // Latent + rope key: normalized, rotated and in the cache before any read (a prefill token attends
    // to the earlier tokens of its own chunk).
    float* kv = f(ws_.kv);
    DS_RETURN_IF_ERROR(gemm_.run(L.wkv_a, a, T, H, kv, R + rd, false, s));
    const kc::MlaCache cache_l = cache(layer);
    DS_RETURN_IF_ERROR(kc::mla_cache_write(kv, T, R + rd, L.kv_norm, eps, i32(ws_.tok_pos), model_->rope_inv_freq(),
                                           cache_l, i32(ws_.tables), p.rows, static_cast<int32_t>(p.table_stride),
                                           i32(ws_.tok_row), s));
    DS_RETURN_IF_ERROR(
        kc::rope_interleaved(q, T, nh * qk, nh, qk, nope, rd, i32(ws_.tok_pos), model_->rope_inv_freq(), s));
    float* q_lat = f(ws_.q_lat);
    DS_RETURN_IF_ERROR(kc::mla_absorb_q(q, T, nh * qk, qk, nh, nope, L.wkv_b, nope + vd, q_lat, s));
    kc::MlaAttentionArgs args;
    args.cache = cache_l;
    args.num_heads = static_cast<int32_t>(nh);
    args.softmax_scale = weights_->softmax_scale();
    args.num_queries = T;
    args.q_lat = q_lat;
    args.q_lat_ld_token = nh * R;
    args.q_lat_ld_head = R;
    args.q_pe = q + nope;
    args.q_pe_ld_token = nh * qk;
    args.q_pe_ld_head = qk;
    args.block_tables = i32(ws_.tables);
    args.num_table_rows = p.rows;
    args.max_blocks_per_seq = static_cast<int32_t>(p.table_stride);
    args.out = f(ws_.o_lat);
    args.out_ld_token = nh * R;
    args.out_ld_head = R;
    if (p.decode) {
        DS_RETURN_IF_ERROR(kc::mla_decode_scheduled(args, i32(ws_.seq_lens), i32(ws_.mla_offsets), lim_.mla_max_ctas,
                                                    f(ws_.mla_scratch), ws_.mla_scratch.bytes, s));
    } else {
        DS_RETURN_IF_ERROR(kc::mla_prefill(args, i32(ws_.tok_row), i32(ws_.tok_pos), s));
    }
    float* o = f(ws_.o);
    DS_RETURN_IF_ERROR(kc::mla_absorb_out(f(ws_.o_lat), T, nh, L.wkv_b, nope + vd, nope, vd, o, s));
    return gemm_.run(L.wo, o, T, nh * vd, f(ws_.out), H, false, s);
}

Status CudaEngine::mlp(const DevMlp& m, const float* x, int64_t T, float* y, bool accumulate) {
    const int64_t H = dims_.hidden, I = m.inter;
    cudaStream_t s = stream();
    float* g = f(ws_.g);
    float* u = f(ws_.u);
    DS_RETURN_IF_ERROR(gemm_.run(m.w1, x, T, H, g, I, false, s));
    DS_RETURN_IF_ERROR(gemm_.run(m.w3, x, T, H, u, I, false, s));
    DS_RETURN_IF_ERROR(kc::silu_mul(g, u, T * I, g, s));
    return gemm_.run(m.w2, g, T, I, y, H, accumulate, s);
}

Status CudaEngine::moe(const DevLayer& L, const Pass& p) {
    const int64_t H = dims_.hidden, E = dims_.experts, K = dims_.top_k, T = p.T, I = L.moe_inter;
    cudaStream_t s = stream();
    float* a = f(ws_.a);
    float* out = f(ws_.out);
    // Router (always exact: the routing decisions are what the golden sets check) and top-k.
    DS_RETURN_IF_ERROR(gemm_.run_exact(L.gate, a, T, H, f(ws_.router), E, false, s));
    int32_t* route_e = i32(ws_.route_e);
    float* route_w = f(ws_.route_w);
    DS_RETURN_IF_ERROR(kc::moe_route_warp(f(ws_.router), T, E, L.bias, weights_->route_params(), route_e, route_w, s));
    if (hooks_ != nullptr && hooks_->on_router_logits) {
        std::vector<float> hx(static_cast<size_t>(T * H)), hl(static_cast<size_t>(T * E));
        DS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(hx.data(), a, hx.size() * 4, cudaMemcpyDeviceToHost, s));
        DS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(hl.data(), f(ws_.router), hl.size() * 4, cudaMemcpyDeviceToHost, s));
        DS_RETURN_IF_ERROR(sync());
        for (int64_t t = 0; t < T; ++t) {
            hooks_->on_router_logits(L.index, t, std::span<const float>(hx.data() + t * H, H),
                                     std::span<const float>(hl.data() + t * E, E));
        }
    }
    if (hooks_ != nullptr && hooks_->on_routing) {
        std::vector<int32_t> he(static_cast<size_t>(T * K));
        std::vector<float> hw(static_cast<size_t>(T * K));
        DS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(he.data(), route_e, he.size() * 4, cudaMemcpyDeviceToHost, s));
        DS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(hw.data(), route_w, hw.size() * 4, cudaMemcpyDeviceToHost, s));
        DS_RETURN_IF_ERROR(sync());
        for (int64_t t = 0; t < T; ++t) {
            hooks_->on_routing(L.index, t, std::span<const int32_t>(he.data() + t * K, K),
                               std::span<const float>(hw.data() + t * K, K));
        }
    }
    if (exchange_ != nullptr) return moe_host_exchange(L, p);
    if (I > 0) {
        const kc::GroupedKernel kind = gemm_.grouped(T, E, K);
        const int32_t item_rows = kc::grouped_item_rows(kind);
        const int64_t P = T * K;
        const int64_t max_items = kc::moe_max_items(P, E, item_rows);
        auto* items = reinterpret_cast<kc::MoeItem*>(ws_base_ + ws_.items.offset);
        int32_t* num_items = i32(ws_.num_items);
        DS_RETURN_IF_ERROR(kc::moe_group(route_e, route_w, T, K, static_cast<int32_t>(E), L.exp_held, item_rows,
                                         i32(ws_.moe_offsets), i32(ws_.pair_token), f(ws_.pair_weight),
                                         i32(ws_.pair_pos), items, num_items, s));
        float* xp = f(ws_.x_perm);
        float* gp = f(ws_.g_perm);
        float* up = f(ws_.u_perm);
        float* yp = f(ws_.y_perm);
        DS_RETURN_IF_ERROR(kc::gather_tokens(a, H, i32(ws_.pair_token), P, H, xp, H, s));
        DS_RETURN_IF_ERROR(kc::grouped_matmul(xp, H, L.exp_w1, L.exp_dtype, L.exp_vec, I, H, items, num_items,
                                              max_items, gp, I, kind, s));
        DS_RETURN_IF_ERROR(kc::grouped_matmul(xp, H, L.exp_w3, L.exp_dtype, L.exp_vec, I, H, items, num_items,
                                              max_items, up, I, kind, s));
        DS_RETURN_IF_ERROR(kc::silu_mul(gp, up, P * I, gp, s));
        DS_RETURN_IF_ERROR(kc::grouped_matmul(gp, I, L.exp_w2, L.exp_dtype, L.exp_vec, H, I, items, num_items,
                                              max_items, yp, H, kind, s));
        DS_RETURN_IF_ERROR(kc::moe_combine(yp, H, route_e, route_w, i32(ws_.pair_pos), T, K, H, out, H, s));
    } else {
        DS_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(out, 0, static_cast<size_t>(T * H) * 4, s));
    }
    if (L.has_shared) DS_RETURN_IF_ERROR(mlp(L.shared, a, T, out, true));
    return ok_status();
}

Status CudaEngine::run_local_expert(const DevLayer& L, int32_t expert, const float* x, int64_t n, float* y) {
    // Through x_perm / y_perm in row groups that fit them (the exchange may bring more rows than T * K).
    const int64_t H = dims_.hidden;
    const int64_t cap = std::min<int64_t>(lim_.max_tokens, static_cast<int64_t>(ws_.x_perm.bytes / (H * 4)));
    const DevMlp& m = L.experts[static_cast<size_t>(expert)];
    for (int64_t r0 = 0; r0 < n; r0 += cap) {
        const int64_t k = std::min(cap, n - r0);
        DS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(f(ws_.x_perm), x + r0 * H, static_cast<size_t>(k * H) * 4,
                                                cudaMemcpyHostToDevice, stream()));
        DS_RETURN_IF_ERROR(mlp(m, f(ws_.x_perm), k, f(ws_.y_perm), false));
        DS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(y + r0 * H, f(ws_.y_perm), static_cast<size_t>(k * H) * 4,
                                                cudaMemcpyDeviceToHost, stream()));
        DS_RETURN_IF_ERROR(sync());
    }
    return ok_status();
}

Status CudaEngine::moe_host_exchange(const DevLayer& L, const Pass& p) {
    // Expert parallelism over a host communicator: tokens and routing to the host, comm/ep's dispatch and
    // combine, this rank's experts on the device, the weighted sums back.
    const int64_t H = dims_.hidden, K = dims_.top_k, T = p.T;
    std::vector<float> x(static_cast<size_t>(T * H)), y(static_cast<size_t>(T * H));
    std::vector<int32_t> e(static_cast<size_t>(T * K));
    std::vector<float> wts(static_cast<size_t>(T * K));
    if (T > 0) {
        DS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(x.data(), f(ws_.a), x.size() * 4, cudaMemcpyDeviceToHost, stream()));
        DS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(e.data(), i32(ws_.route_e), e.size() * 4, cudaMemcpyDeviceToHost, stream()));
        DS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(wts.data(), f(ws_.route_w), wts.size() * 4, cudaMemcpyDeviceToHost,
                                                stream()));
        DS_RETURN_IF_ERROR(sync());
    }
    Status inner;
    auto local = [&](int32_t expert, const float* xs, int64_t n, float* ys) {
        if (!inner.ok()) return;
        inner = run_local_expert(L, expert, xs, n, ys);
    };
    DS_RETURN_IF_ERROR(exchange_->run(x.data(), T, H, e, wts, K, local, y.data()));
    DS_RETURN_IF_ERROR(inner);
    if (T == 0) return ok_status();
    DS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(f(ws_.out), y.data(), y.size() * 4, cudaMemcpyHostToDevice, stream()));
    if (L.has_shared) DS_RETURN_IF_ERROR(mlp(L.shared, f(ws_.a), T, f(ws_.out), true));
    return sync();  // y leaves scope
}

Status CudaEngine::zero_token_step() {
    // A data-parallel rank with no tokens still joins every expert exchange (it is collective).
    Pass p;
    for (const DevLayer& L : model_->layers()) {
        if (L.moe) DS_RETURN_IF_ERROR(moe_host_exchange(L, p));
    }
    return ok_status();
}

Status CudaEngine::body(const Pass& p) {
    const ModelConfig& c = config();
    const float eps = static_cast<float>(c.rms_norm_eps);
    const int64_t H = dims_.hidden, T = p.T;
    cudaStream_t s = stream();
    if (p.decode) {
        // The balanced attention schedule depends only on the lengths: once per pass, for every layer.
        DS_RETURN_IF_ERROR(kc::mla_plan_decode(i32(ws_.seq_lens), p.rows, lim_.mla_max_ctas, i32(ws_.mla_offsets), s));
    }
    DS_RETURN_IF_ERROR(embed(p));
    DS_RETURN_IF_ERROR(hidden_hook(-1, T));
    float* h = f(ws_.h);
    float* a = f(ws_.a);
    float* out = f(ws_.out);
    const auto& layers = model_->layers();
    for (size_t i = 0; i < layers.size(); ++i) {
        const DevLayer& L = layers[i];
        // Residual of the previous layer's FFN fused with this layer's attention norm.
        DS_RETURN_IF_ERROR(kc::add_rmsnorm(h, i == 0 ? nullptr : out, T, H, L.attn_norm, eps, a, s));
        if (i > 0) DS_RETURN_IF_ERROR(hidden_hook(layers[i - 1].index, T));
        DS_RETURN_IF_ERROR(mla(L, static_cast<int64_t>(i), p));
        DS_RETURN_IF_ERROR(tp_allreduce(out, T * H, p.graph));
        DS_RETURN_IF_ERROR(kc::add_rmsnorm(h, out, T, H, L.ffn_norm, eps, a, s));
        if (L.moe) {
            DS_RETURN_IF_ERROR(moe(L, p));
        } else {
            DS_RETURN_IF_ERROR(mlp(L.dense, a, T, out, false));
        }
        DS_RETURN_IF_ERROR(tp_allreduce(out, T * H, p.graph));
    }
    const bool any = !layers.empty();
    if (weights_->has_head()) {
        // The last residual fused with the final norm, for every token (the head gathers its rows).
        DS_RETURN_IF_ERROR(kc::add_rmsnorm(h, any ? out : nullptr, T, H, model_->final_norm(), eps, a, s));
    } else if (any) {
        DS_RETURN_IF_ERROR(kc::residual_add(h, out, T * H, s));
    }
    if (any) DS_RETURN_IF_ERROR(hidden_hook(layers.back().index, T));
    if (weights_->has_head() && hooks_ != nullptr && hooks_->on_final_norm) {
        float* host = pin_out_.as<float>();
        DS_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host, a, static_cast<size_t>(T * H) * 4, cudaMemcpyDeviceToHost, s));
        DS_RETURN_IF_ERROR(sync());
        hooks_->on_final_norm(host, T, H);
    }
    return ok_status();
}

Status CudaEngine::head(int64_t first, int64_t n, bool graph) {
    const int64_t H = dims_.hidden, Vl = dims_.vocab_local;
    cudaStream_t s = stream();
    float* fn = f(ws_.fn);
    DS_RETURN_IF_ERROR(kc::gather_tokens(f(ws_.a), H, i32(ws_.logit_rows) + first, n, H, fn, H, s));
    DS_RETURN_IF_ERROR(gemm_.run(model_->head(), fn, n, H, f(ws_.logits), Vl, false, s));
    if (Vl != dims_.vocab && device_collectives_ != nullptr) {
        DS_RETURN_IF_ERROR(device_collectives_->allgather_vocab(f(ws_.logits), n, Vl, f(ws_.logits_full), stream()));
    }
    (void)graph;
    return ok_status();
}

}  // namespace deepshard::model::gpu
