// NCCL backend: non-blocking NCCL (config.blocking = 0) driven by polling. An operation is "enqueued"
// once ncclCommGetAsyncError stops reporting ncclInProgress; only then is its completion event
// recorded on the stream, and the Request completes when that event has passed. Deadlines and
// asynchronous errors end in ncclCommAbort + poison (see nccl_comm.h).
#include "comm/nccl/nccl_comm.h"

#include <atomic>
#include <cstring>
#include <mutex>
#include <utility>

#include "common/cuda_handles.h"
#include "common/cuda_status.h"
#include "common/logging.h"

namespace deepshard::comm {

Status nccl_error(ncclResult_t rc, const char* expr, const char* file, int line, ncclComm_t comm) {
    std::string m = std::string(expr) + " failed: " + ncclGetErrorString(rc);
    const char* last = ncclGetLastError(comm);
    if (last != nullptr && last[0] != '\0') {
        m += std::string(" (") + last + ")";
    }
    return Status(StatusCode::kNccl, m + " (" + file + ":" + std::to_string(line) + ")");
}

namespace {

ncclDataType_t nccl_type(DataType t) {
    return t == DataType::kFloat32 ? ncclFloat32 : ncclUint8;
}

bool is_usage_error(ncclResult_t r) {
    return r == ncclInvalidArgument || r == ncclInvalidUsage;
}

// Completion event of one operation; recorded once its NCCL calls are fully enqueued.
struct OpEvent {
    cuda::CudaEvent event;
    bool recorded = false;
};

}  // namespace

namespace internal {

struct NcclState : PoisonState {
    std::string name;
    int device = 0;
    int rank = 0;
    int size = 0;
    ncclComm_t comm = nullptr;
    // Destroyed after the destructor body has finalized or aborted the communicator.
    cuda::CudaStream stream;
    cuda::DeviceBuffer barrier_buf;  // one float
    Millis timeout = default_timeout();
    std::atomic<bool> aborted{false};  // read by a watchdog thread too
    std::mutex abort_mu;               // serializes abort_comm (owner error path vs watchdog)
    std::shared_ptr<OpEvent> pending;  // operation whose enqueue is still ncclInProgress

    NcclState() = default;
    NcclState(const NcclState&) = delete;
    NcclState& operator=(const NcclState&) = delete;

    void abort_comm() noexcept {
        std::lock_guard<std::mutex> lock(abort_mu);
        if (comm != nullptr && !aborted) {
            cudaSetDevice(device);
            ncclResult_t r = ncclCommAbort(comm);
            if (r != ncclSuccess) {
                spdlog::warn("comm: ncclCommAbort('{}') failed: {}", name, ncclGetErrorString(r));
            }
        }
        aborted = true;
        comm = nullptr;
        pending.reset();
    }

    // ncclCommGetAsyncError of the communicator (the call's own failure counts as the state).
    ncclResult_t async_state() const {
        if (comm == nullptr) {
            return ncclInvalidUsage;
        }
        ncclResult_t state = ncclSuccess;
        ncclResult_t r = ncclCommGetAsyncError(comm, &state);
        return r != ncclSuccess ? r : state;
    }

    // Non-blocking: finishes the pending enqueue if NCCL is done with it. Returns ncclInProgress while
    // not, ncclSuccess once nothing is pending, or the error.
    ncclResult_t poll_pending() {
        if (!pending) {
            return ncclSuccess;
        }
        ncclResult_t r = async_state();
        if (r == ncclInProgress || r != ncclSuccess) {
            return r;
        }
        if (cudaEventRecord(pending->event.get(), stream.get()) != cudaSuccess) {
            return ncclUnhandledCudaError;
        }
        pending->recorded = true;
        pending.reset();
        return ncclSuccess;
    }

