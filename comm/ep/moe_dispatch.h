// MoE dispatch/combine over Communicator::alltoallv (DP attention + EP inside a stage).
//
// dispatch(): every rank passes its local tokens' hidden states and router choices; each token goes
// once to every rank owning one of its experts (with the list of its experts there). The result
// holds what this rank must compute (ReceivedTokens) and the plan to fold results back.
// combine(): each rank passes its expert outputs, one unweighted row per ReceivedTokens row; they
// return to the token's owner and are weight-summed in ascending expert order (bitwise
// deterministic, independent of placement).
//
// Both are collective over `comm` (every rank calls, same hidden_dim/top_k/placement), blocking,
// and bounded by the communicator's deadline (three alltoallv calls in dispatch: counts, records;
// one in combine). Thread-safety: as the communicator.
#pragma once

#include <span>

#include "comm/communicator.h"
#include "comm/ep/moe_layout.h"

namespace deepshard::comm::ep {

struct Dispatched {
    DispatchPlan plan;        // source side: where my tokens went
    ReceivedTokens received;  // destination side: what I compute
};

// hidden: [routing.num_tokens, hidden_dim] (num_tokens may be 0 on some ranks).
StatusOr<Dispatched> dispatch(Communicator& comm, const ExpertPlacement& placement, std::span<const float> hidden,
                              size_t hidden_dim, const Routing& routing);

// expert_out: [d.received.num_rows(), hidden_dim], unweighted expert outputs in row order.
// out: [d.plan.num_tokens, hidden_dim], overwritten with the combined result.
Status combine(Communicator& comm, const Dispatched& d, std::span<const float> expert_out, std::span<float> out);

}  // namespace deepshard::comm::ep
