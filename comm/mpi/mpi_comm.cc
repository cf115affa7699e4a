// MPI backend: every operation is the non-blocking MPI call, wrapped in an MpiRequest that
// Request::wait() polls with MPI_Test until done or the deadline. Deadline handling and the
// poison/leak policy live in MpiRequest::abandon().
#include "comm/mpi/mpi_comm.h"

#include <atomic>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <vector>

#include "comm/mpi/mpi_error.h"
#include "comm/mpi/mpi_runtime.h"
#include "common/logging.h"

namespace deepshard::comm {

namespace internal {
struct MpiCommState : PoisonState {
    std::string name;
};
}  // namespace internal

std::string mpi_error_string(int rc) {
    char buf[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, buf, &len) != MPI_SUCCESS) {
        return "MPI error " + std::to_string(rc);
    }
    return std::string(buf, static_cast<size_t>(len));
}

Status mpi_error(int rc, const char* expr, const char* file, int line) {
    return Status(StatusCode::kMpi, std::string(expr) + " failed: " + mpi_error_string(rc) + " (" + file + ":" +
                                        std::to_string(line) + ")");
}

namespace {

using internal::MpiCommState;

MPI_Datatype mpi_type(DataType t) {
    return t == DataType::kFloat32 ? MPI_FLOAT : MPI_BYTE;
}

enum class OpKind { kSend, kRecv, kCollective };

class MpiRequest final : public RequestImpl {
public:
    MpiRequest(std::shared_ptr<MpiCommState> state, OpKind kind, std::string desc)
        : state_(std::move(state)), kind_(kind), desc_(std::move(desc)) {}

    MPI_Request* handle() { return &req_; }
    std::vector<int>& scratch() { return scratch_; }
    void expect_count(int count, MPI_Datatype type) {
        expected_count_ = count;
        type_ = type;
    }

    bool poll(Status* result) override {
        int flag = 0;
        MPI_Status st;
        int rc = MPI_Test(&req_, &flag, &st);
        if (rc != MPI_SUCCESS) {
            int code = rc == MPI_ERR_IN_STATUS ? st.MPI_ERROR : rc;
            *result = Status(StatusCode::kMpi, desc_ + ": " + mpi_error_string(code));
            state_->poison(result->message());
            return true;
        }
        if (!flag) {
            return false;
        }
        *result = ok_status();
        if (kind_ == OpKind::kRecv) {
            int got = 0;
            MPI_Get_count(&st, type_, &got);
            if (got != expected_count_) {
                *result = protocol_error(desc_ + ": expected " + std::to_string(expected_count_) +
                                         " elements, peer sent " + std::to_string(got));
            }
        }
        return true;
    }

    void abandon(const Status& why) noexcept override {
        if (req_ == MPI_REQUEST_NULL) {
            return;
        }
        if (kind_ != OpKind::kCollective) {
            // Point-to-point can be cancelled; give the cancellation a short, bounded time.
            MPI_Cancel(&req_);
            auto until = Clock::now() + std::chrono::milliseconds(200);
            Backoff backoff;
            while (Clock::now() < until) {
                int flag = 0;
                MPI_Status st;
                if (MPI_Test(&req_, &flag, &st) != MPI_SUCCESS || flag) {
                    // Cancelled (or completed just now): MPI no longer owns the buffer. A lost
                    // message still means a peer is missing, so poison anyway for sends.
                    if (kind_ == OpKind::kSend) {
                        state_->poison(why.message());
                    }
                    return;
                }
                backoff.pause();
            }
        }
        // Uncancellable (collective, or a send MPI would not cancel): leave it inside MPI.
        spdlog::error("comm: {}: abandoning an operation inside MPI ({})", desc_, why.to_string());
        state_->poison(why.message());
        MpiRuntime::note_abandoned_operation();
        req_ = MPI_REQUEST_NULL;  // leaked on purpose: freeing a pending collective is erroneous
    }

    std::string describe() const override { return desc_; }

private:
    MPI_Request req_ = MPI_REQUEST_NULL;
    std::shared_ptr<MpiCommState> state_;
    OpKind kind_;
    std::string desc_;
    std::vector<int> scratch_;  // alltoallv counts/displacements, alive until completion
    int expected_count_ = 0;
    MPI_Datatype type_ = MPI_BYTE;
};

Status check_int(const std::string& desc, size_t n) {
    if (n > static_cast<size_t>(INT_MAX)) {
        return invalid_argument(desc + ": count " + std::to_string(n) + " exceeds INT_MAX elements");
    }
    return ok_status();
}

}  // namespace