    ~NcclState() {
        cudaSetDevice(device);
        if (comm != nullptr && !aborted) {
            if (poisoned()) {
                abort_comm();
            } else {
                // Finalize flushes outstanding work; bounded so that a dead peer cannot hang teardown.
                ncclResult_t r = ncclCommFinalize(comm);
                const Deadline until = Clock::now() + std::min<Millis>(timeout, Millis(10000));
                Backoff backoff;
                while (r == ncclSuccess || r == ncclInProgress) {
                    r = async_state();
                    if (r != ncclInProgress || Clock::now() >= until) {
                        break;
                    }
                    backoff.pause();
                }
                if (r == ncclSuccess) {
                    r = ncclCommDestroy(comm);
                    if (r != ncclSuccess) {
                        spdlog::warn("comm: ncclCommDestroy('{}') failed: {}", name, ncclGetErrorString(r));
                    }
                    comm = nullptr;
                } else {
                    spdlog::warn("comm: ncclCommFinalize('{}') did not complete ({}); aborting", name,
                                 ncclGetErrorString(r));
                    abort_comm();
                }
            }
        }
        pending.reset();
    }
};

}  // namespace internal

namespace {

using internal::NcclState;

class NcclRequest final : public RequestImpl {
public:
    NcclRequest(std::shared_ptr<NcclState> state, std::shared_ptr<OpEvent> op, std::string desc)
        : state_(std::move(state)), op_(std::move(op)), desc_(std::move(desc)) {}

    bool poll(Status* result) override {
        if (state_->aborted) {
            *result = unavailable(desc_ + ": communicator aborted: " + state_->error());
            return true;
        }
        cudaSetDevice(state_->device);
        if (!op_->recorded) {
            ncclResult_t r = state_->poll_pending();
            if (r == ncclInProgress) {
                return false;
            }
            if (r != ncclSuccess) {
                return fail(nccl_error(r, "enqueue", __FILE__, __LINE__, state_->comm), result);
            }
        }
        ncclResult_t r = state_->async_state();
        if (r != ncclSuccess && r != ncclInProgress) {
            return fail(nccl_error(r, "ncclCommGetAsyncError", __FILE__, __LINE__, state_->comm), result);
        }
        cudaError_t e = cudaEventQuery(op_->event.get());
        if (e == cudaErrorNotReady) {
            return false;
        }
        if (e != cudaSuccess) {
            return fail(cuda_error(e, "cudaEventQuery", __FILE__, __LINE__), result);
        }
        *result = ok_status();
        return true;
    }

    void abandon(const Status& why) noexcept override {
        spdlog::error("comm: {}: aborting the NCCL communicator ({})", desc_, why.to_string());
        state_->poison(why.message());
        state_->abort_comm();
    }

    std::string describe() const override { return desc_; }

private:
    bool fail(const Status& s, Status* result) {
        *result = s.with_context(desc_);
        state_->poison(result->message());
        state_->abort_comm();
        return true;
    }

    std::shared_ptr<NcclState> state_;
    std::shared_ptr<OpEvent> op_;
    std::string desc_;
};

// Polls `comms` until none reports ncclInProgress or the deadline passes.
Status wait_ready(std::initializer_list<ncclComm_t> comms, Deadline deadline, const std::string& what) {
    Backoff backoff;
    const auto start = Clock::now();
    while (true) {
        bool busy = false;
        for (ncclComm_t c : comms) {
            if (c == nullptr) continue;
            ncclResult_t state = ncclSuccess;
            ncclResult_t r = ncclCommGetAsyncError(c, &state);
            if (r != ncclSuccess) return nccl_error(r, "ncclCommGetAsyncError", __FILE__, __LINE__, c).with_context(what);
            if (state == ncclInProgress) {
                busy = true;
            } else if (state != ncclSuccess) {
                return nccl_error(state, "ncclCommGetAsyncError", __FILE__, __LINE__, c).with_context(what);
            }
        }
        if (!busy) return ok_status();
        if (Clock::now() >= deadline) {
            auto waited = std::chrono::duration_cast<Millis>(Clock::now() - start).count();
            return deadline_exceeded(what + ": not complete after " + std::to_string(waited) +
                                     " ms (deadline passed; peer dead, hung or not participating)");
        }
        backoff.pause();
    }
}

// Stream and barrier buffer of a new state on `device`.
Status init_resources(NcclState& s) {
    DS_CUDA_RETURN_IF_ERROR(cudaSetDevice(s.device));
    DS_ASSIGN_OR_RETURN(s.stream, cuda::CudaStream::create());
    DS_ASSIGN_OR_RETURN(s.barrier_buf, cuda::DeviceBuffer::create(sizeof(float)));
    DS_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(s.barrier_buf.get(), 0, sizeof(float), s.stream.get()));
    return ok_status();
}

}  // namespace

