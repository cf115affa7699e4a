// Decode and prefill time of one step, op by op, per bound. The formulas (per layer, per rank):
//   attention projections   bytes = the rank's attention weights, FLOPs = 2 x tokens x params
//   attention core (decode) bytes = tokens x KV length x latent bytes, FLOPs = absorbed MLA
//                           (per head and cached token: 2 x (2 x kv_lora + rope))
//   attention core (prefill) FLOPs = tokens x ctx x heads x 2 x (qk + v head dims), no KV re-read
//   MoE                     the rank's experts that at least one of the step's tokens picks
//                           (uniform routing: 1 - (1 - k/E)^tokens of them), the busiest rank's share
//                           of the routed tokens (mean x imbalance), shared expert, router
//   TP collectives          dense layers 2 allreduces, MoE layers 3 (MODEL_SPEC §6)
//   DP+EP all-to-all        decode (low-latency kernels): one message per (token, expert) to the
//                           owning rank, NVLink inside the node and the NIC beyond, concurrently;
//                           prefill (batch kernels): one copy per distinct rank, across nodes one
//                           copy per remote node (DeepEP-style NVLink forwarding). Dispatch is FP8 on
//                           the FP8 path, combine BF16.
#include "topology/cost_model.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace deepshard::topology {

namespace {

double& at(BoundTimes& t, Bound b) { return t[static_cast<size_t>(b)]; }

std::string pct(double f) { return std::to_string(static_cast<int>(std::lround(f * 100))) + "%"; }

}  // namespace

double total_seconds(const BoundTimes& t) {
    double s = 0;
    for (double x : t) {
        s += x;
    }
    return s;
}

Bound dominant_bound(const BoundTimes& t) {
    return static_cast<Bound>(std::max_element(t.begin(), t.end()) - t.begin());
}

CostModel::CostModel(const ModelStats& stats, const DeviceSpec& device, DtypePath dtype, Geometry geometry,
                     const Serving& serving)
    : s_(stats), d_(device), dtype_(dtype), g_(std::move(geometry)) {
    const HardwareTable& t = hardware_table();
    const bool gpu = d_.is_gpu();
    e_ = gpu ? t.efficiency : t.cpu_efficiency;
    const std::string engine = serving.engine == "deepshard" && !gpu ? "deepshard-cpu" : serving.engine;
    auto found = find_engine(engine);
    engine_ = found.ok() ? *found : *find_engine(gpu ? "deepshard" : "deepshard-cpu");
    const int S = std::max(g_.ranks_per_stage, 1);
    if (S > 1 && s_.config().n_routed_experts > 0) {
        imbalance_ = serving.redundant_experts > 0 ? t.moe.imbalance_eplb : t.moe.imbalance;
    }
    experts_per_rank_ = g_.max_experts_per_rank + (serving.redundant_experts + S - 1) / S;
    // CPU ranks of one node share its memory bandwidth and cores.
    const double share = gpu ? 1.0 : std::max(g_.ranks_per_node, 1);
    peak_bw_ = d_.mem_bw_gbs * 1e9 / share;
    const double bf16 = d_.bf16_tflops * 1e12 / share;
    switch (dtype_) {
        case DtypePath::kFp8:
            gemm_rate_ = d_.fp8_tflops * 1e12 * e_.fp8_mma / share;
            break;
        case DtypePath::kFp8WeightOnly:
            gemm_rate_ = bf16 * e_.dequant_mma;
            break;
        case DtypePath::kBf16:
            gemm_rate_ = bf16 * e_.bf16_mma;
            break;
    }
    attn_rate_ = bf16 * e_.attention_mma;
    // FP8 weights expanded in software (GPUs without FP8) stream at the dequant kernels' rate.
    const bool soft_dequant = gpu && dtype_ == DtypePath::kFp8WeightOnly;
    weight_eff_ = soft_dequant ? e_.hbm_dequant : e_.hbm_gemm;
    expert_eff_ = soft_dequant ? e_.hbm_dequant : e_.hbm_experts;
    if (gpu && engine_.hbm_experts > 0) {
        expert_eff_ = engine_.hbm_experts;  // measured for this engine's own MoE kernels
    }
}

