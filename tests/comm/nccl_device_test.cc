// NCCL on the caller's stream, in one process (no MPI: the GPU check's machine has none): a one-rank
// communicator's allreduce / allgather enqueued on a user stream and captured in a CUDA graph (replays
// follow the inputs), and the watchdog bounding a stream that never drains (a host callback blocks the
// stream until the "abort" releases it). Multi-rank NCCL is tests/comm/nccl_comm_test.cc (mpirun, one
// GPU per rank). Skips visibly without a GPU.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <nccl.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "comm/nccl/nccl_comm.h"
#include "comm/watchdog.h"
#include "kernels/cuda/cuda_status.h"

namespace deepshard::comm {
namespace {

using namespace std::chrono_literals;

#define DS_REQUIRE_GPU()                                                         \
    do {                                                                         \
        std::string _why;                                                        \
        if (kernels::cuda::device_count(&_why) == 0) GTEST_SKIP() << "no GPU: " << _why; \
    } while (0)

std::unique_ptr<NcclComm> solo() {
    ncclUniqueId id{};
    EXPECT_EQ(ncclGetUniqueId(&id), ncclSuccess);
    auto c = NcclComm::create_from_id(id, 0, 1, 0, "solo", 10s);
    EXPECT_TRUE(c.ok()) << c.status().to_string();
    return c.ok() ? std::move(c).value() : nullptr;
}

TEST(NcclDevice, EveryBackendSaysWhichMemoryItTakes) {
    DS_REQUIRE_GPU();
    auto c = solo();
    ASSERT_NE(c, nullptr);
    EXPECT_EQ(c->memory_space(), MemorySpace::kDevice);
    Status s = c->require_memory(MemorySpace::kHost, "the shard pipeline");
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("'nccl' takes device memory"), std::string::npos) << s.message();
}

TEST(NcclDevice, CollectivesOnTheCallersStreamAndInAGraph) {
    DS_REQUIRE_GPU();
    auto c = solo();
    ASSERT_NE(c, nullptr);
    cudaStream_t s = nullptr;
    ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
    const size_t n = 1 << 16;
    float *src = nullptr, *buf = nullptr, *gathered = nullptr;
    ASSERT_EQ(cudaMalloc(&src, n * 4), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&buf, n * 4), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&gathered, n * 4), cudaSuccess);
    std::vector<float> h(n);
    for (size_t i = 0; i < n; ++i) h[i] = static_cast<float>(i % 97) - 48.0f;
    ASSERT_EQ(cudaMemcpy(src, h.data(), n * 4, cudaMemcpyHostToDevice), cudaSuccess);
    // Eager, on the user stream.
    ASSERT_EQ(cudaMemcpyAsync(buf, src, n * 4, cudaMemcpyDeviceToDevice, s), cudaSuccess);
    ASSERT_TRUE(c->enqueue_allreduce_sum(buf, n, s).ok());
    ASSERT_TRUE(c->enqueue_allgather(buf, gathered, n, DataType::kFloat32, s).ok());
    ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
    std::vector<float> out(n);
    ASSERT_EQ(cudaMemcpy(out.data(), gathered, n * 4, cudaMemcpyDeviceToHost), cudaSuccess);
    EXPECT_EQ(out, h);  // one rank: the sum and the gather are the input
    // Captured: copy + allreduce + allgather in one graph, replayed after the input changes.
    ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    ASSERT_EQ(cudaMemcpyAsync(buf, src, n * 4, cudaMemcpyDeviceToDevice, s), cudaSuccess);
    Status a = c->enqueue_allreduce_sum(buf, n, s);
    Status g = c->enqueue_allgather(buf, gathered, n, DataType::kFloat32, s);
    cudaGraph_t graph = nullptr;
    ASSERT_EQ(cudaStreamEndCapture(s, &graph), cudaSuccess);
    ASSERT_TRUE(a.ok()) << a.to_string();
    ASSERT_TRUE(g.ok()) << g.to_string();
    cudaGraphExec_t exec = nullptr;
    ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
    for (int rep = 0; rep < 3; ++rep) {
        for (float& v : h) v += 1.0f;
        ASSERT_EQ(cudaMemcpy(src, h.data(), n * 4, cudaMemcpyHostToDevice), cudaSuccess);
        ASSERT_EQ(cudaGraphLaunch(exec, s), cudaSuccess);
        ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
        ASSERT_EQ(cudaMemcpy(out.data(), gathered, n * 4, cudaMemcpyDeviceToHost), cudaSuccess);
        ASSERT_EQ(out, h) << "replay " << rep;
    }
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    cudaFree(src);
    cudaFree(buf);
    cudaFree(gathered);
    cudaStreamDestroy(s);
}

void CUDART_CB block_until(void* flag) {
    auto* f = static_cast<std::atomic<bool>*>(flag);
    while (!f->load()) std::this_thread::sleep_for(1ms);
}

TEST(NcclDevice, WatchdogBoundsAStreamThatNeverDrains) {
    DS_REQUIRE_GPU();
    cudaStream_t s = nullptr;
    ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
    cudaEvent_t ev = nullptr;
    ASSERT_EQ(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), cudaSuccess);
    static std::atomic<bool> release{false};
    release = false;
    std::atomic<int> fatal{0};
    std::string message;
    Watchdog::Options o;
    o.deadline = 100ms;
    o.abort_grace = 2s;
    o.abort = [] { release = true; };  // stands in for ncclCommAbort: lets the stream drain
    o.on_fatal = [&](const std::string& m) {
        message = m;
        ++fatal;
    };
    Watchdog w(o);
    ASSERT_EQ(cudaLaunchHostFunc(s, block_until, &release), cudaSuccess);  // a "peer" that never arrives
    ASSERT_EQ(cudaEventRecord(ev, s), cudaSuccess);
    {
        auto scope = w.watch("the decode step", [ev] { return cudaEventQuery(ev) != cudaErrorNotReady; });
        ASSERT_EQ(cudaEventSynchronize(ev), cudaSuccess);  // returns once the watchdog "aborted"
    }
    for (int i = 0; i < 500 && fatal == 0; ++i) std::this_thread::sleep_for(2ms);
    EXPECT_EQ(fatal.load(), 1);
    EXPECT_NE(message.find("the decode step"), std::string::npos) << message;
    cudaEventDestroy(ev);
    cudaStreamDestroy(s);
}

}  // namespace
}  // namespace deepshard::comm