NcclComm::NcclComm(std::shared_ptr<internal::NcclState> state, int rank, int size)
    : rank_(rank), size_(size), state_(std::move(state)) {
    set_timeout(state_->timeout);
}

NcclComm::NcclComm(NcclComm&& other) noexcept
    : rank_(other.rank_), size_(other.size_), state_(std::move(other.state_)) {
    set_timeout(other.timeout());
}

NcclComm& NcclComm::operator=(NcclComm&& other) noexcept {
    if (this != &other) {
        rank_ = other.rank_;
        size_ = other.size_;
        state_ = std::move(other.state_);
        set_timeout(other.timeout());
    }
    return *this;
}

NcclComm::~NcclComm() = default;  // NcclState tears NCCL down once the last Request lets go of it

StatusOr<std::unique_ptr<NcclComm>> NcclComm::create(Communicator& bootstrap, int device, std::string name) {
    ncclUniqueId id{};
    if (bootstrap.rank() == 0) {
        ncclResult_t r = ncclGetUniqueId(&id);
        if (r != ncclSuccess) {
            // Still join the broadcast with a zero id, so the other ranks fail instead of hanging.
            Status bs = bootstrap.broadcast(&id, sizeof(id), DataType::kByte, 0);
            bs.ignore();
            return nccl_error(r, "ncclGetUniqueId", __FILE__, __LINE__);
        }
    }
    DS_RETURN_IF_ERROR(bootstrap.broadcast(&id, sizeof(id), DataType::kByte, 0).with_context("NcclComm bootstrap"));
    static const ncclUniqueId kZero{};
    if (std::memcmp(&id, &kZero, sizeof(id)) == 0) {
        return unavailable("NcclComm::create('" + name + "'): rank 0 could not create an ncclUniqueId");
    }
    return create_from_id(id, bootstrap.rank(), bootstrap.size(), device, std::move(name), bootstrap.timeout());
}

StatusOr<std::unique_ptr<NcclComm>> NcclComm::create_from_id(const ncclUniqueId& id, int rank, int size, int device,
                                                             std::string name, Millis timeout) {
    if (size <= 0 || rank < 0 || rank >= size || device < 0) {
        return invalid_argument("NcclComm::create('" + name + "'): bad rank " + std::to_string(rank) + "/" +
                                std::to_string(size) + " or device " + std::to_string(device));
    }
    auto state = std::make_shared<NcclState>();
    state->name = std::move(name);
    state->device = device;
    state->rank = rank;
    state->size = size;
    state->timeout = timeout;
    const std::string what = describe_op("nccl init (device " + std::to_string(device) + ")", rank, size, state->name,
                                         "nccl", kAllPeers);
    DS_RETURN_IF_ERROR(init_resources(*state).with_context(what));
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    ncclUniqueId id_copy = id;
    ncclResult_t r = ncclCommInitRankConfig(&state->comm, size, id_copy, rank, &cfg);
    if (r != ncclSuccess && r != ncclInProgress) {
        Status s = nccl_error(r, "ncclCommInitRankConfig", __FILE__, __LINE__, state->comm).with_context(what);
        state->poison(s.message());
        state->abort_comm();
        return s;
    }
    Status s = wait_ready({state->comm}, Clock::now() + timeout, what);
    if (!s.ok()) {
        state->poison(s.message());
        state->abort_comm();
        return s;
    }
    return std::unique_ptr<NcclComm>(new NcclComm(std::move(state), rank, size));
}