int CostModel::nodes_per_stage() const {
    const int rpn = std::max(g_.ranks_per_node, 1);
    return std::max(1, (g_.ranks_per_stage + rpn - 1) / rpn);
}

void CostModel::op(BoundTimes* t, Bound mem, double bytes, double bw, Bound math, double flops, double rate) const {
    const double tm = bytes / bw, tc = rate > 0 ? flops / rate : 0;
    if (tm >= tc) {
        at(*t, mem) += tm;
    } else {
        at(*t, math) += tc;
    }
}

double CostModel::allreduce(double bytes_per_rank, bool allreduce) const {
    const int S = g_.ranks_per_stage;
    if (S <= 1) {
        return 0;
    }
    const Latencies& lat = hardware_table().latency;
    const bool spans = nodes_per_stage() > 1;
    double alpha = d_.is_gpu() ? (spans ? lat.collective_inter_us : lat.collective_intra_us) : lat.cpu_collective_us;
    if (!d_.is_gpu() && spans) {
        alpha += lat.collective_inter_us;
    }
    const double bw = spans ? d_.nic_gbs * 1e9 * e_.nic_allreduce : d_.nvlink_gbs * 1e9 * e_.nvlink_allreduce;
    const double factor = allreduce ? 2.0 * (S - 1) / S : 1.0;
    return alpha * 1e-6 + factor * bytes_per_rank / bw;
}

double CostModel::p2p(double bytes) const {
    const Latencies& lat = hardware_table().latency;
    const bool inter = g_.ranks_per_stage >= g_.ranks_per_node;
    const double bw = inter ? d_.nic_gbs * 1e9 * e_.nic_allreduce : d_.nvlink_gbs * 1e9 * e_.nvlink_allreduce;
    return (inter ? lat.p2p_inter_us : lat.p2p_intra_us) * 1e-6 + bytes / bw;
}

double CostModel::a2a(double n_tokens, double bytes_per_copy, bool low_latency, bool* network) const {
    const double S = g_.ranks_per_stage, k = static_cast<double>(s_.config().num_experts_per_tok);
    const double in_node = std::min<double>(S, std::max(g_.ranks_per_node, 1));
    const int m = nodes_per_stage();
    const Latencies& lat = hardware_table().latency;
    double local = 0, net = 0;
    if (low_latency) {
        local = n_tokens * k * (in_node - 1) / S * bytes_per_copy / (d_.nvlink_gbs * 1e9 * e_.nvlink_a2a_ll);
        net = n_tokens * k * (S - in_node) / S * bytes_per_copy / (d_.nic_gbs * 1e9 * e_.nic_a2a_ll);
    } else {
        const double d = S * (1.0 - std::pow(1.0 - 1.0 / S, k)) * (S - 1.0) / S;
        local = n_tokens * d * bytes_per_copy / (d_.nvlink_gbs * 1e9 * e_.nvlink_a2a);
        if (m > 1) {
            const double dn = m * (1.0 - std::pow(1.0 - 1.0 / m, k)) * (m - 1.0) / m;
            net = n_tokens * dn * bytes_per_copy / (d_.nic_gbs * 1e9 * e_.nic_a2a);
        }
    }
    *network = net > local;
    const double alpha =
        d_.is_gpu() ? (m > 1 ? lat.collective_inter_us : lat.collective_intra_us) : lat.cpu_collective_us;
    return 2 * alpha * 1e-6 + std::max(local, net);  // dispatch + combine; NVLink and NIC run concurrently
}