MpiComm::MpiComm(MPI_Comm comm, bool owned, std::string name)
    : comm_(comm), owned_(owned), state_(std::make_shared<MpiCommState>()) {
    state_->name = std::move(name);
}

StatusOr<MpiComm> MpiComm::world() {
    MPI_Comm dup = MPI_COMM_NULL;
    DS_MPI_RETURN_IF_ERROR(MPI_Comm_dup(MPI_COMM_WORLD, &dup));
    MpiComm c(dup, true, "world");
    DS_MPI_RETURN_IF_ERROR(MPI_Comm_set_errhandler(dup, MPI_ERRORS_RETURN));
    DS_MPI_RETURN_IF_ERROR(MPI_Comm_rank(dup, &c.rank_));
    DS_MPI_RETURN_IF_ERROR(MPI_Comm_size(dup, &c.size_));
    return c;
}

StatusOr<MpiComm> MpiComm::borrow(MPI_Comm comm, std::string name) {
    if (comm == MPI_COMM_NULL) {
        return invalid_argument("MpiComm::borrow: MPI_COMM_NULL");
    }
    MpiComm c(comm, false, std::move(name));
    DS_MPI_RETURN_IF_ERROR(MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN));
    DS_MPI_RETURN_IF_ERROR(MPI_Comm_rank(comm, &c.rank_));
    DS_MPI_RETURN_IF_ERROR(MPI_Comm_size(comm, &c.size_));
    return c;
}

MpiComm::MpiComm(MpiComm&& other) noexcept
    : comm_(other.comm_), owned_(other.owned_), rank_(other.rank_), size_(other.size_),
      state_(std::move(other.state_)) {
    set_timeout(other.timeout());
    other.comm_ = MPI_COMM_NULL;
    other.owned_ = false;
}

MpiComm& MpiComm::operator=(MpiComm&& other) noexcept {
    if (this != &other) {
        reset();
        comm_ = other.comm_;
        owned_ = other.owned_;
        rank_ = other.rank_;
        size_ = other.size_;
        state_ = std::move(other.state_);
        set_timeout(other.timeout());
        other.comm_ = MPI_COMM_NULL;
        other.owned_ = false;
    }
    return *this;
}

MpiComm::~MpiComm() {
    reset();
}

void MpiComm::reset() noexcept {
    if (owned_ && comm_ != MPI_COMM_NULL) {
        int finalized = 0;
        MPI_Finalized(&finalized);
        // A poisoned communicator may still have an abandoned collective inside MPI; leave it.
        if (!finalized && !poisoned()) {
            int rc = MPI_Comm_free(&comm_);
            if (rc != MPI_SUCCESS) {
                spdlog::warn("comm: MPI_Comm_free('{}') failed: {}", name(), mpi_error_string(rc));
            }
        }
    }
    comm_ = MPI_COMM_NULL;
    owned_ = false;
}

void MpiComm::abort_job(int code) {
    spdlog::default_logger()->flush();
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);  // MPI_Abort should not return
}

const std::string& MpiComm::name() const {
    static const std::string kMoved = "<moved-from>";
    return state_ ? state_->name : kMoved;
}

bool MpiComm::poisoned() const {
    return state_ && state_->poisoned();
}

Status MpiComm::check_usable(const char* what) const {
    if (comm_ == MPI_COMM_NULL || !state_) {
        return unavailable(std::string(what) + ": communicator is empty (moved-from)");
    }
    if (state_->poisoned()) {
        return unavailable(describe_op(what, rank_, size_, name(), "mpi", kAllPeers) +
                           ": communicator unusable after an earlier failure: " + state_->error());
    }
    return ok_status();
}

StatusOr<Request> MpiComm::isend(const void* buf, size_t count, DataType type, int peer, Tag tag) {
    DS_RETURN_IF_ERROR(check_usable("send"));
    DS_RETURN_IF_ERROR(check_peer("send", peer));
    DS_RETURN_IF_ERROR(check_tag("send", tag));
    std::string desc = describe_op("send(" + std::to_string(count) + " " + data_type_name(type) + ", tag " +
                                       std::to_string(tag.value) + ")",
                                   rank_, size_, name(), "mpi", peer);
    DS_RETURN_IF_ERROR(check_int(desc, count));
    auto r = std::make_unique<MpiRequest>(state_, OpKind::kSend, desc);
    int rc = MPI_Isend(buf, static_cast<int>(count), mpi_type(type), peer, tag.value, comm_, r->handle());
    if (rc != MPI_SUCCESS) {
        return mpi_error(rc, "MPI_Isend", __FILE__, __LINE__).with_context(desc);
    }
    return Request(std::move(r), next_deadline());
}

