#include "shard_node/layout.h"

#include <algorithm>


namespace deepshard::shard_node {

Status Layout::validate(const model::ModelConfig& c) const {
    const int S = ranks_per_stage;
    if (S <= 0 || stages.empty()) {
        return invalid_argument("layout: needs at least one stage of at least one rank");
    }
    if (world_size != S * num_stages()) {
        return invalid_argument("layout: " + std::to_string(num_stages()) + " stages x " + std::to_string(S) +
                                " ranks per stage need " + std::to_string(num_stages() * S) + " ranks, the job has " +
                                std::to_string(world_size));
    }
    int64_t next = 0;
    for (size_t i = 0; i < stages.size(); ++i) {
        if (stages[i].first_layer != next || stages[i].last_layer <= stages[i].first_layer) {
            return invalid_argument("layout: stage " + std::to_string(i) + " layers [" +
                                    std::to_string(stages[i].first_layer) + ", " + std::to_string(stages[i].last_layer) +
                                    ") do not continue from layer " + std::to_string(next));
        }
        next = stages[i].last_layer;
    }
    if (next != c.num_hidden_layers) {
        return invalid_argument("layout: stages cover " + std::to_string(next) + " layers, the model has " +
                                std::to_string(c.num_hidden_layers));
    }
    if (attention == AttentionMode::kTensorParallel && S > 1) {
        if (c.num_attention_heads % S != 0) {
            return invalid_argument("layout: " + std::to_string(c.num_attention_heads) +
                                    " attention heads do not divide by tp " + std::to_string(S));
        }
        if (c.intermediate_size % S != 0 || (c.moe_intermediate_size * c.n_shared_experts) % S != 0) {
            return invalid_argument("layout: MLP widths do not divide by tp " + std::to_string(S));
        }
        if (c.vocab_size % S != 0) {
            return invalid_argument("layout: vocabulary " + std::to_string(c.vocab_size) + " does not divide by tp " +
                                    std::to_string(S));
        }
    }
    if (c.n_routed_experts > 0) {
        if (static_cast<int64_t>(expert_owner.size()) != c.n_routed_experts) {
            return invalid_argument("layout: expert placement lists " + std::to_string(expert_owner.size()) +
                                    " experts, the model has " + std::to_string(c.n_routed_experts));
        }
        for (size_t e = 0; e < expert_owner.size(); ++e) {
            if (expert_owner[e] < 0 || expert_owner[e] >= S) {
                return invalid_argument("layout: expert " + std::to_string(e) + " is placed on local rank " +
                                        std::to_string(expert_owner[e]) + ", outside the stage's " + std::to_string(S));
            }
        }
    }
    return ok_status();
}

model::ShardSpec Layout::shard_spec(const model::ModelConfig& c, int rank) const {
    const int stage = stage_of(rank), local = local_of(rank), S = ranks_per_stage;
    model::ShardSpec spec;
    spec.first_layer = stages[stage].first_layer;
    spec.last_layer = stages[stage].last_layer;
    spec.has_embedding = stage == 0;
    spec.has_head = stage == num_stages() - 1;
    spec.has_mtp = spec.has_head && c.num_nextn_predict_layers > 0;  // speculative decoding drafts there
    if (attention == AttentionMode::kTensorParallel && S > 1) {
        const int64_t hp = c.num_attention_heads / S, vp = c.vocab_size / S;
        spec.head_begin = local * hp;
        spec.head_end = (local + 1) * hp;
        spec.vocab_begin = local * vp;
        spec.vocab_end = (local + 1) * vp;
        spec.tp_rank = local;
        spec.tp_size = S;
    }
    if (c.n_routed_experts > 0 && S > 1) {
        spec.experts.assign(static_cast<size_t>(c.n_routed_experts), false);
        for (size_t e = 0; e < expert_owner.size(); ++e) {
            spec.experts[e] = expert_owner[e] == local;
        }
    }
    return spec;
}

Layout Layout::even(const model::ModelConfig& c, int stages, int ranks_per_stage, AttentionMode attention) {
    Layout l;
    l.world_size = stages * ranks_per_stage;
    l.ranks_per_stage = ranks_per_stage;
    l.attention = attention;
    const int64_t L = c.num_hidden_layers;
    int64_t first = 0;
    for (int s = 0; s < stages; ++s) {
        const int64_t n = L / stages + (s < L % stages ? 1 : 0);
        l.stages.push_back({first, first + n});
        first += n;
    }
    for (int64_t e = 0; e < c.n_routed_experts; ++e) {
        l.expert_owner.push_back(static_cast<int>(e * ranks_per_stage / c.n_routed_experts));
    }
    return l;
}

StatusOr<Layout> Layout::from_plan(const topology::PlanFile& p, const model::ModelConfig& c) {
    Layout l;
    if (p.ranks_per_stage <= 0 || p.stages.empty()) {
        return invalid_argument("plan: fields 'ranks_per_stage' and 'stages' are required to run the model");
    }
    l.ranks_per_stage = p.ranks_per_stage;
    l.world_size = p.world_size;
    l.attention = p.attention == "dp" ? AttentionMode::kDataParallel : AttentionMode::kTensorParallel;
    for (const auto& st : p.stages) {
        l.stages.push_back({st.first_layer, st.last_layer});
    }
    l.expert_owner = p.expert_placement.empty() ? even(c, 1, l.ranks_per_stage, l.attention).expert_owner
                                                : p.expert_placement;
    l.kv_budget_bytes = p.kv_budget_bytes;
    if (!p.numerics.empty() && !kernels::parse_numerics(p.numerics, &l.numerics)) {
        return invalid_argument("plan: numerics must be \"exact\" or \"fast\", got \"" + p.numerics + "\"");
    }
    if (!p.ranks.empty()) {
        // Ranks the plan does not list run on the CPU.
        l.devices.assign(static_cast<size_t>(p.world_size), RankDevice{});
        for (const auto& r : p.ranks) {
            RankDevice d;
            if (!r.device.empty()) {
                DS_ASSIGN_OR_RETURN(d.device, model::parse_device(r.device));
            }
            if (d.device == model::Device::kCuda && r.gpu < 0) {
                return invalid_argument("plan: rank " + std::to_string(r.rank) + " is on device cuda without a gpu index");
            }
            d.ordinal = std::max(r.gpu, 0);
            l.devices[static_cast<size_t>(r.rank)] = d;
        }
    }
    DS_RETURN_IF_ERROR(l.validate(c));
    return l;
}

StatusOr<Layout> Layout::from_plan_json(const std::string& text, const model::ModelConfig& c) {
    DS_ASSIGN_OR_RETURN(topology::PlanFile p, topology::PlanFile::from_json(text));
    return from_plan(p, c);
}

}  // namespace deepshard::shard_node