BoundTimes CostModel::stage_cost(
    int stage, int64_t n_rank, int64_t b_stage, double context, int64_t logit_rows, bool decode) const {
    const model::ModelConfig& c = s_.config();
    const HardwareTable& t = hardware_table();
    const int S = g_.ranks_per_stage;
    const int split = g_.dp_attention ? 1 : S;
    const double n = static_cast<double>(n_rank), B = static_cast<double>(b_stage);
    const double H = static_cast<double>(c.hidden_size);
    const double heads = static_cast<double>(c.num_attention_heads / split);
    const double k = static_cast<double>(c.num_experts_per_tok), E = static_cast<double>(c.n_routed_experts);
    const double floor_layer = t.latency.kernels_per_layer * engine_.kernel_floor_us * 1e-6;
    const double attn_param_share = s_.attention_bytes(split) / s_.attention_bytes(1);
    const double weight_bw = peak_bw_ * weight_eff_, expert_bw = peak_bw_ * expert_eff_;
    BoundTimes total{};
    for (int64_t l = g_.stages[stage].first; l < g_.stages[stage].second; ++l) {
        BoundTimes layer{};
        op(&layer, Bound::kWeightReads, s_.attention_bytes(split), weight_bw, Bound::kGemm,
           2 * n * s_.attention_params() * attn_param_share, gemm_rate_);
        if (decode) {
            op(&layer, Bound::kKvReads, n * context * s_.kv_bytes_per_token_layer(), peak_bw_ * e_.hbm_kv,
               Bound::kAttention, n * context * heads * 2 * (2.0 * c.kv_lora_rank + c.qk_rope_head_dim), attn_rate_);
        } else {
            op(&layer, Bound::kKvReads, n * s_.kv_bytes_per_token_layer(), peak_bw_ * e_.hbm_kv, Bound::kAttention,
               n * context * heads * 2 * static_cast<double>(c.qk_head_dim() + c.v_head_dim), attn_rate_);
        }
        const bool moe = c.is_moe_layer(l);
        if (moe) {
            const double active = experts_per_rank_ * (1.0 - std::pow(1.0 - k / E, B));
            op(&layer, Bound::kExpertReads, active * s_.expert_bytes(), expert_bw, Bound::kExpertGemm,
               2 * (B * k / S) * imbalance_ * s_.expert_params(), gemm_rate_);
            op(&layer, Bound::kWeightReads, s_.shared_bytes(split) + s_.router_bytes(), weight_bw, Bound::kGemm,
               2 * n * s_.shared_params() / split + 2 * n * s_.router_params(), gemm_rate_);
        } else {
            op(&layer, Bound::kWeightReads, s_.dense_mlp_bytes(split), weight_bw, Bound::kGemm,
               2 * n * s_.dense_mlp_params() / split, gemm_rate_);
        }
        // Launches hide behind device work, unless the host waits for the device every layer.
        at(layer, Bound::kLaunchFloor) =
            engine_.host_sync_per_layer ? floor_layer : std::max(0.0, floor_layer - total_seconds(layer));
        for (size_t i = 0; i < kNumBounds; ++i) {
            total[i] += layer[i];
        }
        if (S > 1 && !g_.dp_attention) {
            at(total, Bound::kAllreduce) += (moe ? 3 : 2) * allreduce(n * H * 2, true);
        } else if (S > 1 && moe) {
            const double dispatch = dtype_ == DtypePath::kFp8 ? H * (1.0 + 4.0 / 128) : H * 2;
            bool network = false;
            const double a = a2a(n * imbalance_, dispatch + H * 2, decode, &network);
            at(total, network ? Bound::kA2aNetwork : Bound::kA2aLocal) += a;
        }
    }
    if (stage == 0 && S > 1 && !g_.dp_attention) {
        at(total, Bound::kAllreduce) += allreduce(n * H * 2, true);  // vocab-parallel embedding
    }
    if (stage + 1 == static_cast<int>(g_.stages.size())) {
        const double rows = static_cast<double>(logit_rows);
        op(&total, Bound::kWeightReads, s_.head_bytes(split), weight_bw, Bound::kGemm,
           2 * rows * s_.head_params() / split, gemm_rate_);
        if (S > 1 && !g_.dp_attention) {
            at(total, Bound::kAllreduce) += allreduce(rows * c.vocab_size / split * 4.0, false);  // logits
        }
    }
    return total;
}

