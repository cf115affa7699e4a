// MpiComm: the MPI backend of Communicator (host memory, Debian OpenMPI).
//
// Ownership: move-only RAII around an MPI_Comm. world() duplicates MPI_COMM_WORLD (owned, freed in
// the destructor); borrow() wraps a handle someone else frees (owned = false). split() returns
// owned children. An MpiRuntime must outlive every MpiComm.
// Deadlines: every operation is non-blocking MPI (MPI_Isend/Irecv/Iallreduce/...) completed by
// polling MPI_Test with a backoff until the Request's deadline; see comm/communicator.h.
// On deadline: point-to-point requests are cancelled (MPI_Cancel); a collective cannot be, so it is
// left inside MPI, the communicator is poisoned and MpiRuntime skips MPI_Finalize.
// Errors: MPI_ERRORS_RETURN is set on the communicator; MPI failures become kMpi naming the
// operation, this rank and the peer.
// Thread-safety: operations may be issued from several threads only if MpiRuntime::thread_multiple();
// otherwise from one thread. The poison flag is atomic.
#pragma once

#include <mpi.h>

#include <memory>
#include <string>

#include "comm/communicator.h"

namespace deepshard::comm {

namespace internal {
struct MpiCommState;
}

class MpiComm final : public Communicator {
public:
    // MPI_Comm_dup(MPI_COMM_WORLD), named "world". Collective over the world.
    static StatusOr<MpiComm> world();
    // Wraps an existing communicator without taking ownership.
    static StatusOr<MpiComm> borrow(MPI_Comm comm, std::string name);

    MpiComm(MpiComm&& other) noexcept;
    MpiComm& operator=(MpiComm&& other) noexcept;
    ~MpiComm() override;

    // MPI_Abort(MPI_COMM_WORLD, code): tears the whole job down (mpirun kills every rank). The
    // caller's choice after a deadline or peer failure; never called by the backend itself.
    [[noreturn]] static void abort_job(int code);

    MPI_Comm get() const { return comm_; }
    bool owned() const { return owned_; }
    const std::string& name() const;
    // True after a deadline or transport error (every later operation fails with kUnavailable).
    bool poisoned() const;

    int rank() const override { return rank_; }
    int size() const override { return size_; }
    std::string_view backend() const override { return "mpi"; }
    MemorySpace memory_space() const override { return MemorySpace::kHost; }

    StatusOr<Request> isend(const void* buf, size_t count, DataType type, int peer, Tag tag) override;
    StatusOr<Request> irecv(void* buf, size_t count, DataType type, int peer, Tag tag) override;
    StatusOr<Request> iallreduce_sum(const float* send, float* recv, size_t count) override;
    StatusOr<Request> iallgather(const void* send, void* recv, size_t count, DataType type) override;
    StatusOr<Request> ireduce_scatter_sum(const float* send, float* recv, size_t recv_count) override;
    StatusOr<Request> ialltoallv(const void* send, std::span<const size_t> send_counts,
                                 std::span<const size_t> send_displs, void* recv, std::span<const size_t> recv_counts,
                                 std::span<const size_t> recv_displs, DataType type) override;
    StatusOr<Request> ibroadcast(void* buf, size_t count, DataType type, int root) override;
    StatusOr<Request> ibarrier() override;
    // Proves every rank alive with a deadline-bounded allgather of (color, key), then MPI_Comm_split.
    StatusOr<std::unique_ptr<Communicator>> split(int color, int key) override;

private:
    MpiComm(MPI_Comm comm, bool owned, std::string name);
    Status check_usable(const char* what) const;
    void reset() noexcept;

    MPI_Comm comm_ = MPI_COMM_NULL;
    bool owned_ = false;
    int rank_ = 0;
    int size_ = 0;
    std::shared_ptr<internal::MpiCommState> state_;
};

}  // namespace deepshard::comm