ncclComm_t NcclComm::get() const {
    return state_ ? state_->comm : nullptr;
}
cudaStream_t NcclComm::stream() const {
    return state_ ? state_->stream.get() : nullptr;
}
int NcclComm::device() const {
    return state_ ? state_->device : -1;
}
const std::string& NcclComm::name() const {
    static const std::string kMoved = "<moved-from>";
    return state_ ? state_->name : kMoved;
}
bool NcclComm::poisoned() const {
    return state_ && state_->poisoned();
}

void NcclComm::abort() noexcept {
    if (state_) {
        state_->poison("aborted by the caller");
        state_->abort_comm();
    }
}

Status NcclComm::check_usable(const char* what) const {
    if (!state_ || state_->comm == nullptr) {
        if (state_ && state_->poisoned()) {
            return unavailable(describe_op(what, rank_, size_, name(), "nccl", kAllPeers) +
                               ": communicator aborted after an earlier failure: " + state_->error());
        }
        return unavailable(std::string(what) + ": NCCL communicator is empty (moved-from or aborted)");
    }
    if (state_->poisoned()) {
        return unavailable(describe_op(what, rank_, size_, name(), "nccl", kAllPeers) +
                           ": communicator unusable after an earlier failure: " + state_->error());
    }
    return ok_status();
}

template <typename F>
StatusOr<Request> NcclComm::issue(std::string desc, F&& enqueue) {
    NcclState& s = *state_;
    DS_CUDA_RETURN_IF_ERROR(cudaSetDevice(s.device));
    // NCCL requires the previous non-blocking call to be fully enqueued before the next one.
    if (s.pending) {
        Backoff backoff;
        const Deadline until = next_deadline();
        ncclResult_t r;
        while ((r = s.poll_pending()) == ncclInProgress) {
            if (Clock::now() >= until) {
                Status d = deadline_exceeded(desc + ": the previous NCCL operation is still being enqueued after " +
                                             std::to_string(timeout().count()) + " ms (peer dead or hung)");
                s.poison(d.message());
                s.abort_comm();
                return d;
            }
            backoff.pause();
        }
        if (r != ncclSuccess) {
            Status e = nccl_error(r, "enqueue of the previous operation", __FILE__, __LINE__, s.comm).with_context(desc);
            s.poison(e.message());
            s.abort_comm();
            return e;
        }
    }
    auto op = std::make_shared<OpEvent>();
    DS_ASSIGN_OR_RETURN(op->event, cuda::CudaEvent::create());
    ncclResult_t r = enqueue();
    if (r == ncclInProgress) {
        s.pending = op;
    } else if (r == ncclSuccess) {
        DS_RETURN_IF_ERROR(op->event.record(s.stream.get()));
        op->recorded = true;
    } else {
        Status e = nccl_error(r, "enqueue", __FILE__, __LINE__, s.comm).with_context(desc);
        if (!is_usage_error(r)) {
            s.poison(e.message());
            s.abort_comm();
        }
        return e;
    }
    return Request(std::make_unique<NcclRequest>(state_, std::move(op), std::move(desc)), next_deadline());
}

