// Dispatch/combine layout: bucketing tokens by destination rank (stable, so tokens stay in
// ascending order per rank), the wire format, and the inverse permutation used by combine.
#include "comm/ep/moe_layout.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <utility>

namespace deepshard::comm::ep {

StatusOr<ExpertPlacement> ExpertPlacement::create(std::vector<int32_t> expert_to_rank, int num_ranks) {
    if (num_ranks <= 0) {
        return invalid_argument("ExpertPlacement: num_ranks must be positive");
    }
    if (expert_to_rank.empty()) {
        return invalid_argument("ExpertPlacement: no experts");
    }
    for (size_t e = 0; e < expert_to_rank.size(); ++e) {
        if (expert_to_rank[e] < 0 || expert_to_rank[e] >= num_ranks) {
            return invalid_argument("ExpertPlacement: expert " + std::to_string(e) + " placed on rank " +
                                    std::to_string(expert_to_rank[e]) + ", outside [0, " +
                                    std::to_string(num_ranks) + ")");
        }
    }
    return ExpertPlacement(std::move(expert_to_rank), num_ranks);
}

StatusOr<ExpertPlacement> ExpertPlacement::contiguous(int num_experts, int num_ranks) {
    if (num_ranks <= 0 || num_experts <= 0 || num_experts % num_ranks != 0) {
        return invalid_argument("ExpertPlacement::contiguous: " + std::to_string(num_experts) +
                                " experts not divisible over " + std::to_string(num_ranks) + " ranks");
    }
    std::vector<int32_t> table(static_cast<size_t>(num_experts));
    const int per_rank = num_experts / num_ranks;
    for (int e = 0; e < num_experts; ++e) {
        table[static_cast<size_t>(e)] = e / per_rank;
    }
    return create(std::move(table), num_ranks);
}

size_t dispatch_record_bytes(size_t hidden_dim, int top_k) {
    return 4 * (hidden_dim + 1 + 2 * static_cast<size_t>(top_k));
}

StatusOr<DispatchPlan> plan_dispatch(const ExpertPlacement& placement, const Routing& routing) {
    const size_t num_tokens = routing.num_tokens;
    const int top_k = routing.top_k;
    const size_t k = static_cast<size_t>(top_k);
    if (top_k <= 0) {
        return invalid_argument("plan_dispatch: top_k must be positive");
    }
    if (routing.expert_ids.size() != num_tokens * k || routing.weights.size() != num_tokens * k) {
        return invalid_argument("plan_dispatch: expert_ids/weights must hold num_tokens * top_k = " +
                                std::to_string(num_tokens * k) + " entries");
    }
    const int num_ranks = placement.num_ranks();
    DispatchPlan plan;
    plan.num_ranks = num_ranks;
    plan.top_k = top_k;
    plan.num_tokens = num_tokens;

    // Each token's choices sorted by expert id.
    std::vector<std::pair<int32_t, float>> sorted(num_tokens * k);
    for (size_t t = 0; t < num_tokens; ++t) {
        auto* p = &sorted[t * k];
        for (size_t j = 0; j < k; ++j) {
            int32_t e = routing.expert_ids[t * k + j];
            float w = routing.weights[t * k + j];
            if (e < 0 || e >= placement.num_experts()) {
                return invalid_argument("plan_dispatch: token " + std::to_string(t) + " chose expert " +
                                        std::to_string(e) + ", outside [0, " +
                                        std::to_string(placement.num_experts()) + ")");
            }
            if (!std::isfinite(w)) {
                return invalid_argument("plan_dispatch: token " + std::to_string(t) + " has a non-finite weight");
            }
            p[j] = {e, w};
        }
        std::sort(p, p + k, [](const auto& a, const auto& b) { return a.first < b.first; });
        for (size_t j = 1; j < k; ++j) {
            if (p[j].first == p[j - 1].first) {
                return invalid_argument("plan_dispatch: token " + std::to_string(t) + " chose expert " +
                                        std::to_string(p[j].first) + " twice");
            }
        }
    }

    // (rank, token) pairs, deduplicated per token, then a stable counting sort by rank.
    plan.send_counts.assign(static_cast<size_t>(num_ranks), 0);
    std::vector<std::pair<int32_t, int32_t>> pairs;  // (rank, token)
    pairs.reserve(num_tokens * k);
    std::vector<int32_t> ranks_seen;
    for (size_t t = 0; t < num_tokens; ++t) {
        ranks_seen.clear();
        for (size_t j = 0; j < k; ++j) {
            int32_t r = placement.rank_of(sorted[t * k + j].first);
            if (std::find(ranks_seen.begin(), ranks_seen.end(), r) == ranks_seen.end()) {
                ranks_seen.push_back(r);
                pairs.emplace_back(r, static_cast<int32_t>(t));
                ++plan.send_counts[static_cast<size_t>(r)];
            }
        }
    }
    std::vector<size_t> cursor(static_cast<size_t>(num_ranks), 0);
    for (int r = 1; r < num_ranks; ++r) {
        cursor[static_cast<size_t>(r)] = cursor[static_cast<size_t>(r) - 1] + plan.send_counts[static_cast<size_t>(r) - 1];
    }
    const size_t num_slots = pairs.size();
    std::vector<int32_t> slot_rank(num_slots);
    plan.slot_token.resize(num_slots);
    for (const auto& [r, t] : pairs) {
        size_t s = cursor[static_cast<size_t>(r)]++;
        plan.slot_token[s] = t;
        slot_rank[s] = r;
    }

    // Slot contents, combine rows, and the per-token inverse map (row of each sorted expert).
    plan.slot_num_experts.assign(num_slots, 0);
    plan.slot_experts.assign(num_slots * k, -1);
    plan.slot_weights.assign(num_slots * k, 0.0f);
    plan.combine_recv_counts.assign(static_cast<size_t>(num_ranks), 0);
    plan.token_row_begin.resize(num_tokens + 1);
    for (size_t t = 0; t <= num_tokens; ++t) {
        plan.token_row_begin[t] = t * k;
    }
    plan.token_rows.assign(num_tokens * k, 0);
    plan.token_row_weights.assign(num_tokens * k, 0.0f);
    size_t row = 0;
    for (size_t s = 0; s < num_slots; ++s) {
        const size_t t = static_cast<size_t>(plan.slot_token[s]);
        const int32_t r = slot_rank[s];
        int32_t n = 0;
        for (size_t j = 0; j < k; ++j) {
            const auto& [e, w] = sorted[t * k + j];
            if (placement.rank_of(e) != r) {
                continue;
            }
            plan.slot_experts[s * k + static_cast<size_t>(n)] = e;
            plan.slot_weights[s * k + static_cast<size_t>(n)] = w;
            plan.token_rows[t * k + j] = row;
            plan.token_row_weights[t * k + j] = w;
            ++n;
            ++row;
        }
        plan.slot_num_experts[s] = n;
        plan.combine_recv_counts[static_cast<size_t>(r)] += static_cast<size_t>(n);
    }
    return plan;
}

Status pack_dispatch(const DispatchPlan& plan, std::span<const float> hidden, size_t hidden_dim,
                     std::vector<uint8_t>* out) {
    if (hidden.size() != plan.num_tokens * hidden_dim) {
        return invalid_argument("pack_dispatch: hidden must be [num_tokens=" + std::to_string(plan.num_tokens) +
                                ", hidden_dim=" + std::to_string(hidden_dim) + "]");
    }
    const size_t k = static_cast<size_t>(plan.top_k);
    const size_t rec = dispatch_record_bytes(hidden_dim, plan.top_k);
    out->resize(plan.num_slots() * rec);
    uint8_t* p = out->data();
    for (size_t s = 0; s < plan.num_slots(); ++s, p += rec) {
        const size_t t = static_cast<size_t>(plan.slot_token[s]);
        std::memcpy(p, hidden.data() + t * hidden_dim, hidden_dim * 4);
        uint8_t* q = p + hidden_dim * 4;
        std::memcpy(q, &plan.slot_num_experts[s], 4);
        std::memcpy(q + 4, &plan.slot_experts[s * k], 4 * k);
        std::memcpy(q + 4 + 4 * k, &plan.slot_weights[s * k], 4 * k);
    }
    return ok_status();
}

StatusOr<ReceivedTokens> unpack_dispatch(std::span<const uint8_t> bytes, std::span<const size_t> recv_counts,
                                         size_t hidden_dim, int top_k, const ExpertPlacement& placement,
                                         int my_rank) {
    const size_t k = static_cast<size_t>(top_k);
    const size_t rec = dispatch_record_bytes(hidden_dim, top_k);
    if (top_k <= 0 || static_cast<int>(recv_counts.size()) != placement.num_ranks()) {
        return invalid_argument("unpack_dispatch: bad top_k or recv_counts size");
    }
    ReceivedTokens rt;
    rt.hidden_dim = hidden_dim;
    rt.top_k = top_k;
    rt.recv_counts.assign(recv_counts.begin(), recv_counts.end());
    for (size_t c : recv_counts) {
        rt.num_tokens += c;
    }
    if (bytes.size() != rt.num_tokens * rec) {
        return protocol_error("dispatch: received " + std::to_string(bytes.size()) + " bytes, expected " +
                              std::to_string(rt.num_tokens) + " records of " + std::to_string(rec));
    }
    rt.hidden.resize(rt.num_tokens * hidden_dim);
    rt.src_rank.resize(rt.num_tokens);
    rt.combine_send_counts.assign(recv_counts.size(), 0);
    const uint8_t* p = bytes.data();
    size_t t = 0;
    for (size_t src = 0; src < recv_counts.size(); ++src) {
        for (size_t i = 0; i < recv_counts[src]; ++i, ++t, p += rec) {
            std::memcpy(rt.hidden.data() + t * hidden_dim, p, hidden_dim * 4);
            rt.src_rank[t] = static_cast<int32_t>(src);
            const uint8_t* q = p + hidden_dim * 4;
            int32_t n = 0;
            std::memcpy(&n, q, 4);
            if (n < 1 || n > top_k) {
                return protocol_error("dispatch: record from rank " + std::to_string(src) + " lists " +
                                      std::to_string(n) + " experts (top_k " + std::to_string(top_k) + ")");
            }
            int32_t prev = -1;
            for (size_t j = 0; j < static_cast<size_t>(n); ++j) {
                int32_t e = 0;
                float w = 0;
                std::memcpy(&e, q + 4 + 4 * j, 4);
                std::memcpy(&w, q + 4 + 4 * k + 4 * j, 4);
                if (e <= prev || e >= placement.num_experts() || placement.rank_of(e) != my_rank) {
                    return protocol_error("dispatch: record from rank " + std::to_string(src) + " names expert " +
                                          std::to_string(e) + ", not an ascending expert of rank " +
                                          std::to_string(my_rank));
                }
                prev = e;
                rt.row_token.push_back(static_cast<int32_t>(t));
                rt.row_expert.push_back(e);
                rt.row_weight.push_back(w);
            }
            rt.combine_send_counts[src] += static_cast<size_t>(n);
        }
    }
    return rt;
}

Status combine_reduce(const DispatchPlan& plan, std::span<const float> rows, size_t hidden_dim, std::span<float> out) {
    size_t total_rows = 0;
    for (size_t c : plan.combine_recv_counts) {
        total_rows += c;
    }
    if (rows.size() != total_rows * hidden_dim) {
        return invalid_argument("combine_reduce: rows must be [" + std::to_string(total_rows) + ", " +
                                std::to_string(hidden_dim) + "]");
    }
    if (out.size() != plan.num_tokens * hidden_dim) {
        return invalid_argument("combine_reduce: out must be [num_tokens, hidden_dim]");
    }
    for (size_t t = 0; t < plan.num_tokens; ++t) {
        float* o = out.data() + t * hidden_dim;
        std::fill(o, o + hidden_dim, 0.0f);
        for (size_t i = plan.token_row_begin[t]; i < plan.token_row_begin[t + 1]; ++i) {
            const float w = plan.token_row_weights[i];
            const float* y = rows.data() + plan.token_rows[i] * hidden_dim;
            for (size_t h = 0; h < hidden_dim; ++h) {
                o[h] += w * y[h];
            }
        }
    }
    return ok_status();
}

}  // namespace deepshard::comm::ep
