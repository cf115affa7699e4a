// MoE dispatch/combine layout without MPI: a hand-checked plan, validation of bad routing and of
// corrupt wire data, and a full 4-rank exchange simulated in process vs the serial reference.
#include "comm/ep/moe_layout.h"

#include <gtest/gtest.h>

#include <cstring>
#include <limits>

#include "tests/comm/moe_test_util.h"

namespace deepshard::comm::ep {
namespace {

using testing::make_rank_input;
using testing::RankInput;
using testing::run_experts;
using testing::serial_reference;

TEST(MoeLayout, PlacementValidation) {
    EXPECT_FALSE(ExpertPlacement::create({0, 2}, 2).ok());
    EXPECT_FALSE(ExpertPlacement::create({}, 2).ok());
    EXPECT_FALSE(ExpertPlacement::contiguous(10, 4).ok());
    auto p = ExpertPlacement::contiguous(8, 4);
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(p->rank_of(0), 0);
    EXPECT_EQ(p->rank_of(3), 1);
    EXPECT_EQ(p->rank_of(7), 3);
}

TEST(MoeLayout, HandCheckedPlan) {
    auto placement = ExpertPlacement::create({0, 0, 1, 1}, 2).value();
    // t0 -> experts 3, 0; t1 -> 1, 0; t2 -> 2, 3.
    std::vector<int32_t> ids = {3, 0, 1, 0, 2, 3};
    std::vector<float> w = {0.3f, 0.7f, 0.4f, 0.6f, 0.5f, 0.5f};
    auto plan_or = plan_dispatch(placement, Routing{3, 2, ids, w});
    ASSERT_TRUE(plan_or.ok()) << plan_or.status().to_string();
    const DispatchPlan& p = *plan_or;
    EXPECT_EQ(p.send_counts, (std::vector<size_t>{2, 2}));
    EXPECT_EQ(p.slot_token, (std::vector<int32_t>{0, 1, 0, 2}));
    EXPECT_EQ(p.slot_num_experts, (std::vector<int32_t>{1, 2, 1, 2}));
    EXPECT_EQ(p.slot_experts, (std::vector<int32_t>{0, -1, 0, 1, 3, -1, 2, 3}));
    EXPECT_EQ(p.combine_recv_counts, (std::vector<size_t>{3, 3}));
    // Rows: slot0 t0/e0=0, slot1 t1/e0=1 t1/e1=2, slot2 t0/e3=3, slot3 t2/e2=4 t2/e3=5.
    EXPECT_EQ(p.token_rows, (std::vector<size_t>{0, 3, 1, 2, 4, 5}));
    EXPECT_EQ(p.token_row_weights, (std::vector<float>{0.7f, 0.3f, 0.6f, 0.4f, 0.5f, 0.5f}));
}

TEST(MoeLayout, RejectsBadRouting) {
    auto placement = ExpertPlacement::contiguous(4, 2).value();
    std::vector<int32_t> dup = {1, 1};
    std::vector<int32_t> oob = {1, 4};
    std::vector<int32_t> neg = {-1, 0};
    std::vector<float> w = {0.5f, 0.5f};
    EXPECT_EQ(plan_dispatch(placement, Routing{1, 2, dup, w}).status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(plan_dispatch(placement, Routing{1, 2, oob, w}).status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(plan_dispatch(placement, Routing{1, 2, neg, w}).status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(plan_dispatch(placement, Routing{2, 2, dup, w}).status().code(), StatusCode::kInvalidArgument);
    std::vector<int32_t> ok_ids = {0, 3};
    std::vector<float> nan_w = {0.5f, std::numeric_limits<float>::quiet_NaN()};
    EXPECT_EQ(plan_dispatch(placement, Routing{1, 2, ok_ids, nan_w}).status().code(), StatusCode::kInvalidArgument);
    // Zero tokens is fine.
    auto empty = plan_dispatch(placement, Routing{0, 2, {}, {}});
    ASSERT_TRUE(empty.ok());
    EXPECT_EQ(empty->num_slots(), 0u);
}

TEST(MoeLayout, UnpackRejectsCorruptRecords) {
    auto placement = ExpertPlacement::contiguous(4, 2).value();
    const size_t hidden = 3;
    std::vector<int32_t> ids = {2, 3};
    std::vector<float> w = {0.5f, 0.5f};
    std::vector<float> x = {1, 2, 3};
    auto plan = plan_dispatch(placement, Routing{1, 2, ids, w}).value();
    std::vector<uint8_t> bytes;
    ASSERT_TRUE(pack_dispatch(plan, x, hidden, &bytes).ok());
    std::vector<size_t> counts = {1, 0};  // arrives at rank 1 from rank 0
    ASSERT_TRUE(unpack_dispatch(bytes, counts, hidden, 2, placement, 1).ok());
    // Wrong receiving rank: experts 2 and 3 are not rank 0's.
    EXPECT_EQ(unpack_dispatch(bytes, counts, hidden, 2, placement, 0).status().code(), StatusCode::kProtocol);
    // Truncated.
    std::vector<uint8_t> shorter(bytes.begin(), bytes.end() - 1);
    EXPECT_EQ(unpack_dispatch(shorter, counts, hidden, 2, placement, 1).status().code(), StatusCode::kProtocol);
    // Expert count out of range.
    auto bad = bytes;
    int32_t n = 3;
    std::memcpy(bad.data() + hidden * 4, &n, 4);
    EXPECT_EQ(unpack_dispatch(bad, counts, hidden, 2, placement, 1).status().code(), StatusCode::kProtocol);
    // Experts not ascending.
    bad = bytes;
    int32_t e = 2;
    std::memcpy(bad.data() + hidden * 4 + 8, &e, 4);
    EXPECT_EQ(unpack_dispatch(bad, counts, hidden, 2, placement, 1).status().code(), StatusCode::kProtocol);
}

// Simulates alltoallv between `num_ranks` in-process ranks: out[dst] = concat over src of the
// block src sends to dst.
struct Exchanged {
    std::vector<std::vector<uint8_t>> bytes;
    std::vector<std::vector<size_t>> counts;
};

TEST(MoeLayout, InProcessFourRankExchangeMatchesSerialReference) {
    const int num_ranks = 4;
    const int num_experts = 16;
    const int top_k = 4;
    const size_t hidden = 24;
    std::vector<int32_t> table(num_experts);
    for (int e = 0; e < num_experts; ++e) {
        table[static_cast<size_t>(e)] = (e * 7 + 3) % num_ranks;  // scattered placement
    }
    auto placement = ExpertPlacement::create(table, num_ranks).value();
    const size_t tokens_per_rank[num_ranks] = {13, 0, 1, 40};
    std::vector<RankInput> inputs;
    std::vector<DispatchPlan> plans;
    std::vector<std::vector<uint8_t>> packed;
    for (int r = 0; r < num_ranks; ++r) {
        inputs.push_back(make_rank_input(r, tokens_per_rank[r], hidden, num_experts, top_k, 11));
        plans.push_back(plan_dispatch(placement, inputs.back().routing(top_k)).value());
        packed.emplace_back();
        ASSERT_TRUE(pack_dispatch(plans.back(), inputs.back().hidden, hidden, &packed.back()).ok());
    }
    const size_t rec = dispatch_record_bytes(hidden, top_k);
    // Dispatch exchange.
    std::vector<ReceivedTokens> received;
    for (int dst = 0; dst < num_ranks; ++dst) {
        std::vector<uint8_t> bytes;
        std::vector<size_t> counts;
        for (int src = 0; src < num_ranks; ++src) {
            const auto& p = plans[static_cast<size_t>(src)];
            size_t begin = 0;
            for (int d = 0; d < dst; ++d) {
                begin += p.send_counts[static_cast<size_t>(d)];
            }
            size_t c = p.send_counts[static_cast<size_t>(dst)];
            const auto& pk = packed[static_cast<size_t>(src)];
            bytes.insert(bytes.end(), pk.begin() + static_cast<ptrdiff_t>(begin * rec),
                         pk.begin() + static_cast<ptrdiff_t>((begin + c) * rec));
            counts.push_back(c);
        }
        auto rt = unpack_dispatch(bytes, counts, hidden, top_k, placement, dst);
        ASSERT_TRUE(rt.ok()) << rt.status().to_string();
        received.push_back(std::move(rt).value());
    }
    // Experts, then the combine exchange back to sources.
    std::vector<std::vector<float>> expert_out;
    for (const auto& rt : received) {
        expert_out.push_back(run_experts(rt));
    }
    for (int src = 0; src < num_ranks; ++src) {
        std::vector<float> rows;
        for (int dst = 0; dst < num_ranks; ++dst) {
            const auto& rt = received[static_cast<size_t>(dst)];
            size_t begin = 0;
            for (int s = 0; s < src; ++s) {
                begin += rt.combine_send_counts[static_cast<size_t>(s)];
            }
            size_t c = rt.combine_send_counts[static_cast<size_t>(src)];
            EXPECT_EQ(c, plans[static_cast<size_t>(src)].combine_recv_counts[static_cast<size_t>(dst)]);
            const auto& eo = expert_out[static_cast<size_t>(dst)];
            rows.insert(rows.end(), eo.begin() + static_cast<ptrdiff_t>(begin * hidden),
                        eo.begin() + static_cast<ptrdiff_t>((begin + c) * hidden));
        }
        std::vector<float> out(tokens_per_rank[src] * hidden, -1.0f);
        ASSERT_TRUE(combine_reduce(plans[static_cast<size_t>(src)], rows, hidden, out).ok());
        EXPECT_EQ(out, serial_reference(inputs[static_cast<size_t>(src)], hidden, top_k)) << "rank " << src;
    }
}

}  // namespace
}  // namespace deepshard::comm::ep
