// ProfiledCommunicator over the MPI world: results are unchanged, every operation is counted with
// its bytes under "<label>.<op>" (children of split() under "<label>.split.<op>"), and a receive's
// time includes waiting for a late sender.
#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "comm/profile.h"
#include "tests/comm/mpi_test_main.h"

namespace deepshard::comm {
namespace {

using testing::world;

TEST(ProfiledCommunicator, ForwardsAndCountsEveryOperation) {
    auto profile = std::make_shared<CommProfile>();
    ProfiledCommunicator pc(&world(), profile, "world");
    const int n = pc.size(), r = pc.rank();
    EXPECT_EQ(pc.backend(), "mpi");

    std::vector<float> v(100, static_cast<float>(r + 1));
    ASSERT_TRUE(pc.allreduce_sum(std::span<float>(v)).ok());
    EXPECT_EQ(v[0], static_cast<float>(n * (n + 1) / 2));

    std::vector<float> gathered(static_cast<size_t>(n) * 3);
    std::vector<float> mine(3, static_cast<float>(r));
    ASSERT_TRUE(pc.allgather(mine.data(), gathered.data(), 3, DataType::kFloat32).ok());
    for (int i = 0; i < n; ++i) EXPECT_EQ(gathered[static_cast<size_t>(i) * 3], static_cast<float>(i));

    uint64_t value = r == 0 ? 42 : 0;
    ASSERT_TRUE(pc.broadcast(&value, 8, DataType::kByte, 0).ok());
    EXPECT_EQ(value, 42u);

    auto child = pc.split(0, r);
    ASSERT_TRUE(child.ok());
    ASSERT_TRUE((*child)->barrier().ok());
    ASSERT_TRUE(pc.barrier().ok());

    const auto s = profile->snapshot();
    ASSERT_TRUE(s.count("world.allreduce"));
    EXPECT_EQ(s.at("world.allreduce").count, 1);
    EXPECT_EQ(s.at("world.allreduce").bytes, 400);
    EXPECT_EQ(s.at("world.allgather").bytes, 12);
    EXPECT_EQ(s.at("world.broadcast").bytes, 8);
    EXPECT_EQ(s.at("world.barrier").count, 1);
    EXPECT_EQ(s.at("world.split.barrier").count, 1);
    EXPECT_FALSE(s.count("world.send"));
    for (const auto& [key, st] : s) EXPECT_GE(st.seconds, 0.0) << key;
}

TEST(ProfiledCommunicator, ReceiveTimeIncludesWaitingForTheSender) {
    if (world().size() < 2) GTEST_SKIP() << "needs 2 ranks";
    auto profile = std::make_shared<CommProfile>();
    ProfiledCommunicator pc(&world(), profile, "w");
    const auto before = profile->snapshot();
    std::vector<float> buf(16, 1.0f);
    if (pc.rank() == 0) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));  // a late sender
        ASSERT_TRUE(pc.send(std::span<const float>(buf), 1, Tag{7}).ok());
    } else if (pc.rank() == 1) {
        ASSERT_TRUE(pc.recv(std::span<float>(buf), 0, Tag{7}).ok());
        const auto d = CommProfile::delta(profile->snapshot(), before);
        ASSERT_TRUE(d.count("w.recv"));
        EXPECT_EQ(d.at("w.recv").count, 1);
        EXPECT_EQ(d.at("w.recv").bytes, 64);
        // Not a timing assertion on speed: the receive cannot complete before the send was posted.
        EXPECT_GE(d.at("w.recv").seconds, 0.15);
    }
    ASSERT_TRUE(pc.barrier().ok());
}

TEST(ProfiledCommunicator, ErrorsPassThrough) {
    auto profile = std::make_shared<CommProfile>();
    ProfiledCommunicator pc(&world(), profile, "w");
    std::vector<float> buf(4);
    auto bad = pc.isend(buf.data(), buf.size(), DataType::kFloat32, pc.size() + 3, Tag{1});
    EXPECT_FALSE(bad.ok());
    EXPECT_NE(bad.status().message().find("out of range"), std::string::npos) << bad.status().to_string();
    EXPECT_FALSE(profile->snapshot().count("w.send"));  // rejected before it was issued
}

}  // namespace
}  // namespace deepshard::comm