DecodeEstimate CostModel::decode(int64_t batch, int64_t context, double mtp) const {
    const int S = g_.ranks_per_stage;
    const int64_t n = g_.dp_attention ? (batch + S - 1) / S : batch;
    const double H = static_cast<double>(s_.config().hidden_size);
    DecodeEstimate est;
    est.batch = batch;
    est.concurrency = batch * g_.pp;
    est.context = context;
    BoundTimes cycle{}, worst_cost{};
    double sum = 0, worst = 0, transfers = 0;
    for (int st = 0; st < g_.pp; ++st) {
        const BoundTimes cst = stage_cost(st, n, batch, static_cast<double>(context), n, true);
        for (size_t i = 0; i < kNumBounds; ++i) {
            cycle[i] += cst[i];
        }
        const double tot = total_seconds(cst);
        transfers += st + 1 < g_.pp ? p2p(n * H * 2) : 0.0;
        sum += tot;
        if (tot > worst) {
            worst = tot;
            worst_cost = cst;
        }
    }
    // One micro-batch goes through every stage once per token; with P of them in flight, the slowest
    // stage sets the pace (the rest of P x slowest is the bubble of the faster stages). An engine
    // that does not pipeline runs one batch through the stages one after another.
    const double host = engine_.step_overhead_ms * 1e-3;
    const double path = sum + transfers + host;
    const double period = engine_.pipelined ? std::max(path, g_.pp * worst) : path;
    if (!engine_.pipelined) {
        est.concurrency = batch;
    }
    at(cycle, Bound::kPipeline) += transfers + (period - path);
    at(cycle, Bound::kHostOverhead) += host;
    est.by_bound = cycle;
    est.dominant = dominant_bound(cycle);
    est.stage_ms = worst * 1e3;
    est.tpot_ms = period / std::max(mtp, 1e-9) * 1e3;
    est.tokens_per_s = static_cast<double>(est.concurrency) / (est.tpot_ms * 1e-3);
    est.per_user_tokens_per_s = 1e3 / est.tpot_ms;
    est.serving_tokens_per_s = est.tokens_per_s;
    est.memory_ms = (at(worst_cost, Bound::kWeightReads) + at(worst_cost, Bound::kExpertReads) +
                     at(worst_cost, Bound::kKvReads)) *
                    1e3;
    est.compute_ms =
        (at(worst_cost, Bound::kGemm) + at(worst_cost, Bound::kExpertGemm) + at(worst_cost, Bound::kAttention)) * 1e3;
    est.comm_ms = (at(worst_cost, Bound::kA2aLocal) + at(worst_cost, Bound::kA2aNetwork) +
                   at(worst_cost, Bound::kAllreduce)) *
                  1e3;
    est.floor_ms = at(worst_cost, Bound::kLaunchFloor) * 1e3;
    return est;
}

PrefillEstimate CostModel::prefill(int64_t tokens_per_rank, int64_t prompt, double hit) const {
    const int S = g_.ranks_per_stage;
    const double H = static_cast<double>(s_.config().hidden_size);
    hit = std::clamp(hit, 0.0, 0.99);
    // Computed tokens attend over the cached prefix and, causally, half of their own part.
    const double cached = hit * static_cast<double>(prompt);
    const double computed = static_cast<double>(prompt) - cached;
    const double ctx = cached + computed / 2.0;
    const int64_t b_stage = g_.dp_attention ? tokens_per_rank * S : tokens_per_rank;
    const int64_t rows = std::max<int64_t>(1, static_cast<int64_t>(tokens_per_rank / std::max(computed, 1.0)));
    const int64_t c1 = std::max<int64_t>(1, static_cast<int64_t>(computed));
    const double host = engine_.step_overhead_ms * 1e-3;
    PrefillEstimate est;
    est.tokens_per_step = b_stage;
    double worst = 0, ttft = host;
    BoundTimes worst_cost{};
    for (int st = 0; st < g_.pp; ++st) {
        const BoundTimes cst = stage_cost(st, tokens_per_rank, b_stage, ctx, rows, false);
        if (total_seconds(cst) > worst) {
            worst = total_seconds(cst);
            worst_cost = cst;
        }
        ttft += total_seconds(stage_cost(st, c1, c1, ctx, 1, false)) + (st + 1 < g_.pp ? p2p(computed * H * 2) : 0.0);
    }
    // Chunks of different prompts fill the pipeline, so the slowest stage sets the rate.
    at(worst_cost, Bound::kHostOverhead) += host;
    est.by_bound = worst_cost;
    est.dominant = dominant_bound(worst_cost);
    est.stage_ms = (worst + host) * 1e3;
    est.tokens_per_s = static_cast<double>(b_stage) / (worst + host) / (1.0 - hit);
    est.ttft_ms = ttft * 1e3;
    return est;
}

