// The communicator interface of deepshard: collectives and point-to-point on host memory,
// blocking and asynchronous, every operation bounded by a deadline.
//
// Backends: comm/mpi (MpiComm, full Communicator), comm/ucx (UcxP2p, PointToPoint only, for
// stage-to-stage activations). MoE dispatch/combine (comm/ep) is built on Communicator::alltoallv.
//
// Buffers: owned by the caller, in the memory the backend says it takes (memory_space()): host memory
// for comm/mpi and comm/ucx, device memory of the communicator's GPU for comm/nccl. A caller that holds
// host data must not hand it to a device backend (or the reverse): check memory_space(), as
// require_memory() does. Element counts are in elements of the given DataType (kFloat32 = 4 bytes,
// kByte = 1 byte), never in bytes unless the type is kByte.
// For an asynchronous operation the caller keeps every buffer (and nothing else: counts and
// displacements are copied) alive and untouched until the Request completes.
//
// Deadlines: each communicator has a timeout (default DS_COMM_TIMEOUT_MS, set_timeout() per
// communicator). A Request records `now + timeout` when the operation is issued; wait() returns
// kDeadlineExceeded naming the operation, the rank and the peer once that point passes. After a
// deadline or transport error the communicator is *poisoned*: the timed-out operation may still
// own its buffers inside the transport (MPI collectives cannot be cancelled), so every later
// operation fails fast with kUnavailable and the caller is expected to tear the process down
// (MPI_Abort / exit). Buffers of a timed-out collective must then stay alive until exit.
//
// Thread-safety: see each backend (MpiComm: any thread if MPI provided MPI_THREAD_MULTIPLE, else
// one thread; UcxP2p: internally serialized). A Request is used by one thread at a time.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace deepshard::comm {

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;
using Millis = std::chrono::milliseconds;

enum class DataType { kFloat32, kByte };

// Where a backend's buffers live.
enum class MemorySpace { kHost, kDevice };
const char* memory_space_name(MemorySpace m);  // "host" / "device"
size_t data_type_size(DataType t);
const char* data_type_name(DataType t);

// Typed message tag for point-to-point traffic. Valid range [0, kMaxTag].
struct Tag {
    static constexpr int32_t kMaxTag = 32767;  // the minimum MPI_TAG_UB every MPI guarantees
    int32_t value = 0;
};

// Peer value meaning "every rank of the communicator" in error messages (collectives).
inline constexpr int kAllPeers = -1;

// Timeout configured by DS_COMM_TIMEOUT_MS (30000 when unset).
Millis default_timeout();

// What one in-flight operation needs from its backend. poll() never blocks for long.
class RequestImpl {
public:
    virtual ~RequestImpl() = default;
    // Drives progress once. Returns true when the operation finished; then *result is its status.
    virtual bool poll(Status* result) = 0;
    // Called once when the deadline passed (or the Request is dropped while pending): cancel what
    // can be cancelled and poison the communicator. Must not block past a short, bounded time.
    virtual void abandon(const Status& why) noexcept = 0;
    // "allreduce_sum(count=1024) on rank 2/4 of 'world' [mpi], peer all" — used in errors.
    virtual std::string describe() const = 0;
};

// First-error latch every backend shares with its in-flight requests: after a deadline or transport
// error the communicator is poisoned, later operations fail fast, and they all report the first reason.
class PoisonState {
public:
    // Records `why` unless a reason is already recorded.
    void poison(const std::string& why) {
        std::lock_guard<std::mutex> lock(mu_);
        if (!poisoned_.exchange(true)) first_error_ = why;
    }
    bool poisoned() const { return poisoned_.load(); }
    std::string error() const {
        std::lock_guard<std::mutex> lock(mu_);
        return first_error_;
    }

private:
    std::atomic<bool> poisoned_{false};
    mutable std::mutex mu_;
    std::string first_error_;  // guarded by mu_
};

// Move-only completion handle of an asynchronous operation. A default-constructed Request is
// already complete with OK. Dropping a pending Request abandons (cancels) it and poisons the
// communicator; wait for every Request you issue.
class Request {
public:
    Request() = default;
    Request(std::unique_ptr<RequestImpl> impl, Deadline deadline)
        : impl_(std::move(impl)), deadline_(deadline), issued_(Clock::now()) {}
    Request(Request&&) noexcept = default;
    Request& operator=(Request&& other) noexcept;
    Request(const Request&) = delete;
    Request& operator=(const Request&) = delete;
    ~Request();

    // Blocks (polling with short sleeps) until completion or the deadline recorded at issue time.
    Status wait();
    // Same with an explicit deadline (the earlier of the two is not taken: this one wins).
    Status wait(Deadline deadline);
    // Non-blocking: true when complete with OK, false while pending, an error if it failed or its
    // deadline passed. After a non-false result the Request is finished.
    StatusOr<bool> test();

    bool pending() const { return impl_ != nullptr; }
    Deadline deadline() const { return deadline_; }

private:
    void finish() { impl_.reset(); }
    std::unique_ptr<RequestImpl> impl_;
    Deadline deadline_{};
    Clock::time_point issued_{};
    Status final_;  // result once finished (kept so test()/wait() can be repeated)
};

// Waits on every request (in order) and returns the first error; never stops early, so that
// every request is either completed or abandoned.
Status wait_all(std::span<Request> requests);