StatusOr<Request> MpiComm::irecv(void* buf, size_t count, DataType type, int peer, Tag tag) {
    DS_RETURN_IF_ERROR(check_usable("recv"));
    DS_RETURN_IF_ERROR(check_peer("recv", peer));
    DS_RETURN_IF_ERROR(check_tag("recv", tag));
    std::string desc = describe_op("recv(" + std::to_string(count) + " " + data_type_name(type) + ", tag " +
                                       std::to_string(tag.value) + ")",
                                   rank_, size_, name(), "mpi", peer);
    DS_RETURN_IF_ERROR(check_int(desc, count));
    auto r = std::make_unique<MpiRequest>(state_, OpKind::kRecv, desc);
    r->expect_count(static_cast<int>(count), mpi_type(type));
    int rc = MPI_Irecv(buf, static_cast<int>(count), mpi_type(type), peer, tag.value, comm_, r->handle());
    if (rc != MPI_SUCCESS) {
        return mpi_error(rc, "MPI_Irecv", __FILE__, __LINE__).with_context(desc);
    }
    return Request(std::move(r), next_deadline());
}

StatusOr<Request> MpiComm::iallreduce_sum(const float* send, float* recv, size_t count) {
    DS_RETURN_IF_ERROR(check_usable("allreduce_sum"));
    std::string desc = describe_op("allreduce_sum(" + std::to_string(count) + " f32)", rank_, size_, name(), "mpi",
                                   kAllPeers);
    DS_RETURN_IF_ERROR(check_int(desc, count));
    auto r = std::make_unique<MpiRequest>(state_, OpKind::kCollective, desc);
    const void* sbuf = send == recv ? MPI_IN_PLACE : static_cast<const void*>(send);
    int rc = MPI_Iallreduce(sbuf, recv, static_cast<int>(count), MPI_FLOAT, MPI_SUM, comm_, r->handle());
    if (rc != MPI_SUCCESS) {
        return mpi_error(rc, "MPI_Iallreduce", __FILE__, __LINE__).with_context(desc);
    }
    return Request(std::move(r), next_deadline());
}

StatusOr<Request> MpiComm::iallgather(const void* send, void* recv, size_t count, DataType type) {
    DS_RETURN_IF_ERROR(check_usable("allgather"));
    std::string desc = describe_op("allgather(" + std::to_string(count) + " " + data_type_name(type) + ")", rank_,
                                   size_, name(), "mpi", kAllPeers);
    DS_RETURN_IF_ERROR(check_int(desc, count * static_cast<size_t>(size_)));
    auto r = std::make_unique<MpiRequest>(state_, OpKind::kCollective, desc);
    int n = static_cast<int>(count);
    int rc = MPI_Iallgather(send, n, mpi_type(type), recv, n, mpi_type(type), comm_, r->handle());
    if (rc != MPI_SUCCESS) {
        return mpi_error(rc, "MPI_Iallgather", __FILE__, __LINE__).with_context(desc);
    }
    return Request(std::move(r), next_deadline());
}

StatusOr<Request> MpiComm::ireduce_scatter_sum(const float* send, float* recv, size_t recv_count) {
    DS_RETURN_IF_ERROR(check_usable("reduce_scatter_sum"));
    std::string desc = describe_op("reduce_scatter_sum(" + std::to_string(recv_count) + " f32 per rank)", rank_,
                                   size_, name(), "mpi", kAllPeers);
    DS_RETURN_IF_ERROR(check_int(desc, recv_count * static_cast<size_t>(size_)));
    auto r = std::make_unique<MpiRequest>(state_, OpKind::kCollective, desc);
    int rc = MPI_Ireduce_scatter_block(send, recv, static_cast<int>(recv_count), MPI_FLOAT, MPI_SUM, comm_,
                                       r->handle());
    if (rc != MPI_SUCCESS) {
        return mpi_error(rc, "MPI_Ireduce_scatter_block", __FILE__, __LINE__).with_context(desc);
    }
    return Request(std::move(r), next_deadline());
}