template <typename F>
Status NcclComm::issue_on(const std::string& desc, F&& enqueue) {
    NcclState& s = *state_;
    DS_CUDA_RETURN_IF_ERROR(cudaSetDevice(s.device));
    const Deadline until = next_deadline();
    auto settle = [&](const char* what) -> Status {
        Backoff backoff;
        ncclResult_t r;
        while ((r = s.poll_pending()) == ncclInProgress || (r == ncclSuccess && s.async_state() == ncclInProgress)) {
            if (Clock::now() >= until) {
                Status d = deadline_exceeded(desc + ": NCCL's " + what + " still in progress after " +
                                             std::to_string(timeout().count()) + " ms (peer dead or hung)");
                s.poison(d.message());
                s.abort_comm();
                return d;
            }
            backoff.pause();
        }
        if (r != ncclSuccess) {
            Status e = nccl_error(r, what, __FILE__, __LINE__, s.comm).with_context(desc);
            s.poison(e.message());
            s.abort_comm();
            return e;
        }
        return ok_status();
    };
    DS_RETURN_IF_ERROR(settle("previous enqueue"));
    const ncclResult_t r = enqueue();
    if (r != ncclSuccess && r != ncclInProgress) {
        Status e = nccl_error(r, "enqueue", __FILE__, __LINE__, s.comm).with_context(desc);
        if (!is_usage_error(r)) {
            s.poison(e.message());
            s.abort_comm();
        }
        return e;
    }
    return settle("enqueue");
}

Status NcclComm::enqueue_allreduce_sum(float* buf, size_t count, cudaStream_t stream) {
    DS_RETURN_IF_ERROR(check_usable("allreduce_sum"));
    if (count == 0) return ok_status();
    return issue_on(describe_op("allreduce_sum(" + std::to_string(count) + " f32) on the caller's stream", rank_,
                                size_, name(), "nccl", kAllPeers),
                    [&] { return ncclAllReduce(buf, buf, count, ncclFloat32, ncclSum, get(), stream); });
}

Status NcclComm::enqueue_allgather(const void* send, void* recv, size_t count, DataType type, cudaStream_t stream) {
    DS_RETURN_IF_ERROR(check_usable("allgather"));
    if (count == 0) return ok_status();
    return issue_on(describe_op("allgather(" + std::to_string(count) + " " + data_type_name(type) +
                                    ") on the caller's stream",
                                rank_, size_, name(), "nccl", kAllPeers),
                    [&] { return ncclAllGather(send, recv, count, nccl_type(type), get(), stream); });
}

Status NcclComm::enqueue_send(const void* buf, size_t count, DataType type, int peer, cudaStream_t stream) {
    DS_RETURN_IF_ERROR(check_usable("send"));
    DS_RETURN_IF_ERROR(check_peer("send", peer));
    if (count == 0) return ok_status();
    return issue_on(describe_op("send(" + std::to_string(count) + " " + data_type_name(type) + ") on the caller's stream",
                                rank_, size_, name(), "nccl", peer),
                    [&] { return ncclSend(buf, count, nccl_type(type), peer, get(), stream); });
}

Status NcclComm::enqueue_recv(void* buf, size_t count, DataType type, int peer, cudaStream_t stream) {
    DS_RETURN_IF_ERROR(check_usable("recv"));
    DS_RETURN_IF_ERROR(check_peer("recv", peer));
    if (count == 0) return ok_status();
    return issue_on(describe_op("recv(" + std::to_string(count) + " " + data_type_name(type) + ") on the caller's stream",
                                rank_, size_, name(), "nccl", peer),
                    [&] { return ncclRecv(buf, count, nccl_type(type), peer, get(), stream); });
}

StatusOr<Request> NcclComm::isend(const void* buf, size_t count, DataType type, int peer, Tag tag) {
    DS_RETURN_IF_ERROR(check_usable("send"));
    DS_RETURN_IF_ERROR(check_peer("send", peer));
    DS_RETURN_IF_ERROR(check_tag("send", tag));
    if (count == 0) return Request();
    std::string desc = describe_op("send(" + std::to_string(count) + " " + data_type_name(type) + ")", rank_, size_,
                                   name(), "nccl", peer);
    return issue(std::move(desc), [&] { return ncclSend(buf, count, nccl_type(type), peer, get(), stream()); });
}

StatusOr<Request> NcclComm::irecv(void* buf, size_t count, DataType type, int peer, Tag tag) {
    DS_RETURN_IF_ERROR(check_usable("recv"));
    DS_RETURN_IF_ERROR(check_peer("recv", peer));
    DS_RETURN_IF_ERROR(check_tag("recv", tag));
    if (count == 0) return Request();
    std::string desc = describe_op("recv(" + std::to_string(count) + " " + data_type_name(type) + ")", rank_, size_,
                                   name(), "nccl", peer);
    return issue(std::move(desc), [&] { return ncclRecv(buf, count, nccl_type(type), peer, get(), stream()); });
}

