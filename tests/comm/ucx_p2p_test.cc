// UcxP2p over the transports chosen by UCX_TLS (ctest runs this binary with tcp and with shm):
// exact payloads across sizes, tag matching, async overlap, size mismatch and deadlines.
#include "comm/ucx/ucx_p2p.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <numeric>

#include "tests/comm/mpi_test_main.h"

namespace deepshard::comm {
namespace {

using testing::world;

class UcxP2pTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        const char* tls = std::getenv("UCX_TLS");
        if (world().rank() == 0) {
            std::printf("UCX_TLS=%s\n", tls ? tls : "(unset)");
        }
        auto p = UcxP2p::create(world());
        ASSERT_TRUE(p.ok()) << p.status().to_string();
        p2p_ = std::move(p).value().release();
    }
    static void TearDownTestSuite() {
        // Everyone stops sending before anyone closes endpoints.
        (void)world().barrier();
        delete p2p_;
        p2p_ = nullptr;
    }
    void SetUp() override {
        ASSERT_NE(p2p_, nullptr);
        if (world().size() < 2) {
            GTEST_SKIP() << "needs 2 ranks";
        }
    }
    static UcxP2p* p2p_;
};
UcxP2p* UcxP2pTest::p2p_ = nullptr;

TEST_F(UcxP2pTest, RingAcrossSizes) {
    UcxP2p& p = *p2p_;
    EXPECT_EQ(p.rank(), world().rank());
    EXPECT_EQ(p.size(), world().size());
    const int next = (p.rank() + 1) % p.size();
    const int prev = (p.rank() + p.size() - 1) % p.size();
    for (size_t count : {size_t{0}, size_t{1}, size_t{2}, size_t{1000}, size_t{1} << 16, size_t{1} << 20}) {
        std::vector<float> out(count), in(count, -1.0f);
        std::iota(out.begin(), out.end(), static_cast<float>(p.rank()));
        auto rr = p.irecv(in.data(), count, DataType::kFloat32, prev, Tag{1});
        ASSERT_TRUE(rr.ok()) << rr.status().to_string();
        Status s = p.send(std::span<const float>(out), next, Tag{1});
        ASSERT_TRUE(s.ok()) << s.to_string();
        s = rr->wait();
        ASSERT_TRUE(s.ok()) << s.to_string();
        for (size_t i = 0; i < count; ++i) {
            ASSERT_EQ(in[i], static_cast<float>(prev) + static_cast<float>(i)) << "count " << count;
        }
    }
}

TEST_F(UcxP2pTest, TagsMatchIndependently) {
    UcxP2p& p = *p2p_;
    const int next = (p.rank() + 1) % p.size();
    const int prev = (p.rank() + p.size() - 1) % p.size();
    int32_t a = 100 + p.rank(), b = 200 + p.rank(), ra = 0, rb = 0;
    auto r2 = p.irecv(&rb, 4, DataType::kByte, prev, Tag{22});
    auto r1 = p.irecv(&ra, 4, DataType::kByte, prev, Tag{21});
    ASSERT_TRUE(r1.ok() && r2.ok());
    auto s1 = p.isend(&a, 4, DataType::kByte, next, Tag{21});
    auto s2 = p.isend(&b, 4, DataType::kByte, next, Tag{22});
    ASSERT_TRUE(s1.ok() && s2.ok());
    std::vector<Request> all;
    all.push_back(std::move(r1).value());
    all.push_back(std::move(r2).value());
    all.push_back(std::move(s1).value());
    all.push_back(std::move(s2).value());
    ASSERT_TRUE(wait_all(all).ok());
    EXPECT_EQ(ra, 100 + prev);
    EXPECT_EQ(rb, 200 + prev);
}

TEST_F(UcxP2pTest, SizeMismatchIsAnError) {
    UcxP2p& p = *p2p_;
    const int next = (p.rank() + 1) % p.size();
    const int prev = (p.rank() + p.size() - 1) % p.size();
    std::vector<float> out(3, 1.0f), in(8);
    auto rr = p.irecv(in.data(), in.size(), DataType::kFloat32, prev, Tag{30});
    ASSERT_TRUE(rr.ok());
    ASSERT_TRUE(p.send(out.data(), out.size(), DataType::kFloat32, next, Tag{30}).ok());
    Status s = rr->wait();
    EXPECT_EQ(s.code(), StatusCode::kProtocol) << s.to_string();
    ASSERT_TRUE(world().barrier().ok());
}

TEST_F(UcxP2pTest, SelfAndBadArgumentsRejected) {
    UcxP2p& p = *p2p_;
    float x = 0;
    EXPECT_EQ(p.isend(&x, 1, DataType::kFloat32, p.rank(), Tag{0}).status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(p.isend(&x, 1, DataType::kFloat32, p.size(), Tag{0}).status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(p.irecv(&x, 1, DataType::kFloat32, 0, Tag{-3}).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(UcxP2pTest, RecvNobodySendsHitsDeadline) {
    UcxP2p& p = *p2p_;
    p.set_timeout(Millis(300));
    const int peer = (p.rank() + 1) % p.size();
    float x = 0;
    auto t0 = Clock::now();
    Status s = p.recv(&x, 1, DataType::kFloat32, peer, Tag{999});
    auto ms = std::chrono::duration_cast<Millis>(Clock::now() - t0).count();
    EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded) << s.to_string();
    EXPECT_GE(ms, 290);
    EXPECT_LT(ms, 1800);
    EXPECT_NE(s.message().find("[ucx], peer " + std::to_string(peer)), std::string::npos) << s.message();
    // The receive was cancelled cleanly: still usable.
    EXPECT_FALSE(p.poisoned());
    p.set_timeout(Millis(30000));
    ASSERT_TRUE(world().barrier().ok());
    const int prev = (p.rank() + p.size() - 1) % p.size();
    float y = static_cast<float>(p.rank()), got = -1;
    auto rr = p.irecv(&got, 1, DataType::kFloat32, prev, Tag{998});
    ASSERT_TRUE(rr.ok());
    ASSERT_TRUE(p.send(&y, 1, DataType::kFloat32, peer, Tag{998}).ok());
    ASSERT_TRUE(rr->wait().ok());
    EXPECT_EQ(got, static_cast<float>(prev));
}

}  // namespace
}  // namespace deepshard::comm