StatusOr<Request> MpiComm::ialltoallv(const void* send, std::span<const size_t> send_counts,
                                      std::span<const size_t> send_displs, void* recv,
                                      std::span<const size_t> recv_counts, std::span<const size_t> recv_displs,
                                      DataType type) {
    DS_RETURN_IF_ERROR(check_usable("alltoallv"));
    DS_RETURN_IF_ERROR(check_alltoallv(send_counts, send_displs, recv_counts, recv_displs));
    size_t total_send = 0;
    size_t total_recv = 0;
    for (int i = 0; i < size_; ++i) {
        total_send += send_counts[i];
        total_recv += recv_counts[i];
    }
    std::string desc = describe_op("alltoallv(send " + std::to_string(total_send) + ", recv " +
                                       std::to_string(total_recv) + " " + data_type_name(type) + ")",
                                   rank_, size_, name(), "mpi", kAllPeers);
    auto r = std::make_unique<MpiRequest>(state_, OpKind::kCollective, desc);
    std::vector<int>& s = r->scratch();
    const size_t n = static_cast<size_t>(size_);
    s.resize(4 * n);
    for (size_t i = 0; i < n; ++i) {
        for (size_t v : {send_counts[i], send_displs[i], recv_counts[i], recv_displs[i]}) {
            DS_RETURN_IF_ERROR(check_int(desc, v));
        }
        s[i] = static_cast<int>(send_counts[i]);
        s[n + i] = static_cast<int>(send_displs[i]);
        s[2 * n + i] = static_cast<int>(recv_counts[i]);
        s[3 * n + i] = static_cast<int>(recv_displs[i]);
    }
    int rc = MPI_Ialltoallv(send, s.data(), s.data() + n, mpi_type(type), recv, s.data() + 2 * n, s.data() + 3 * n,
                            mpi_type(type), comm_, r->handle());
    if (rc != MPI_SUCCESS) {
        return mpi_error(rc, "MPI_Ialltoallv", __FILE__, __LINE__).with_context(desc);
    }
    return Request(std::move(r), next_deadline());
}

StatusOr<Request> MpiComm::ibroadcast(void* buf, size_t count, DataType type, int root) {
    DS_RETURN_IF_ERROR(check_usable("broadcast"));
    DS_RETURN_IF_ERROR(check_peer("broadcast(root)", root));
    std::string desc = describe_op("broadcast(" + std::to_string(count) + " " + data_type_name(type) + ", root " +
                                       std::to_string(root) + ")",
                                   rank_, size_, name(), "mpi", root);
    DS_RETURN_IF_ERROR(check_int(desc, count));
    auto r = std::make_unique<MpiRequest>(state_, OpKind::kCollective, desc);
    int rc = MPI_Ibcast(buf, static_cast<int>(count), mpi_type(type), root, comm_, r->handle());
    if (rc != MPI_SUCCESS) {
        return mpi_error(rc, "MPI_Ibcast", __FILE__, __LINE__).with_context(desc);
    }
    return Request(std::move(r), next_deadline());
}

StatusOr<Request> MpiComm::ibarrier() {
    DS_RETURN_IF_ERROR(check_usable("barrier"));
    std::string desc = describe_op("barrier", rank_, size_, name(), "mpi", kAllPeers);
    auto r = std::make_unique<MpiRequest>(state_, OpKind::kCollective, desc);
    int rc = MPI_Ibarrier(comm_, r->handle());
    if (rc != MPI_SUCCESS) {
        return mpi_error(rc, "MPI_Ibarrier", __FILE__, __LINE__).with_context(desc);
    }
    return Request(std::move(r), next_deadline());
}

StatusOr<std::unique_ptr<Communicator>> MpiComm::split(int color, int key) {
    DS_RETURN_IF_ERROR(check_usable("split"));
    // MPI_Comm_split blocks without a deadline; first prove that every rank reached this point.
    int32_t mine[2] = {color, key};
    std::vector<int32_t> all(2 * static_cast<size_t>(size_));
    DS_RETURN_IF_ERROR(allgather(mine, all.data(), sizeof(mine), DataType::kByte).with_context("split"));
    MPI_Comm child = MPI_COMM_NULL;
    int rc = MPI_Comm_split(comm_, color < 0 ? MPI_UNDEFINED : color, key, &child);
    if (rc != MPI_SUCCESS) {
        return mpi_error(rc, "MPI_Comm_split", __FILE__, __LINE__)
            .with_context(describe_op("split", rank_, size_, name(), "mpi", kAllPeers));
    }
    if (child == MPI_COMM_NULL) {
        return std::unique_ptr<Communicator>();
    }
    auto c = std::unique_ptr<MpiComm>(new MpiComm(child, true, name() + "/" + std::to_string(color)));
    DS_MPI_RETURN_IF_ERROR(MPI_Comm_set_errhandler(child, MPI_ERRORS_RETURN));
    DS_MPI_RETURN_IF_ERROR(MPI_Comm_rank(child, &c->rank_));
    DS_MPI_RETURN_IF_ERROR(MPI_Comm_size(child, &c->size_));
    c->set_timeout(timeout());
    return std::unique_ptr<Communicator>(std::move(c));
}

}  // namespace deepshard::comm