StatusOr<Request> NcclComm::iallreduce_sum(const float* send, float* recv, size_t count) {
    DS_RETURN_IF_ERROR(check_usable("allreduce_sum"));
    if (count == 0) return Request();
    std::string desc = describe_op("allreduce_sum(" + std::to_string(count) + " f32)", rank_, size_, name(), "nccl",
                                   kAllPeers);
    return issue(std::move(desc),
                 [&] { return ncclAllReduce(send, recv, count, ncclFloat32, ncclSum, get(), stream()); });
}

StatusOr<Request> NcclComm::iallgather(const void* send, void* recv, size_t count, DataType type) {
    DS_RETURN_IF_ERROR(check_usable("allgather"));
    if (count == 0) return Request();
    std::string desc = describe_op("allgather(" + std::to_string(count) + " " + data_type_name(type) + ")", rank_,
                                   size_, name(), "nccl", kAllPeers);
    return issue(std::move(desc), [&] { return ncclAllGather(send, recv, count, nccl_type(type), get(), stream()); });
}

StatusOr<Request> NcclComm::ireduce_scatter_sum(const float* send, float* recv, size_t recv_count) {
    DS_RETURN_IF_ERROR(check_usable("reduce_scatter_sum"));
    if (recv_count == 0) return Request();
    std::string desc = describe_op("reduce_scatter_sum(" + std::to_string(recv_count) + " f32 per rank)", rank_,
                                   size_, name(), "nccl", kAllPeers);
    return issue(std::move(desc),
                 [&] { return ncclReduceScatter(send, recv, recv_count, ncclFloat32, ncclSum, get(), stream()); });
}

StatusOr<Request> NcclComm::ialltoallv(const void* send, std::span<const size_t> send_counts,
                                       std::span<const size_t> send_displs, void* recv,
                                       std::span<const size_t> recv_counts, std::span<const size_t> recv_displs,
                                       DataType type) {
    DS_RETURN_IF_ERROR(check_usable("alltoallv"));
    DS_RETURN_IF_ERROR(check_alltoallv(send_counts, send_displs, recv_counts, recv_displs));
    const size_t me = static_cast<size_t>(rank_);
    if (send_counts[me] != recv_counts[me]) {
        return invalid_argument("alltoallv on rank " + std::to_string(rank_) + ": sends " +
                                std::to_string(send_counts[me]) + " elements to itself but expects " +
                                std::to_string(recv_counts[me]));
    }
    size_t total_send = 0, total_recv = 0;
    for (int i = 0; i < size_; ++i) {
        total_send += send_counts[i];
        total_recv += recv_counts[i];
    }
    std::string desc = describe_op("alltoallv(send " + std::to_string(total_send) + ", recv " +
                                       std::to_string(total_recv) + " " + data_type_name(type) + ")",
                                   rank_, size_, name(), "nccl", kAllPeers);
    const size_t esz = data_type_size(type);
    const auto* sbase = static_cast<const char*>(send);
    auto* rbase = static_cast<char*>(recv);
    return issue(std::move(desc), [&]() -> ncclResult_t {
        if (send_counts[me] > 0 &&
            cudaMemcpyAsync(rbase + recv_displs[me] * esz, sbase + send_displs[me] * esz, send_counts[me] * esz,
                            cudaMemcpyDeviceToDevice, stream()) != cudaSuccess) {
            return ncclUnhandledCudaError;
        }
        ncclResult_t r = ncclGroupStart();
        if (r != ncclSuccess) return r;
        for (int p = 0; p < size_; ++p) {
            if (p == rank_) continue;
            if (send_counts[p] > 0) {
                r = ncclSend(sbase + send_displs[p] * esz, send_counts[p], nccl_type(type), p, get(), stream());
                if (r != ncclSuccess && r != ncclInProgress) break;
            }
            if (recv_counts[p] > 0) {
                r = ncclRecv(rbase + recv_displs[p] * esz, recv_counts[p], nccl_type(type), p, get(), stream());
                if (r != ncclSuccess && r != ncclInProgress) break;
            }
        }
        ncclResult_t end = ncclGroupEnd();  // always closes the group, even after an error inside it
        return (r != ncclSuccess && r != ncclInProgress) ? r : end;
    });
}

