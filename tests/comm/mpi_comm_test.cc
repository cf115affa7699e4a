// Multi-rank tests of MpiComm: exact results of every collective, point-to-point, async
// completion, deadlines and sub-communicators. Run by ctest on 2, 3 and 4 ranks.
#include <gtest/gtest.h>

#include <cstring>
#include <numeric>
#include <thread>
#include <vector>

#include "tests/comm/mpi_test_main.h"

namespace deepshard::comm {
namespace {

using testing::world;

// Restores the world timeout when a test changed it.
class TimeoutGuard {
public:
    explicit TimeoutGuard(PointToPoint& c) : c_(c), saved_(c.timeout()) {}
    ~TimeoutGuard() { c_.set_timeout(saved_); }

private:
    PointToPoint& c_;
    Millis saved_;
};

TEST(MpiComm, RankAndSize) {
    auto& w = world();
    EXPECT_GE(w.size(), 1);
    EXPECT_GE(w.rank(), 0);
    EXPECT_LT(w.rank(), w.size());
    EXPECT_EQ(w.backend(), "mpi");
    EXPECT_TRUE(w.owned());
    EXPECT_FALSE(w.poisoned());
}

TEST(MpiComm, AllreduceSumExact) {
    auto& w = world();
    const int n = w.size();
    for (size_t count : {size_t{0}, size_t{1}, size_t{7}, size_t{1000}, size_t{100003}}) {
        std::vector<float> send(count), recv(count, -1.0f);
        for (size_t i = 0; i < count; ++i) {
            send[i] = static_cast<float>((w.rank() + 1) * static_cast<int>(i % 97));
        }
        ASSERT_TRUE(w.allreduce_sum(send.data(), recv.data(), count).ok());
        for (size_t i = 0; i < count; ++i) {
            ASSERT_EQ(recv[i], static_cast<float>(n * (n + 1) / 2 * static_cast<int>(i % 97))) << "i=" << i;
        }
        // In place.
        auto s = w.allreduce_sum(std::span<float>(send));
        ASSERT_TRUE(s.ok()) << s.to_string();
        EXPECT_EQ(send, recv);
    }
}

TEST(MpiComm, AllgatherFloatsAndBytes) {
    auto& w = world();
    const size_t n = static_cast<size_t>(w.size());
    for (size_t count : {size_t{1}, size_t{5}, size_t{4096}}) {
        std::vector<float> send(count);
        for (size_t i = 0; i < count; ++i) {
            send[i] = static_cast<float>(w.rank() * 10000 + static_cast<int>(i));
        }
        std::vector<float> recv(count * n);
        ASSERT_TRUE(w.allgather(send.data(), recv.data(), count, DataType::kFloat32).ok());
        for (size_t r = 0; r < n; ++r) {
            for (size_t i = 0; i < count; ++i) {
                ASSERT_EQ(recv[r * count + i], static_cast<float>(r * 10000 + i));
            }
        }
    }
    std::vector<uint8_t> b = {static_cast<uint8_t>(w.rank()), 0xAB, static_cast<uint8_t>(255 - w.rank())};
    std::vector<uint8_t> all(3 * n);
    ASSERT_TRUE(w.allgather(b.data(), all.data(), 3, DataType::kByte).ok());
    for (size_t r = 0; r < n; ++r) {
        EXPECT_EQ(all[3 * r], r);
        EXPECT_EQ(all[3 * r + 1], 0xAB);
        EXPECT_EQ(all[3 * r + 2], 255 - r);
    }
}

TEST(MpiComm, ReduceScatterSumExact) {
    auto& w = world();
    const size_t n = static_cast<size_t>(w.size());
    for (size_t per : {size_t{1}, size_t{3}, size_t{2048}}) {
        std::vector<float> send(per * n);
        for (size_t b = 0; b < n; ++b) {
            for (size_t i = 0; i < per; ++i) {
                send[b * per + i] = static_cast<float>(w.rank() + 1) * static_cast<float>(b * 1000 + i);
            }
        }
        std::vector<float> recv(per, -1.0f);
        ASSERT_TRUE(w.reduce_scatter_sum(send.data(), recv.data(), per).ok());
        const float ranksum = static_cast<float>(n * (n + 1) / 2);
        for (size_t i = 0; i < per; ++i) {
            ASSERT_EQ(recv[i], ranksum * static_cast<float>(static_cast<size_t>(w.rank()) * 1000 + i));
        }
    }
}

// Value sent from src to dst at position i.
float a2a_value(size_t src, size_t dst, size_t i) {
    return static_cast<float>(src * 1000000 + dst * 1000 + i);
}
size_t a2a_count(size_t src, size_t dst) {
    return (src + 2 * dst) % 3 * (src + 1);  // uneven, with zeros (e.g. 0 -> 0)
}

TEST(MpiComm, AlltoallvUnevenWithZerosAndGaps) {
    auto& w = world();
    const size_t n = static_cast<size_t>(w.size());
    const size_t me = static_cast<size_t>(w.rank());
    std::vector<size_t> sc(n), sd(n), rc(n), rd(n);
    size_t off = 0;
    for (size_t d = 0; d < n; ++d) {
        sc[d] = a2a_count(me, d);
        sd[d] = off;
        off += sc[d] + 2;  // gaps between blocks
    }
    std::vector<float> send(off, -7.0f);
    for (size_t d = 0; d < n; ++d) {
        for (size_t i = 0; i < sc[d]; ++i) {
            send[sd[d] + i] = a2a_value(me, d, i);
        }
    }
    // Receive blocks in reverse rank order to check displacements are honoured.
    off = 0;
    for (size_t k = n; k-- > 0;) {
        rc[k] = a2a_count(k, me);
        rd[k] = off;
        off += rc[k];
    }
    std::vector<float> recv(off + 1, -1.0f);
    Status s = w.alltoallv(send.data(), sc, sd, recv.data(), rc, rd, DataType::kFloat32);
    ASSERT_TRUE(s.ok()) << s.to_string();
    for (size_t src = 0; src < n; ++src) {
        for (size_t i = 0; i < rc[src]; ++i) {
            ASSERT_EQ(recv[rd[src] + i], a2a_value(src, me, i)) << "src " << src << " i " << i;
        }
    }
    EXPECT_EQ(recv.back(), -1.0f);  // nothing written past the end

    // All-zero exchange is legal.
    std::vector<size_t> zeros(n, 0);
    EXPECT_TRUE(w.alltoallv(nullptr, zeros, zeros, nullptr, zeros, zeros, DataType::kByte).ok());
    // Wrong shapes are rejected.
    std::vector<size_t> short_counts(n + 1, 0);
    EXPECT_EQ(w.alltoallv(nullptr, short_counts, zeros, nullptr, zeros, zeros, DataType::kByte).code(),
              StatusCode::kInvalidArgument);
}

TEST(MpiComm, BroadcastFromEveryRoot) {
    auto& w = world();
    for (int root = 0; root < w.size(); ++root) {
        std::vector<float> buf(333, w.rank() == root ? static_cast<float>(root + 0.5) : -1.0f);
        ASSERT_TRUE(w.broadcast(buf.data(), buf.size(), DataType::kFloat32, root).ok());
        for (float v : buf) {
            ASSERT_EQ(v, static_cast<float>(root + 0.5));
        }
    }
    EXPECT_EQ(w.broadcast(nullptr, 0, DataType::kByte, w.size()).code(), StatusCode::kInvalidArgument);
}

TEST(MpiComm, Barrier) {
    for (int i = 0; i < 5; ++i) {
        ASSERT_TRUE(world().barrier().ok());
    }
}

TEST(MpiComm, SendRecvRing) {
    auto& w = world();
    if (w.size() < 2) {
        GTEST_SKIP() << "needs 2 ranks";
    }
    const int next = (w.rank() + 1) % w.size();
    const int prev = (w.rank() + w.size() - 1) % w.size();
    std::vector<float> out(5000), in(5000, 0.0f);
    std::iota(out.begin(), out.end(), static_cast<float>(w.rank() * 10000));
    auto rr = w.irecv(in.data(), in.size(), DataType::kFloat32, prev, Tag{7});
    ASSERT_TRUE(rr.ok());
    ASSERT_TRUE(w.send(std::span<const float>(out), next, Tag{7}).ok());
    ASSERT_TRUE(rr->wait().ok());
    for (size_t i = 0; i < in.size(); ++i) {
        ASSERT_EQ(in[i], static_cast<float>(prev * 10000 + static_cast<int>(i)));
    }
}

TEST(MpiComm, TagsMatchIndependently) {
    auto& w = world();
    if (w.size() < 2) {
        GTEST_SKIP() << "needs 2 ranks";
    }
    const int next = (w.rank() + 1) % w.size();
    const int prev = (w.rank() + w.size() - 1) % w.size();
    int32_t a = 100 + w.rank(), b = 200 + w.rank(), ra = 0, rb = 0;
    // Receive tag 2 first, tag 1 second: tags decide matching, not arrival order.
    auto r2 = w.irecv(&rb, 4, DataType::kByte, prev, Tag{2});
    auto r1 = w.irecv(&ra, 4, DataType::kByte, prev, Tag{1});
    ASSERT_TRUE(r1.ok() && r2.ok());
    ASSERT_TRUE(w.send(&a, 4, DataType::kByte, next, Tag{1}).ok());
    ASSERT_TRUE(w.send(&b, 4, DataType::kByte, next, Tag{2}).ok());
    ASSERT_TRUE(r1->wait().ok());
    ASSERT_TRUE(r2->wait().ok());
    EXPECT_EQ(ra, 100 + prev);
    EXPECT_EQ(rb, 200 + prev);
}

TEST(MpiComm, SizeMismatchIsProtocolError) {
    auto& w = world();
    if (w.size() < 2) {
        GTEST_SKIP() << "needs 2 ranks";
    }
    const int next = (w.rank() + 1) % w.size();
    const int prev = (w.rank() + w.size() - 1) % w.size();
    std::vector<float> out(3, 1.0f), in(8);
    auto rr = w.irecv(in.data(), in.size(), DataType::kFloat32, prev, Tag{9});
    ASSERT_TRUE(rr.ok());
    ASSERT_TRUE(w.send(out.data(), out.size(), DataType::kFloat32, next, Tag{9}).ok());
    Status s = rr->wait();
    EXPECT_EQ(s.code(), StatusCode::kProtocol) << s.to_string();
    EXPECT_NE(s.message().find("expected 8"), std::string::npos) << s.message();
}

TEST(MpiComm, InvalidArguments) {
    auto& w = world();
    float x = 0;
    EXPECT_EQ(w.isend(&x, 1, DataType::kFloat32, w.size(), Tag{0}).status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(w.isend(&x, 1, DataType::kFloat32, -1, Tag{0}).status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(w.irecv(&x, 1, DataType::kFloat32, 0, Tag{-1}).status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(w.irecv(&x, 1, DataType::kFloat32, 0, Tag{Tag::kMaxTag + 1}).status().code(),
              StatusCode::kInvalidArgument);
}

TEST(MpiComm, AsyncCompletion) {
    auto& w = world();
    const int n = w.size();
    std::vector<float> a(1 << 16, 1.0f), b(1 << 10, 2.0f);
    std::vector<Request> reqs;
    auto r1 = w.iallreduce_sum(a.data(), a.data(), a.size());
    auto r2 = w.iallreduce_sum(b.data(), b.data(), b.size());
    auto r3 = w.ibarrier();
    ASSERT_TRUE(r1.ok() && r2.ok() && r3.ok());
    // Poll one with test() until done, then wait the rest together.
    Request first = std::move(r1).value();
    EXPECT_TRUE(first.pending());
    while (true) {
        auto t = first.test();
        ASSERT_TRUE(t.ok()) << t.status().to_string();
        if (*t) {
            break;
        }
        std::this_thread::yield();
    }
    EXPECT_FALSE(first.pending());
    auto again = first.test();  // finished requests stay finished
    ASSERT_TRUE(again.ok() && *again);
    reqs.push_back(std::move(r2).value());
    reqs.push_back(std::move(r3).value());
    ASSERT_TRUE(wait_all(reqs).ok());
    EXPECT_EQ(a[123], static_cast<float>(n));
    EXPECT_EQ(b[5], static_cast<float>(2 * n));
    // A default Request is complete.
    Request empty;
    EXPECT_TRUE(empty.wait().ok());
}

TEST(MpiComm, RecvNobodySendsHitsDeadline) {
    auto& w = world();
    TimeoutGuard guard(w);
    w.set_timeout(Millis(300));
    const int peer = (w.rank() + 1) % w.size();
    float x = 0;
    auto t0 = Clock::now();
    Status s = w.recv(&x, 1, DataType::kFloat32, peer, Tag{4242});
    auto ms = std::chrono::duration_cast<Millis>(Clock::now() - t0).count();
    EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded) << s.to_string();
    EXPECT_GE(ms, 290);
    EXPECT_LT(ms, 300 + 1500) << "deadline + slack";
    EXPECT_NE(s.message().find("recv"), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("rank " + std::to_string(w.rank()) + "/"), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("peer " + std::to_string(peer)), std::string::npos) << s.message();
    // The receive was cancelled cleanly: the communicator stays usable.
    EXPECT_FALSE(w.poisoned());
    w.set_timeout(Millis(30000));
    EXPECT_TRUE(w.barrier().ok());
}

TEST(MpiComm, AsyncWaitWithExplicitDeadline) {
    auto& w = world();
    const int peer = (w.rank() + 1) % w.size();
    float x = 0;
    auto r = w.irecv(&x, 1, DataType::kFloat32, peer, Tag{4343});
    ASSERT_TRUE(r.ok());
    auto t = r->test();
    ASSERT_TRUE(t.ok());
    EXPECT_FALSE(*t);
    auto t0 = Clock::now();
    Status s = r->wait(Clock::now() + Millis(200));
    EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded);
    EXPECT_LT(std::chrono::duration_cast<Millis>(Clock::now() - t0).count(), 1500);
    EXPECT_TRUE(w.barrier().ok());
}

TEST(MpiComm, SplitByColor) {
    auto& w = world();
    const int color = w.rank() % 2;
    auto sub = w.split(color, -w.rank());  // reversed order inside each group
    ASSERT_TRUE(sub.ok()) << sub.status().to_string();
    ASSERT_NE(*sub, nullptr);
    Communicator& c = **sub;
    const int expect_size = (w.size() + 1 - color) / 2;
    EXPECT_EQ(c.size(), expect_size);
    EXPECT_EQ(c.rank(), expect_size - 1 - w.rank() / 2);
    EXPECT_EQ(c.timeout(), w.timeout());
    float v = static_cast<float>(w.rank());
    ASSERT_TRUE(c.allreduce_sum(&v, &v, 1).ok());
    float expect = 0;
    for (int r = color; r < w.size(); r += 2) {
        expect += static_cast<float>(r);
    }
    EXPECT_EQ(v, expect);

    // Negative color: no communicator; nested splits work.
    auto none = w.split(w.rank() == 0 ? -1 : 0, 0);
    ASSERT_TRUE(none.ok());
    EXPECT_EQ(*none == nullptr, w.rank() == 0);
    if (*none) {
        EXPECT_EQ((*none)->size(), w.size() - 1);
        EXPECT_TRUE((*none)->barrier().ok());
    }
}

}  // namespace
}  // namespace deepshard::comm
