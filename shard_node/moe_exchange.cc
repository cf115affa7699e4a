#include "shard_node/moe_exchange.h"

#include <algorithm>

#include "comm/ep/moe_dispatch.h"

namespace deepshard::shard_node {

namespace {

class EpExchange : public model::MoeExchange {
public:
    EpExchange(comm::Communicator* comm, comm::ep::ExpertPlacement placement)
        : comm_(comm), placement_(std::move(placement)) {}

    Status run(const float* x, int64_t T, int64_t hidden, std::span<const int32_t> experts,
               std::span<const float> weights, int64_t K, const LocalExpert& local_expert, float* out) override {
        comm::ep::Routing routing;
        routing.num_tokens = static_cast<size_t>(T);
        routing.top_k = static_cast<int>(K);
        routing.expert_ids = experts;
        routing.weights = weights;
        const std::span<const float> hs(x, static_cast<size_t>(T * hidden));
        DS_ASSIGN_OR_RETURN(comm::ep::Dispatched d,
                            comm::ep::dispatch(*comm_, placement_, hs, static_cast<size_t>(hidden), routing));
        // Rows are token-major; run each local expert once over all its rows.
        const auto& rcv = d.received;
        const size_t rows = rcv.num_rows();
        y_.assign(rows * static_cast<size_t>(hidden), 0.0f);
        std::vector<size_t> order(rows);
        for (size_t i = 0; i < rows; ++i) order[i] = i;
        std::stable_sort(order.begin(), order.end(),
                         [&](size_t a, size_t b) { return rcv.row_expert[a] < rcv.row_expert[b]; });
        for (size_t i = 0; i < rows;) {
            size_t j = i;
            while (j < rows && rcv.row_expert[order[j]] == rcv.row_expert[order[i]]) ++j;
            const int64_t n = static_cast<int64_t>(j - i);
            xs_.resize(static_cast<size_t>(n * hidden));
            ys_.resize(static_cast<size_t>(n * hidden));
            for (size_t k = i; k < j; ++k) {
                const float* src = rcv.hidden.data() + static_cast<size_t>(rcv.row_token[order[k]]) * hidden;
                std::copy(src, src + hidden, xs_.data() + (k - i) * hidden);
            }
            local_expert(rcv.row_expert[order[i]], xs_.data(), n, ys_.data());
            for (size_t k = i; k < j; ++k) {
                std::copy(ys_.data() + (k - i) * hidden, ys_.data() + (k - i + 1) * hidden,
                          y_.data() + order[k] * hidden);
            }
            i = j;
        }
        return comm::ep::combine(*comm_, d, y_, std::span<float>(out, static_cast<size_t>(T * hidden)));
    }

private:
    comm::Communicator* comm_;
    comm::ep::ExpertPlacement placement_;
    std::vector<float> y_, xs_, ys_;
};

}  // namespace

std::unique_ptr<model::MoeExchange> make_moe_exchange(comm::Communicator* stage, std::vector<int> expert_owner) {
    std::vector<int32_t> table(expert_owner.begin(), expert_owner.end());
    auto placement = comm::ep::ExpertPlacement::create(std::move(table), stage->size());
    DS_CHECK(placement.ok()) << "expert placement was validated with the layout: " << placement.status().to_string();
    return std::make_unique<EpExchange>(stage, std::move(placement).value());
}

}  // namespace deepshard::shard_node