StatusOr<Request> NcclComm::ibroadcast(void* buf, size_t count, DataType type, int root) {
    DS_RETURN_IF_ERROR(check_usable("broadcast"));
    DS_RETURN_IF_ERROR(check_peer("broadcast(root)", root));
    if (count == 0) return Request();
    std::string desc = describe_op("broadcast(" + std::to_string(count) + " " + data_type_name(type) + ", root " +
                                       std::to_string(root) + ")",
                                   rank_, size_, name(), "nccl", root);
    return issue(std::move(desc),
                 [&] { return ncclBroadcast(buf, buf, count, nccl_type(type), root, get(), stream()); });
}

StatusOr<Request> NcclComm::ibarrier() {
    DS_RETURN_IF_ERROR(check_usable("barrier"));
    std::string desc = describe_op("barrier", rank_, size_, name(), "nccl", kAllPeers);
    float* b = state_->barrier_buf.as<float>();
    return issue(std::move(desc), [&] { return ncclAllReduce(b, b, 1, ncclFloat32, ncclSum, get(), stream()); });
}

StatusOr<std::unique_ptr<Communicator>> NcclComm::split(int color, int key) {
    DS_RETURN_IF_ERROR(check_usable("split"));
    NcclState& s = *state_;
    const std::string what = describe_op("split(color " + std::to_string(color) + ", key " + std::to_string(key) + ")",
                                         rank_, size_, name(), "nccl", kAllPeers);
    // Let any pending enqueue finish first (NCCL: one outstanding non-blocking call per communicator).
    DS_ASSIGN_OR_RETURN(Request settle, ibarrier());
    DS_RETURN_IF_ERROR(settle.wait().with_context(what));
    DS_CUDA_RETURN_IF_ERROR(cudaSetDevice(s.device));
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    ncclComm_t child = nullptr;
    ncclResult_t r = ncclCommSplit(s.comm, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &child, &cfg);
    if (r != ncclSuccess && r != ncclInProgress) {
        Status e = nccl_error(r, "ncclCommSplit", __FILE__, __LINE__, s.comm).with_context(what);
        if (!is_usage_error(r)) {
            s.poison(e.message());
            s.abort_comm();
        }
        return e;
    }
    Status ready = wait_ready({s.comm, child}, next_deadline(), what);
    if (!ready.ok()) {
        if (child != nullptr) ncclCommAbort(child);
        s.poison(ready.message());
        s.abort_comm();
        return ready;
    }
    if (child == nullptr) {
        return std::unique_ptr<Communicator>();
    }
    auto cs = std::make_shared<NcclState>();
    cs->name = name() + "/" + std::to_string(color);
    cs->device = s.device;
    cs->timeout = timeout();
    cs->comm = child;  // owned by cs from here on (destroyed or aborted by ~NcclState)
    int crank = 0, csize = 0;
    if ((r = ncclCommUserRank(child, &crank)) != ncclSuccess || (r = ncclCommCount(child, &csize)) != ncclSuccess) {
        return nccl_error(r, "ncclCommUserRank/ncclCommCount", __FILE__, __LINE__, child).with_context(what);
    }
    cs->rank = crank;
    cs->size = csize;
    DS_RETURN_IF_ERROR(init_resources(*cs).with_context(what));
    return std::unique_ptr<Communicator>(new NcclComm(std::move(cs), crank, csize));
}

}  // namespace deepshard::comm
