// Multi-rank tests of NcclComm (device buffers), run under mpirun with 2 ranks like comm_mpi_test.
// With one GPU per rank the NCCL communicator spans the MPI world; with fewer GPUs than ranks every
// rank gets its own 1-rank NCCL communicator on device 0 (NCCL forbids two ranks on one GPU), so the
// value checks still run, generic in the size. Without any device every test skips visibly.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "comm/nccl/nccl_comm.h"
#include "kernels/cuda/cuda_handles.h"
#include "kernels/cuda/cuda_status.h"
#include "tests/comm/mpi_test_main.h"

namespace deepshard::comm {
namespace {

using kernels::cuda::DeviceBuffer;
using testing::world;

// Device count agreed by every rank (the minimum), so that all ranks skip or run together.
int agreed_devices(std::string* why) {
    int n = kernels::cuda::device_count(why);
    std::vector<int32_t> all(static_cast<size_t>(world().size()));
    int32_t mine = n;
    Status s = world().allgather(&mine, all.data(), sizeof(mine), DataType::kByte);
    EXPECT_TRUE(s.ok()) << s.to_string();
    for (int32_t v : all) n = std::min<int>(n, v);
    return n;
}

#define DS_REQUIRE_NCCL_DEVICE()                                                   \
    do {                                                                           \
        std::string _why;                                                          \
        if (agreed_devices(&_why) == 0) {                                          \
            GTEST_SKIP() << "no CUDA device: " << (_why.empty() ? "on some rank" : _why); \
        }                                                                          \
    } while (0)

bool one_gpu_per_rank() {
    return kernels::cuda::device_count() >= world().size();
}

// The communicator shared by the value tests (created collectively on first use).
NcclComm& shared_comm() {
    static std::unique_ptr<Communicator> bootstrap_child;
    static std::unique_ptr<NcclComm> comm;
    if (!comm) {
        Communicator* boot = &world();
        int device = world().rank();
        if (!one_gpu_per_rank()) {
            auto child = world().split(world().rank(), 0);
            EXPECT_TRUE(child.ok()) << child.status().to_string();
            bootstrap_child = std::move(child).value();
            boot = bootstrap_child.get();
            device = 0;
        }
        auto c = NcclComm::create(*boot, device, "test");
        if (!c.ok()) {
            ADD_FAILURE() << c.status().to_string();
            std::abort();  // every later test would fail the same way; fail loudly once
        }
        comm = std::move(c).value();
        std::printf("[rank %d] NcclComm '%s': %d rank(s), device %d\n", world().rank(), comm->name().c_str(),
                    comm->size(), comm->device());
    }
    return *comm;
}

template <typename T>
DeviceBuffer dev(const std::vector<T>& v) {
    auto b = DeviceBuffer::create(std::max<size_t>(1, v.size() * sizeof(T)));
    EXPECT_TRUE(b.ok()) << b.status().to_string();
    EXPECT_TRUE(b->upload(v.data(), v.size() * sizeof(T)).ok());
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);  // pageable uploads: order them before NCCL's stream
    return std::move(b).value();
}

template <typename T>
std::vector<T> host(const DeviceBuffer& b, size_t n) {
    std::vector<T> v(n);
    EXPECT_TRUE(b.download(v.data(), n * sizeof(T)).ok());
    return v;
}

TEST(NcclComm, AllreduceSumExact) {
    DS_REQUIRE_NCCL_DEVICE();
    NcclComm& c = shared_comm();
    EXPECT_EQ(c.backend(), "nccl");
    const int n = c.size();
    for (size_t count : {size_t{1}, size_t{1000}, size_t{100003}}) {
        std::vector<float> send(count);
        for (size_t i = 0; i < count; ++i) send[i] = static_cast<float>((c.rank() + 1) * static_cast<int>(i % 97));
        auto ds = dev(send), dr = dev(std::vector<float>(count, -1.0f));
        ASSERT_TRUE(c.allreduce_sum(ds.as<float>(), dr.as<float>(), count).ok());
        auto got = host<float>(dr, count);
        for (size_t i = 0; i < count; ++i) {
            ASSERT_EQ(got[i], static_cast<float>(n * (n + 1) / 2 * static_cast<int>(i % 97))) << "i=" << i;
        }
        Status s = c.allreduce_sum(ds.as<float>(), ds.as<float>(), count);  // in place
        ASSERT_TRUE(s.ok()) << s.to_string();
        EXPECT_EQ(host<float>(ds, count), got);
    }
}

TEST(NcclComm, AllgatherFloatsAndBytes) {
    DS_REQUIRE_NCCL_DEVICE();
    NcclComm& c = shared_comm();
    const size_t n = static_cast<size_t>(c.size());
    const size_t count = 4097;
    std::vector<float> send(count);
    for (size_t i = 0; i < count; ++i) send[i] = static_cast<float>(c.rank() * 10000 + static_cast<int>(i));
    auto ds = dev(send), dr = dev(std::vector<float>(count * n));
    ASSERT_TRUE(c.allgather(ds.as<float>(), dr.as<float>(), count, DataType::kFloat32).ok());
    auto got = host<float>(dr, count * n);
    for (size_t r = 0; r < n; ++r) {
        for (size_t i = 0; i < count; ++i) ASSERT_EQ(got[r * count + i], static_cast<float>(r * 10000 + i));
    }
    std::vector<uint8_t> b = {static_cast<uint8_t>(c.rank()), 0xAB, static_cast<uint8_t>(255 - c.rank())};
    auto db = dev(b), dall = dev(std::vector<uint8_t>(3 * n));
    ASSERT_TRUE(c.allgather(db.get(), dall.get(), 3, DataType::kByte).ok());
    auto all = host<uint8_t>(dall, 3 * n);
    for (size_t r = 0; r < n; ++r) {
        EXPECT_EQ(all[3 * r], r);
        EXPECT_EQ(all[3 * r + 1], 0xAB);
        EXPECT_EQ(all[3 * r + 2], 255 - r);
    }
}

TEST(NcclComm, ReduceScatterSumExact) {
    DS_REQUIRE_NCCL_DEVICE();
    NcclComm& c = shared_comm();
    const int n = c.size();
    const size_t per = 1001;
    std::vector<float> send(per * n);
    for (size_t i = 0; i < send.size(); ++i) send[i] = static_cast<float>((c.rank() + 1) * static_cast<int>(i % 13));
    auto ds = dev(send), dr = dev(std::vector<float>(per));
    ASSERT_TRUE(c.reduce_scatter_sum(ds.as<float>(), dr.as<float>(), per).ok());
    auto got = host<float>(dr, per);
    for (size_t i = 0; i < per; ++i) {
        const size_t g = c.rank() * per + i;
        ASSERT_EQ(got[i], static_cast<float>(n * (n + 1) / 2 * static_cast<int>(g % 13))) << i;
    }
}

TEST(NcclComm, AlltoallvUnevenWithZerosAndGaps) {
    DS_REQUIRE_NCCL_DEVICE();
    NcclComm& c = shared_comm();
    const int n = c.size(), me = c.rank();
    auto cnt = [](int from, int to) { return static_cast<size_t>((from + 2 * to) % 3 + (from == to ? 2 : 0)); };
    std::vector<size_t> sc(n), sd(n), rc(n), rd(n);
    size_t so = 0, ro = 0;
    for (int p = 0; p < n; ++p) {
        sc[p] = cnt(me, p);
        rc[p] = cnt(p, me);
        sd[p] = so;
        rd[p] = ro;
        so += sc[p] + 1;  // one-element gaps that must stay untouched
        ro += rc[p] + 1;
    }
    std::vector<float> send(so, -3.0f);
    for (int p = 0; p < n; ++p) {
        for (size_t j = 0; j < sc[p]; ++j) send[sd[p] + j] = static_cast<float>(me * 1000 + p * 100 + j);
    }
    auto ds = dev(send), dr = dev(std::vector<float>(ro, -9.0f));
    Status s = c.alltoallv(ds.get(), sc, sd, dr.get(), rc, rd, DataType::kFloat32);
    ASSERT_TRUE(s.ok()) << s.to_string();
    auto got = host<float>(dr, ro);
    for (int p = 0; p < n; ++p) {
        for (size_t j = 0; j < rc[p]; ++j) ASSERT_EQ(got[rd[p] + j], static_cast<float>(p * 1000 + me * 100 + j));
        ASSERT_EQ(got[rd[p] + rc[p]], -9.0f) << "gap after block from " << p << " overwritten";
    }
    // Self block sizes must agree.
    std::vector<size_t> bad = rc;
    bad[me] += 1;
    EXPECT_EQ(c.alltoallv(ds.get(), sc, sd, dr.get(), bad, rd, DataType::kFloat32).code(),
              StatusCode::kInvalidArgument);
}

TEST(NcclComm, BroadcastFromEveryRootAndBarrier) {
    DS_REQUIRE_NCCL_DEVICE();
    NcclComm& c = shared_comm();
    for (int root = 0; root < c.size(); ++root) {
        std::vector<float> v(777, static_cast<float>(c.rank() == root ? root + 0.5f : -1.0f));
        auto d = dev(v);
        ASSERT_TRUE(c.broadcast(d.get(), v.size(), DataType::kFloat32, root).ok());
        for (float f : host<float>(d, v.size())) ASSERT_EQ(f, root + 0.5f);
    }
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(c.barrier().ok());
    EXPECT_EQ(c.broadcast(nullptr, 1, DataType::kFloat32, c.size()).code(), StatusCode::kInvalidArgument);
}

TEST(NcclComm, AsyncOperationsCompleteInOrder) {
    DS_REQUIRE_NCCL_DEVICE();
    NcclComm& c = shared_comm();
    const size_t count = 1 << 16;
    auto d = dev(std::vector<float>(count, 1.0f));
    std::vector<Request> reqs;
    for (int i = 0; i < 4; ++i) {
        auto r = c.iallreduce_sum(d.as<float>(), d.as<float>(), count);
        ASSERT_TRUE(r.ok()) << r.status().to_string();
        reqs.push_back(std::move(r).value());
    }
    ASSERT_TRUE(wait_all(reqs).ok());
    float want = 1.0f;
    for (int i = 0; i < 4; ++i) want *= static_cast<float>(c.size());
    for (float f : host<float>(d, count)) ASSERT_EQ(f, want);
}

TEST(NcclComm, SendRecvRing) {
    DS_REQUIRE_NCCL_DEVICE();
    NcclComm& c = shared_comm();
    if (c.size() < 2) {
        GTEST_SKIP() << "needs an NCCL communicator of 2+ ranks (one GPU per rank); have " << c.size();
    }
    const int next = (c.rank() + 1) % c.size(), prev = (c.rank() + c.size() - 1) % c.size();
    auto ds = dev(std::vector<float>(1000, static_cast<float>(c.rank()))), dr = dev(std::vector<float>(1000, -1.0f));
    auto rr = c.irecv(dr.get(), 1000, DataType::kFloat32, prev, Tag{5});
    ASSERT_TRUE(rr.ok()) << rr.status().to_string();
    auto rs = c.isend(ds.get(), 1000, DataType::kFloat32, next, Tag{5});
    ASSERT_TRUE(rs.ok()) << rs.status().to_string();
    // NCCL p2p ops on one stream complete in order; the send can only finish once the peer's receive ran.
    ASSERT_TRUE(rr->wait().ok());
    ASSERT_TRUE(rs->wait().ok());
    for (float f : host<float>(dr, 1000)) ASSERT_EQ(f, static_cast<float>(prev));
}

TEST(NcclComm, SplitByParity) {
    DS_REQUIRE_NCCL_DEVICE();
    NcclComm& c = shared_comm();
    auto child = c.split(c.rank() % 2, -c.rank());  // reversed key: the child's rank order flips
    ASSERT_TRUE(child.ok()) << child.status().to_string();
    ASSERT_NE(*child, nullptr);
    Communicator& sub = **child;
    const int expect_size = (c.size() + 1 - c.rank() % 2) / 2;
    EXPECT_EQ(sub.size(), expect_size);
    EXPECT_EQ(sub.backend(), "nccl");
    auto d = dev(std::vector<float>(10, static_cast<float>(c.rank() + 1)));
    ASSERT_TRUE(sub.allreduce_sum(d.as<float>(), d.as<float>(), 10).ok());
    float want = 0.0f;
    for (int r = c.rank() % 2; r < c.size(); r += 2) want += static_cast<float>(r + 1);
    for (float f : host<float>(d, 10)) ASSERT_EQ(f, want);
    auto none = c.split(-1, 0);  // every rank opts out: nobody gets a communicator
    ASSERT_TRUE(none.ok()) << none.status().to_string();
    EXPECT_EQ(*none, nullptr);
}

// One rank of a 2-rank NCCL communicator never joins: init must end in kDeadlineExceeded, not hang.
// Needs only one device (the missing peer never touches it).
TEST(NcclComm, InitDeadlineWhenPeerNeverJoins) {
    DS_REQUIRE_NCCL_DEVICE();
    if (world().rank() == 0) {
        ncclUniqueId id{};
        ASSERT_EQ(ncclGetUniqueId(&id), ncclSuccess);
        auto c = NcclComm::create_from_id(id, 0, 2, 0, "lonely", Millis(1500));
        ASSERT_FALSE(c.ok());
        EXPECT_EQ(c.status().code(), StatusCode::kDeadlineExceeded) << c.status().to_string();
        EXPECT_NE(c.status().message().find("rank 0/2"), std::string::npos) << c.status().to_string();
    }
    ASSERT_TRUE(world().barrier().ok());
}

// A peer skips an allreduce: the waiting rank gets kDeadlineExceeded naming the op and rank, the
// communicator is aborted and poisoned, later operations fail fast.
TEST(NcclComm, OperationDeadlineWhenPeerSkips) {
    DS_REQUIRE_NCCL_DEVICE();
    if (world().size() < 2 || !one_gpu_per_rank()) {
        GTEST_SKIP() << "needs 2+ ranks with one GPU each; have " << world().size() << " rank(s), "
                     << kernels::cuda::device_count() << " device(s)";
    }
    auto made = NcclComm::create(world(), world().rank(), "deadline");
    ASSERT_TRUE(made.ok()) << made.status().to_string();
    NcclComm& c = **made;
    auto d = dev(std::vector<float>(16, 1.0f));
    if (c.rank() == 0) {
        c.set_timeout(Millis(2000));
        Status s = c.allreduce_sum(d.as<float>(), d.as<float>(), 16);
        EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded) << s.to_string();
        EXPECT_NE(s.message().find("allreduce_sum"), std::string::npos) << s.to_string();
        EXPECT_NE(s.message().find("rank 0/"), std::string::npos) << s.to_string();
        EXPECT_TRUE(c.poisoned());
        EXPECT_EQ(c.barrier().code(), StatusCode::kUnavailable);
    }
    ASSERT_TRUE(world().barrier().ok());  // rank 1 waits here (host MPI) while rank 0 times out
    c.abort();
}

}  // namespace
}  // namespace deepshard::comm
