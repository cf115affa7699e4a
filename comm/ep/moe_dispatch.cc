// dispatch = alltoallv(slot counts) + alltoallv(records); combine = alltoallv(rows) + reduce.
#include "comm/ep/moe_dispatch.h"

#include <vector>

namespace deepshard::comm::ep {

StatusOr<Dispatched> dispatch(Communicator& comm, const ExpertPlacement& placement, std::span<const float> hidden,
                              size_t hidden_dim, const Routing& routing) {
    if (placement.num_ranks() != comm.size()) {
        return invalid_argument("dispatch: placement has " + std::to_string(placement.num_ranks()) +
                                " ranks, communicator " + std::to_string(comm.size()));
    }
    Dispatched d;
    DS_ASSIGN_OR_RETURN(d.plan, plan_dispatch(placement, routing));
    std::vector<uint8_t> send_bytes;
    DS_RETURN_IF_ERROR(pack_dispatch(d.plan, hidden, hidden_dim, &send_bytes));

    // Exchange slot counts (one uint64 per peer).
    const size_t n = static_cast<size_t>(comm.size());
    std::vector<uint64_t> send_counts64(d.plan.send_counts.begin(), d.plan.send_counts.end());
    std::vector<uint64_t> recv_counts64(n, 0);
    std::vector<size_t> iota_displs(n);
    for (size_t i = 0; i < n; ++i) {
        iota_displs[i] = i * 8;
    }
    std::vector<size_t> eights(n, 8);
    DS_RETURN_IF_ERROR(comm.alltoallv(send_counts64.data(), eights, iota_displs, recv_counts64.data(), eights,
                                      iota_displs, DataType::kByte)
                           .with_context("moe dispatch (counts)"));

    const size_t rec = dispatch_record_bytes(hidden_dim, routing.top_k);
    std::vector<size_t> recv_counts(recv_counts64.begin(), recv_counts64.end());
    std::vector<size_t> sc(n), rc(n);
    size_t total_recv = 0;
    for (size_t i = 0; i < n; ++i) {
        sc[i] = d.plan.send_counts[i] * rec;
        rc[i] = recv_counts[i] * rec;
        total_recv += rc[i];
    }
    std::vector<uint8_t> recv_bytes(total_recv);
    DS_RETURN_IF_ERROR(comm.alltoallv(send_bytes.data(), sc, exclusive_prefix_sum(sc), recv_bytes.data(), rc,
                                      exclusive_prefix_sum(rc), DataType::kByte)
                           .with_context("moe dispatch (tokens)"));
    DS_ASSIGN_OR_RETURN(d.received,
                        unpack_dispatch(recv_bytes, recv_counts, hidden_dim, routing.top_k, placement, comm.rank()));
    return d;
}

Status combine(Communicator& comm, const Dispatched& d, std::span<const float> expert_out, std::span<float> out) {
    const size_t h = d.received.hidden_dim;
    if (expert_out.size() != d.received.num_rows() * h) {
        return invalid_argument("combine: expert_out must be [" + std::to_string(d.received.num_rows()) + ", " +
                                std::to_string(h) + "]");
    }
    const size_t n = static_cast<size_t>(comm.size());
    std::vector<size_t> sc(n), rc(n);
    size_t total_recv = 0;
    for (size_t i = 0; i < n; ++i) {
        sc[i] = d.received.combine_send_counts[i] * h;
        rc[i] = d.plan.combine_recv_counts[i] * h;
        total_recv += rc[i];
    }
    std::vector<float> rows(total_recv);
    DS_RETURN_IF_ERROR(comm.alltoallv(expert_out.data(), sc, exclusive_prefix_sum(sc), rows.data(), rc,
                                      exclusive_prefix_sum(rc), DataType::kFloat32)
                           .with_context("moe combine"));
    return combine_reduce(d.plan, rows, h, out);
}

}  // namespace deepshard::comm::ep
