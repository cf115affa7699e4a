// MoE dispatch/combine over MpiComm on every rank of the world vs the serial reference
// (bitwise: combine sums in ascending expert order like the reference).
#include "comm/ep/moe_dispatch.h"

#include <gtest/gtest.h>

#include "tests/comm/moe_test_util.h"
#include "tests/comm/mpi_test_main.h"

namespace deepshard::comm::ep {
namespace {

using comm::testing::world;
using testing::make_rank_input;
using testing::run_experts;
using testing::serial_reference;

size_t tokens_of(int rank, uint32_t seed) {
    return rank == 1 ? 0 : (static_cast<size_t>(rank) * 17 + seed * 5) % 37 + 1;  // rank 1 has none
}

TEST(MoeDispatch, RandomRoutingMatchesSerialReference) {
    auto& w = world();
    const int n = w.size();
    const int num_experts = 8 * n;
    const size_t hidden = 32;
    for (uint32_t seed = 1; seed <= 4; ++seed) {
        const int top_k = static_cast<int>(seed % 4) + 1;
        // Random placement, identical on all ranks (seeded), each rank owning >= 0 experts.
        std::mt19937 rng(seed);
        std::vector<int32_t> table(static_cast<size_t>(num_experts));
        for (auto& r : table) {
            r = static_cast<int32_t>(rng() % static_cast<uint32_t>(n));
        }
        auto placement = ExpertPlacement::create(table, n).value();
        auto in = make_rank_input(w.rank(), tokens_of(w.rank(), seed), hidden, num_experts, top_k, seed);

        auto d = dispatch(w, placement, in.hidden, hidden, in.routing(top_k));
        ASSERT_TRUE(d.ok()) << d.status().to_string();

        // Every rank can regenerate everyone's input: check what arrived here.
        size_t expect_tokens = 0;
        size_t expect_rows = 0;
        for (int src = 0; src < n; ++src) {
            auto other = make_rank_input(src, tokens_of(src, seed), hidden, num_experts, top_k, seed);
            for (size_t t = 0; t < other.num_tokens; ++t) {
                size_t mine = 0;
                for (int k = 0; k < top_k; ++k) {
                    mine += placement.rank_of(other.expert_ids[t * static_cast<size_t>(top_k) + static_cast<size_t>(k)]) ==
                            w.rank();
                }
                expect_tokens += mine > 0;
                expect_rows += mine;
            }
        }
        EXPECT_EQ(d->received.num_tokens, expect_tokens);
        EXPECT_EQ(d->received.num_rows(), expect_rows);

        std::vector<float> expert_out = run_experts(d->received);
        std::vector<float> out(in.num_tokens * hidden, -1.0f);
        Status s = combine(w, *d, expert_out, out);
        ASSERT_TRUE(s.ok()) << s.to_string();
        EXPECT_EQ(out, serial_reference(in, hidden, top_k)) << "seed " << seed;
    }
}

TEST(MoeDispatch, RejectsPlacementOfOtherSize) {
    auto& w = world();
    auto placement = ExpertPlacement::contiguous(w.size() + 1, w.size() + 1).value();
    std::vector<float> h;
    auto d = dispatch(w, placement, h, 4, Routing{0, 1, {}, {}});
    EXPECT_EQ(d.status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace deepshard::comm::ep
