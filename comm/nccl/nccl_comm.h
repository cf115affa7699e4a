// NcclComm: the NCCL backend of Communicator, for GPU collectives.
//
// Buffers: every buffer passed to an operation is DEVICE memory on this communicator's device (not
// host memory as in comm/communicator.h's general contract). Counts are elements, as everywhere.
// Streams: operations are enqueued on the communicator's own non-blocking stream (stream()); a
// Request completes when a cudaEvent recorded after the operation has passed. Callers that produce
// inputs on another stream must order it first (event + cudaStreamWaitEvent on stream()).
//
// Bootstrap: create() makes rank 0 draw an ncclUniqueId and broadcasts it over an existing host
// Communicator (normally comm/mpi's MpiComm over the same ranks), then initializes NCCL.
// Non-blocking NCCL (ncclConfig_t.blocking = 0): no NCCL call blocks; init, split and every operation
// are polled with ncclCommGetAsyncError until done, within the communicator's timeout.
// Deadlines and errors: when a deadline passes (peer dead, hung or not participating) or NCCL reports
// an asynchronous error, the communicator calls ncclCommAbort (which stops its kernels and releases
// the buffers), is poisoned, and every later operation fails with kUnavailable; wait() returns
// kDeadlineExceeded / kNccl naming the operation, the rank and the peer, as the MPI backend does.
// Point-to-point: NCCL has no tags; sends and receives between two ranks match in issue order. Tags
// are range-checked but not matched on, and a receive whose count differs from the send is
// undefined (NCCL cannot detect it): callers must agree on sizes, as with collectives.
// Ownership: move-only; ncclCommFinalize + ncclCommDestroy in the destructor (bounded wait, then
// ncclCommAbort), ncclCommAbort on error paths. Thread-safety: one thread at a time per communicator,
// except abort(), which a watchdog thread may call while the owner waits on its stream.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <memory>
#include <string>

#include "comm/communicator.h"

namespace deepshard::comm {

namespace internal {
struct NcclState;
}

// kNccl "expr failed: <ncclGetErrorString> (<last error>) (file:line)".
Status nccl_error(ncclResult_t rc, const char* expr, const char* file, int line, ncclComm_t comm = nullptr);

class NcclComm final : public Communicator {
public:
    // Collective over `bootstrap`: the NCCL communicator has the same ranks and size. `device` is the
    // CUDA device of this rank (made current for every call). The bootstrap's timeout bounds init and
    // becomes this communicator's timeout.
    static StatusOr<std::unique_ptr<NcclComm>> create(Communicator& bootstrap, int device, std::string name);
    // Same from an id obtained elsewhere (ncclGetUniqueId on one rank, distributed by the caller).
    static StatusOr<std::unique_ptr<NcclComm>> create_from_id(const ncclUniqueId& id, int rank, int size, int device,
                                                              std::string name, Millis timeout);

    NcclComm(NcclComm&&) noexcept;
    NcclComm& operator=(NcclComm&&) noexcept;
    ~NcclComm() override;

    ncclComm_t get() const;
    cudaStream_t stream() const;
    int device() const;
    const std::string& name() const;
    bool poisoned() const;
    // ncclCommAbort now and poison: for error paths (a peer is known to be gone). Idempotent.
    void abort() noexcept;

    int rank() const override { return rank_; }
    int size() const override { return size_; }
    std::string_view backend() const override { return "nccl"; }
    MemorySpace memory_space() const override { return MemorySpace::kDevice; }

    StatusOr<Request> isend(const void* buf, size_t count, DataType type, int peer, Tag tag) override;
    StatusOr<Request> irecv(void* buf, size_t count, DataType type, int peer, Tag tag) override;
    StatusOr<Request> iallreduce_sum(const float* send, float* recv, size_t count) override;
    StatusOr<Request> iallgather(const void* send, void* recv, size_t count, DataType type) override;
    StatusOr<Request> ireduce_scatter_sum(const float* send, float* recv, size_t recv_count) override;
    // Grouped ncclSend/ncclRecv per peer; the block to/from this rank itself is a device-to-device copy
    // (send_counts[rank] must equal recv_counts[rank]).
    StatusOr<Request> ialltoallv(const void* send, std::span<const size_t> send_counts,
                                 std::span<const size_t> send_displs, void* recv, std::span<const size_t> recv_counts,
                                 std::span<const size_t> recv_displs, DataType type) override;
    StatusOr<Request> ibroadcast(void* buf, size_t count, DataType type, int root) override;
    // A 1-element allreduce on an internal device buffer.
    StatusOr<Request> ibarrier() override;

    // ---- work on the caller's stream ----
    // For collectives that must join the caller's kernels (the CUDA engine's compute stream), also inside
    // a CUDA-graph capture: enqueued on `stream`, no event, no Request. These wait (within the timeout)
    // only for NCCL's own enqueue to finish, never for the operation; a dead peer shows as the stream
    // never draining, which the owner bounds with a Watchdog (comm/watchdog.h) calling abort().
    Status enqueue_allreduce_sum(float* buf, size_t count, cudaStream_t stream);
    Status enqueue_allgather(const void* send, void* recv, size_t count, DataType type, cudaStream_t stream);
    Status enqueue_send(const void* buf, size_t count, DataType type, int peer, cudaStream_t stream);
    Status enqueue_recv(void* buf, size_t count, DataType type, int peer, cudaStream_t stream);
    // ncclCommSplit (non-blocking, polled within the timeout). Children get their own stream.
    StatusOr<std::unique_ptr<Communicator>> split(int color, int key) override;

private:
    NcclComm(std::shared_ptr<internal::NcclState> state, int rank, int size);
    Status check_usable(const char* what) const;
    // Issues `enqueue` (NCCL calls on get()/stream()) and wraps it in a Request described by `desc`.
    template <typename F>
    StatusOr<Request> issue(std::string desc, F&& enqueue);
    // Enqueues on the caller's stream and waits for NCCL's enqueue (not the operation) to finish.
    template <typename F>
    Status issue_on(const std::string& desc, F&& enqueue);

    int rank_ = 0;
    int size_ = 0;
    std::shared_ptr<internal::NcclState> state_;
};

}  // namespace deepshard::comm