DecodeEstimate CostModel::serve(const Workload& w, int64_t batch_cap, const PrefillEstimate& prefill) const {
    const int64_t context = w.prompt_tokens + w.output_tokens / 2;
    batch_cap = std::max<int64_t>(1, batch_cap);
    int64_t batch = batch_cap;
    bool meets = true;
    if (w.tpot_target_ms > 0) {
        // TPOT grows with the batch: the largest batch that still meets the target.
        if (decode(1, context, w.mtp_speedup).tpot_ms > w.tpot_target_ms) {
            batch = 1;
            meets = false;
        } else {
            int64_t lo = 1, hi = batch_cap;
            while (lo < hi) {
                const int64_t mid = lo + (hi - lo + 1) / 2;
                if (decode(mid, context, w.mtp_speedup).tpot_ms <= w.tpot_target_ms) {
                    lo = mid;
                } else {
                    hi = mid - 1;
                }
            }
            batch = lo;
        }
    }
    DecodeEstimate est = decode(batch, context, w.mtp_speedup);
    est.meets_target = meets;
    if (!w.disaggregated && prefill.tokens_per_s > 0 && w.output_tokens > 0) {
        // Aggregated serving: every request's prompt is prefilled on the same ranks, in time that
        // decode does not get.
        const double prompt_per_output = static_cast<double>(w.prompt_tokens) / static_cast<double>(w.output_tokens);
        est.serving_tokens_per_s = est.tokens_per_s / (1.0 + est.tokens_per_s * prompt_per_output / prefill.tokens_per_s);
    }
    return est;
}

std::string CostModel::describe(Bound b) const {
    const bool gpu = d_.is_gpu();
    const std::string mem = gpu ? "HBM" : "memory";
    const std::string of_bw = gpu ? " efficiency" : " of the measured STREAM bandwidth";
    auto reads = [&](const char* what, double eff) {
        return std::string(what) + " over " + mem + " at " + pct(eff) + of_bw;
    };
    const char* math = dtype_ == DtypePath::kFp8 ? "FP8" : "BF16";
    const double gemm_eff = dtype_ == DtypePath::kFp8 ? e_.fp8_mma
                            : dtype_ == DtypePath::kFp8WeightOnly ? e_.dequant_mma
                                                                  : e_.bf16_mma;
    auto flops = [&](const char* what, const char* kind, double eff) {
        if (!gpu) {
            return std::string(what) + " on the CPU cores";
        }
        return std::string(what) + " at " + pct(eff) + " of " + kind + " tensor peak";
    };
    const bool spans = nodes_per_stage() > 1;
    switch (b) {
        case Bound::kWeightReads:
            return reads("weight reads", weight_eff_);
        case Bound::kExpertReads:
            return reads("expert weight reads", expert_eff_);
        case Bound::kKvReads:
            return reads("KV-cache reads", e_.hbm_kv);
        case Bound::kGemm:
            return flops("GEMM math", math, gemm_eff);
        case Bound::kExpertGemm:
            return flops("expert GEMM math", math, gemm_eff);
        case Bound::kAttention:
            return flops("attention math", "BF16", e_.attention_mma);
        case Bound::kA2aLocal:
            return gpu ? "MoE all-to-all over NVLink" : "MoE all-to-all between the host's ranks";
        case Bound::kA2aNetwork:
            return gpu ? "MoE all-to-all over the NIC (" + d_.nic_model + ")" : "MoE all-to-all over the network";
        case Bound::kAllreduce:
            return std::string("tensor-parallel allreduces over ") +
                   (spans ? (gpu ? "the NIC" : "the network") : (gpu ? "NVLink" : "shared memory"));
        case Bound::kPipeline:
            return "the pipeline (stage-to-stage transfers and bubbles)";
        case Bound::kLaunchFloor: {
            char buf[128];
            std::snprintf(buf, sizeof(buf), "%s (%d per layer, at least %.0f us each)",
                          gpu ? "kernel launches" : "per-op thread fork/join",
                          hardware_table().latency.kernels_per_layer, engine_.kernel_floor_us);
            return buf;
        }
        case Bound::kHostOverhead: {
            char buf[96];
            std::snprintf(buf, sizeof(buf), "host work per step (%.1f ms: scheduling, round trip, sampling)",
                          engine_.step_overhead_ms);
            return buf;
        }
        case Bound::kCount:
            break;
    }
    return "?";
}

}  // namespace deepshard::topology