// Point-to-point subset: what the pipeline needs between stages. Implemented by every backend.
class PointToPoint {
public:
    PointToPoint() : timeout_(default_timeout()) {}
    virtual ~PointToPoint() = default;
    PointToPoint(const PointToPoint&) = delete;
    PointToPoint& operator=(const PointToPoint&) = delete;

    virtual int rank() const = 0;
    virtual int size() const = 0;
    virtual std::string_view backend() const = 0;
    // The memory every buffer passed to this communicator must be in.
    virtual MemorySpace memory_space() const = 0;
    // kInvalidArgument naming `user`, the backend and both spaces unless memory_space() == m.
    Status require_memory(MemorySpace m, std::string_view user) const;

    Millis timeout() const { return timeout_; }
    void set_timeout(Millis timeout) { timeout_ = timeout; }
    Deadline next_deadline() const { return Clock::now() + timeout_; }

    // Sends `count` elements to `peer`. Completion means the buffer may be reused.
    virtual StatusOr<Request> isend(const void* buf, size_t count, DataType type, int peer, Tag tag) = 0;
    // Receives exactly `count` elements from `peer` with `tag`; a message of another size is an
    // error (kProtocol).
    virtual StatusOr<Request> irecv(void* buf, size_t count, DataType type, int peer, Tag tag) = 0;

    Status send(const void* buf, size_t count, DataType type, int peer, Tag tag);
    Status recv(void* buf, size_t count, DataType type, int peer, Tag tag);
    Status send(std::span<const float> buf, int peer, Tag tag) {
        return send(buf.data(), buf.size(), DataType::kFloat32, peer, tag);
    }
    Status recv(std::span<float> buf, int peer, Tag tag) {
        return recv(buf.data(), buf.size(), DataType::kFloat32, peer, tag);
    }

protected:
    // Common argument checks; `what` names the operation in the error.
    Status check_peer(const char* what, int peer) const;
    Status check_tag(const char* what, Tag tag) const;

private:
    Millis timeout_;
};

// Full communicator: point-to-point plus collectives over all `size()` ranks. Every rank calls
// each collective in the same order with matching arguments (as in MPI).
class Communicator : public PointToPoint {
public:
    // recv[i] = sum over ranks of send[i]; send == recv means in place.
    virtual StatusOr<Request> iallreduce_sum(const float* send, float* recv, size_t count) = 0;
    // recv = concat over ranks (rank order) of each rank's `count` elements; recv holds size()*count.
    virtual StatusOr<Request> iallgather(const void* send, void* recv, size_t count, DataType type) = 0;
    // send holds size()*recv_count floats; rank r gets the sum over ranks of block r.
    virtual StatusOr<Request> ireduce_scatter_sum(const float* send, float* recv, size_t recv_count) = 0;
    // send_counts[r] elements from send + send_displs[r] go to rank r; recv_counts[r] elements from
    // rank r land at recv + recv_displs[r]. All four spans have size() entries (elements, not bytes).
    virtual StatusOr<Request> ialltoallv(const void* send, std::span<const size_t> send_counts,
                                         std::span<const size_t> send_displs, void* recv,
                                         std::span<const size_t> recv_counts, std::span<const size_t> recv_displs,
                                         DataType type) = 0;
    // buf (count elements) of `root` is copied to every rank's buf.
    virtual StatusOr<Request> ibroadcast(void* buf, size_t count, DataType type, int root) = 0;
    virtual StatusOr<Request> ibarrier() = 0;

    // Splits into sub-communicators by color (ranks with equal color form one group, ordered by
    // key then old rank), as MPI_Comm_split. Collective and blocking; a rank with a negative color
    // gets nullptr. The child inherits the timeout.
    virtual StatusOr<std::unique_ptr<Communicator>> split(int color, int key) = 0;

    // Blocking forms: issue, then wait until the communicator's deadline.
    Status allreduce_sum(const float* send, float* recv, size_t count);
    Status allreduce_sum(std::span<float> inout) { return allreduce_sum(inout.data(), inout.data(), inout.size()); }
    Status allgather(const void* send, void* recv, size_t count, DataType type);
    Status reduce_scatter_sum(const float* send, float* recv, size_t recv_count);
    Status alltoallv(const void* send, std::span<const size_t> send_counts, std::span<const size_t> send_displs,
                     void* recv, std::span<const size_t> recv_counts, std::span<const size_t> recv_displs,
                     DataType type);
    Status broadcast(void* buf, size_t count, DataType type, int root);
    Status barrier();

protected:
    // Validates alltoallv argument shapes (size() entries, displacements non-overlapping is the
    // caller's business).
    Status check_alltoallv(std::span<const size_t> send_counts, std::span<const size_t> send_displs,
                           std::span<const size_t> recv_counts, std::span<const size_t> recv_displs) const;
};

// Exclusive prefix sum: displacements for counts.
std::vector<size_t> exclusive_prefix_sum(std::span<const size_t> counts);

// Poll helper for backends: busy-poll for DS_COMM_SPIN_US, then yield, then sleep with a capped backoff, so that
// latency stays low and oversubscribed ranks do not starve each other.
class Backoff {
public:
    void pause();

private:
    uint32_t spins_ = 0;
    Clock::time_point first_{};
};

// Formats "op on rank R/N of 'name' [backend], peer P" (peer kAllPeers prints "all").
std::string describe_op(std::string_view op, int rank, int size, std::string_view comm_name,
                        std::string_view backend, int peer);

}  // namespace deepshard::comm
