// MoE token routing layout: the pure part of dispatch/combine (no communication), so that it is
// unit-testable without MPI. comm/ep/moe_dispatch.h runs it over Communicator::alltoallv.
//
// Vocabulary: a *token* is one row of the local hidden states [num_tokens, hidden_dim] with top_k
// (expert id, weight) choices. A *slot* is one (token, destination rank) pair: a token is sent once
// to each rank that owns at least one of its experts, carrying the list of its experts there.
// A *row* is one (received token, local expert) pair: the unit the expert computation produces.
//
// Determinism: combine sums a token's expert outputs in ascending expert id order, whatever the
// placement, so results are bitwise identical to a serial loop over the sorted experts:
//   out[t] = 0; for e in sorted(experts of t): out[t] += weight(t,e) * y(t,e)
//
// Wire record of one slot (all 4-byte fields, native endianness — every rank of a stage runs the
// same build): hidden[hidden_dim] f32, num_experts i32, experts[top_k] i32 (-1 padded, ascending),
// weights[top_k] f32 (0 padded).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "common/status.h"

namespace deepshard::comm::ep {

// Which rank owns each routed expert. Immutable value type.
class ExpertPlacement {
public:
    static StatusOr<ExpertPlacement> create(std::vector<int32_t> expert_to_rank, int num_ranks);
    // Experts [r*E/R, (r+1)*E/R) on rank r (E must be divisible by R).
    static StatusOr<ExpertPlacement> contiguous(int num_experts, int num_ranks);

    int num_experts() const { return static_cast<int>(expert_to_rank_.size()); }
    int num_ranks() const { return num_ranks_; }
    int rank_of(int expert) const { return expert_to_rank_[static_cast<size_t>(expert)]; }
    const std::vector<int32_t>& table() const { return expert_to_rank_; }

private:
    ExpertPlacement(std::vector<int32_t> table, int num_ranks) : expert_to_rank_(std::move(table)), num_ranks_(num_ranks) {}
    std::vector<int32_t> expert_to_rank_;
    int num_ranks_ = 0;
};

// Router output of the local tokens: expert_ids/weights are [num_tokens, top_k] row-major.
struct Routing {
    size_t num_tokens = 0;
    int top_k = 0;
    std::span<const int32_t> expert_ids;
    std::span<const float> weights;
};

// Source-side plan: what to send where, and how to fold the returned rows.
struct DispatchPlan {
    int num_ranks = 0;
    int top_k = 0;
    size_t num_tokens = 0;
    std::vector<size_t> send_counts;       // [num_ranks] slots per destination rank
    std::vector<int32_t> slot_token;       // [num_slots] grouped by rank ascending, tokens ascending
    std::vector<int32_t> slot_num_experts; // [num_slots]
    std::vector<int32_t> slot_experts;     // [num_slots * top_k] ascending, -1 padded
    std::vector<float> slot_weights;       // [num_slots * top_k] 0 padded
    std::vector<size_t> combine_recv_counts;  // [num_ranks] rows coming back from each rank
    // Per token, its rows in the combine receive buffer in ascending expert order:
    // rows token_row_begin[t] .. token_row_begin[t+1] of token_rows / token_row_weights.
    std::vector<size_t> token_row_begin;   // [num_tokens + 1]
    std::vector<size_t> token_rows;        // [num_tokens * top_k] row index in combine buffer
    std::vector<float> token_row_weights;  // [num_tokens * top_k]

    size_t num_slots() const { return slot_token.size(); }
};

// Validates the routing (ids in range, no duplicate expert per token, finite weights) and builds
// the plan.
StatusOr<DispatchPlan> plan_dispatch(const ExpertPlacement& placement, const Routing& routing);

// Bytes of one wire record.
size_t dispatch_record_bytes(size_t hidden_dim, int top_k);

// Serializes the slots (in plan order) from hidden [num_tokens, hidden_dim] into out, which is
// resized to num_slots * dispatch_record_bytes().
Status pack_dispatch(const DispatchPlan& plan, std::span<const float> hidden, size_t hidden_dim,
                     std::vector<uint8_t>* out);

// What a rank received: tokens to run through its local experts.
struct ReceivedTokens {
    size_t hidden_dim = 0;
    int top_k = 0;
    size_t num_tokens = 0;
    std::vector<float> hidden;           // [num_tokens, hidden_dim]
    std::vector<int32_t> src_rank;       // [num_tokens]
    std::vector<size_t> recv_counts;     // [num_ranks] tokens from each source rank
    // One row per (token, local expert), token-major, experts ascending. Expert outputs passed to
    // combine are [num_rows, hidden_dim] in this order; they are *unweighted* (the source applies
    // row_weight, which is given here for callers that want it, e.g. to skip zero weights).
    std::vector<int32_t> row_token;
    std::vector<int32_t> row_expert;
    std::vector<float> row_weight;
    std::vector<size_t> combine_send_counts;  // [num_ranks] rows going back to each source rank

    size_t num_rows() const { return row_token.size(); }
};

// Parses received records (recv_counts[r] records from rank r, concatenated in rank order) and
// validates every field (this is network data): counts, expert ids owned by `my_rank`, ascending,
// record size.
StatusOr<ReceivedTokens> unpack_dispatch(std::span<const uint8_t> bytes, std::span<const size_t> recv_counts,
                                         size_t hidden_dim, int top_k, const ExpertPlacement& placement, int my_rank);

// out[t] = sum over the token's experts in ascending id order of weight * rows[row]. rows is the
// combine receive buffer [sum(combine_recv_counts), hidden_dim]; out is [num_tokens, hidden_dim].
Status combine_reduce(const DispatchPlan& plan, std::span<const float> rows, size_t hidden_dim, std::span<float> out);

}  // namespace deepshard::comm::ep
