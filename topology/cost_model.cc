// Decode and prefill time of one step, op by op. The formulas (per layer, per rank):
//   attention projections   bytes = the rank's attention weights, FLOPs = 2 x tokens x params
//   attention core (decode) bytes = tokens x KV length x latent bytes, FLOPs = absorbed MLA
//                           (per head and cached token: 2 x (2 x kv_lora + rope))
//   attention core (prefill) FLOPs = tokens x ctx x heads x 2 x (qk + v head dims), no KV re-read
//   MoE                     the rank's experts that at least one of the step's tokens picks
//                           (uniform routing: 1 - (1 - k/E)^tokens of them), shared expert, router
//   TP collectives          dense layers 2 allreduces, MoE layers 3 (MODEL_SPEC §6)
//   DP+EP all-to-all        dispatch (FP8 on the FP8 path) + combine (BF16) to the distinct ranks
//                           owning each token's k experts; across nodes one copy per remote node
//                           (DeepEP-style NVLink forwarding)
#include "topology/cost_model.h"

#include <algorithm>
#include <cmath>

namespace deepshard::topology {

double CostModel::Cost::total() const { return memory + compute + comm + floor; }

CostModel::CostModel(const ModelStats& stats, const DeviceSpec& device, DtypePath dtype, Geometry geometry)
    : s_(stats), d_(device), dtype_(dtype), g_(std::move(geometry)) {
    const HardwareTable& t = hardware_table();
    const Efficiency& e = t.efficiency;
    if (d_.is_gpu()) {
        hbm_ = d_.mem_bw_gbs * 1e9 * e.hbm;
        switch (dtype_) {
            case DtypePath::kFp8:
                gemm_ = d_.fp8_tflops * 1e12 * e.fp8_mma;
                break;
            case DtypePath::kFp8WeightOnly:
                gemm_ = d_.bf16_tflops * 1e12 * e.dequant_mma;
                break;
            case DtypePath::kBf16:
                gemm_ = d_.bf16_tflops * 1e12 * e.bf16_mma;
                break;
        }
        attn_ = d_.bf16_tflops * 1e12 * e.attention;
        intra_bw_ = d_.nvlink_gbs * 1e9 * e.nvlink;
    } else {
        // CPU ranks of one node share its memory bandwidth and cores; the table values are achievable ones.
        const double share = std::max(g_.ranks_per_node, 1);
        hbm_ = d_.mem_bw_gbs * 1e9 / share;
        gemm_ = attn_ = d_.bf16_tflops * 1e12 / share;
        intra_bw_ = d_.nvlink_gbs * 1e9;
    }
    inter_bw_ = d_.nic_gbs * 1e9 * e.nic;
}

int CostModel::nodes_per_stage() const {
    const int rpn = std::max(g_.ranks_per_node, 1);
    return std::max(1, (g_.ranks_per_stage + rpn - 1) / rpn);
}

double CostModel::op(double bytes, double flops, double rate) const { return std::max(bytes / hbm_, flops / rate); }

double CostModel::collective(double bytes_per_rank, bool allreduce) const {
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
    const double factor = allreduce ? 2.0 * (S - 1) / S : 1.0;
    return alpha * 1e-6 + factor * bytes_per_rank / (spans ? inter_bw_ : intra_bw_);
}

double CostModel::p2p(double bytes) const {
    const Latencies& lat = hardware_table().latency;
    const bool inter = g_.ranks_per_stage >= g_.ranks_per_node;
    return (inter ? lat.p2p_inter_us : lat.p2p_intra_us) * 1e-6 + bytes / (inter ? inter_bw_ : intra_bw_);
}

CostModel::Cost CostModel::stage_cost(
    int stage, int64_t n_rank, int64_t b_stage, double context, int64_t logit_rows, bool decode) const {
    const model::ModelConfig& c = s_.config();
    const HardwareTable& t = hardware_table();
    const int S = g_.ranks_per_stage;
    const int split = g_.dp_attention ? 1 : S;
    const double n = static_cast<double>(n_rank), B = static_cast<double>(b_stage);
    const double H = static_cast<double>(c.hidden_size);
    const double heads = static_cast<double>(c.num_attention_heads / split);
    const double k = static_cast<double>(c.num_experts_per_tok), E = static_cast<double>(c.n_routed_experts);
    const double floor_layer =
        t.latency.kernels_per_layer * (d_.is_gpu() ? t.latency.kernel_floor_us : t.latency.cpu_op_floor_us) * 1e-6;
    const double attn_param_share = s_.attention_bytes(split) / s_.attention_bytes(1);
    Cost total;
    auto add_op = [&](double bytes, double flops, double rate, double* roof) {
        const double tm = bytes / hbm_, tc = flops / rate;
        (tm >= tc ? total.memory : total.compute) += std::max(tm, tc);
        *roof += std::max(tm, tc);
    };
    for (int64_t l = g_.stages[stage].first; l < g_.stages[stage].second; ++l) {
        double roof = 0;
        add_op(s_.attention_bytes(split), 2 * n * s_.attention_params() * attn_param_share, gemm_, &roof);
        if (decode) {
            add_op(n * context * s_.kv_bytes_per_token_layer(),
                   n * context * heads * 2 * (2.0 * c.kv_lora_rank + c.qk_rope_head_dim), attn_, &roof);
        } else {
            add_op(n * s_.kv_bytes_per_token_layer(),
                   n * context * heads * 2 * static_cast<double>(c.qk_head_dim() + c.v_head_dim), attn_, &roof);
        }
        const bool moe = c.is_moe_layer(l);
        if (moe) {
            const double p_active = 1.0 - std::pow(1.0 - k / E, B);
            const double active = g_.max_experts_per_rank * p_active;
            add_op(
                active * s_.expert_bytes() + s_.shared_bytes(split) + s_.router_bytes(),
                2 * (B * k / S) * s_.expert_params() + 2 * n * s_.shared_params() / split + 2 * n * s_.router_params(),
                gemm_, &roof);
        } else {
            add_op(s_.dense_mlp_bytes(split), 2 * n * s_.dense_mlp_params() / split, gemm_, &roof);
        }
        total.floor += std::max(0.0, floor_layer - roof);
        if (S > 1 && !g_.dp_attention) {
            total.comm += (moe ? 3 : 2) * collective(n * H * 2, true);
        } else if (S > 1 && moe) {
            // Dispatch + combine. Distinct destination ranks (other than this one) per token:
            const double d = S * (1.0 - std::pow(1.0 - 1.0 / S, k)) * (S - 1.0) / S;
            const double disp = dtype_ == DtypePath::kFp8 ? H * (1.0 + 4.0 / 128) : H * 2;
            const double bytes = disp + H * 2;
            const int m = nodes_per_stage();
            double wire = n * d * bytes / intra_bw_;
            if (m > 1) {
                const double dn = m * (1.0 - std::pow(1.0 - 1.0 / m, k)) * (m - 1.0) / m;
                wire = std::max(wire, n * dn * bytes / inter_bw_);
            }
            const Latencies& lat = t.latency;
            const double alpha =
                d_.is_gpu() ? (m > 1 ? lat.collective_inter_us : lat.collective_intra_us) : lat.cpu_collective_us;
            total.comm += 2 * alpha * 1e-6 + wire;
        }
    }
    if (stage == 0 && S > 1 && !g_.dp_attention) {
        total.comm += collective(n * H * 2, true);  // vocab-parallel embedding
    }
    if (stage + 1 == static_cast<int>(g_.stages.size())) {
        const double rows = static_cast<double>(logit_rows);
        double roof = 0;
        add_op(s_.head_bytes(split), 2 * rows * s_.head_params() / split, gemm_, &roof);
        if (S > 1 && !g_.dp_attention) {
            total.comm += collective(rows * c.vocab_size / split * 4.0, false);  // logits all-gather
        }
    }
    return total;
}

DecodeEstimate CostModel::decode(int64_t batch, int64_t context) const {
    const int S = g_.ranks_per_stage;
    const int64_t n = g_.dp_attention ? (batch + S - 1) / S : batch;
    const double H = static_cast<double>(s_.config().hidden_size);
    DecodeEstimate est;
    est.batch = batch;
    est.concurrency = batch * g_.pp;
    est.context = context;
    double sum = 0, worst = 0;
    Cost worst_cost;
    for (int st = 0; st < g_.pp; ++st) {
        const Cost cst = stage_cost(st, n, batch, static_cast<double>(context), n, true);
        sum += cst.total() + (st + 1 < g_.pp ? p2p(n * H * 2) : 0.0);
        if (cst.total() > worst) {
            worst = cst.total();
            worst_cost = cst;
        }
    }
    const double tpot = std::max(sum, g_.pp * worst);
    est.stage_ms = worst * 1e3;
    est.tpot_ms = tpot * 1e3;
    est.tokens_per_s = static_cast<double>(est.concurrency) / tpot;
    est.per_user_tokens_per_s = 1.0 / tpot;
    est.memory_ms = worst_cost.memory * 1e3;
    est.compute_ms = worst_cost.compute * 1e3;
    est.comm_ms = worst_cost.comm * 1e3;
    est.floor_ms = worst_cost.floor * 1e3;
    return est;
}

PrefillEstimate CostModel::prefill(int64_t tokens_per_rank, int64_t prompt) const {
    const int S = g_.ranks_per_stage;
    const double H = static_cast<double>(s_.config().hidden_size);
    const int64_t b_stage = g_.dp_attention ? tokens_per_rank * S : tokens_per_rank;
    const int64_t rows = std::max<int64_t>(1, tokens_per_rank / std::max<int64_t>(prompt, 1));
    PrefillEstimate est;
    est.tokens_per_step = b_stage;
    double worst = 0, ttft = 0;
    for (int st = 0; st < g_.pp; ++st) {
        worst = std::max(worst, stage_cost(st, tokens_per_rank, b_stage, prompt / 2.0, rows, false).total());
        ttft += stage_cost(st, prompt, prompt, prompt / 2.0, 1, false).total() +
                (st + 1 < g_.pp ? p2p(prompt * H * 2) : 0.0);
    }
    // Chunks of different prompts fill the pipeline, so the slowest stage sets the rate.
    est.stage_ms = worst * 1e3;
    est.tokens_per_s = static_cast<double>(b_stage) / worst;
    est.ttft_ms = ttft * 1e3;
    return est;
}

}  // namespace deepshard::topology
