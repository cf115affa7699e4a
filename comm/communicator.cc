// Request completion loop, blocking wrappers and argument checks shared by every backend.
// The poll loop is the single place where "no operation blocks forever" is enforced.
#include "comm/communicator.h"

#include <algorithm>
#include <thread>

#include "common/env.h"
#include "common/logging.h"

namespace deepshard::comm {

size_t data_type_size(DataType t) {
    switch (t) {
        case DataType::kFloat32:
            return 4;
        case DataType::kByte:
            return 1;
    }
    return 1;
}

const char* data_type_name(DataType t) {
    switch (t) {
        case DataType::kFloat32:
            return "f32";
        case DataType::kByte:
            return "byte";
    }
    return "?";
}

Millis default_timeout() {
    return std::chrono::duration_cast<Millis>(comm_timeout());
}

std::string describe_op(std::string_view op, int rank, int size, std::string_view comm_name,
                        std::string_view backend, int peer) {
    std::string s(op);
    s += " on rank " + std::to_string(rank) + "/" + std::to_string(size) + " of '" + std::string(comm_name) + "' [" +
         std::string(backend) + "], peer ";
    s += peer == kAllPeers ? std::string("all") : std::to_string(peer);
    return s;
}

namespace {
// Busy-poll budget before yielding: yielding on a loaded host costs tens of microseconds per
// round trip, far more than the operations we wait for.
std::chrono::microseconds spin_budget() {
    static const auto us = std::chrono::microseconds(std::max<int64_t>(0, env_int("DS_COMM_SPIN_US")));
    return us;
}
}  // namespace

void Backoff::pause() {
    // Spin (just return to the caller's poll) for DS_COMM_SPIN_US, then yield for 1 ms more, then sleep 50 us .. 1 ms growing with the wait.
    auto now = Clock::now();
    if (spins_++ == 0) {
        first_ = now;
        return;
    }
    auto waited = now - first_;
    if (waited < spin_budget()) {
        return;
    }
    if (waited < spin_budget() + std::chrono::milliseconds(1)) {
        std::this_thread::yield();
        return;
    }
    auto sleep = std::chrono::duration_cast<std::chrono::microseconds>(waited / 8);
    sleep = std::clamp(sleep, std::chrono::microseconds(50), std::chrono::microseconds(1000));
    std::this_thread::sleep_for(sleep);
}

Request& Request::operator=(Request&& other) noexcept {
    if (this != &other) {
        if (impl_) {
            impl_->abandon(cancelled("request overwritten while pending"));
        }
        impl_ = std::move(other.impl_);
        deadline_ = other.deadline_;
        issued_ = other.issued_;
        final_ = std::move(other.final_);
    }
    return *this;
}

Request::~Request() {
    if (impl_) {
        std::string what = impl_->describe();
        impl_->abandon(cancelled("request dropped while pending: " + what));
        spdlog::warn("comm: {} dropped while pending; communicator poisoned", what);
    }
}

Status Request::wait() {
    return wait(deadline_);
}

Status Request::wait(Deadline deadline) {
    if (!impl_) {
        return final_;
    }
    Backoff backoff;
    Status result;
    while (true) {
        if (impl_->poll(&result)) {
            final_ = result;
            finish();
            return final_;
        }
        auto now = Clock::now();
        if (now >= deadline) {
            auto waited = std::chrono::duration_cast<Millis>(now - issued_).count();
            final_ = deadline_exceeded(impl_->describe() + ": not complete after " + std::to_string(waited) +
                                       " ms (deadline passed; peer dead, hung or not participating)");
            impl_->abandon(final_);
            finish();
            return final_;
        }
        backoff.pause();
    }
}

StatusOr<bool> Request::test() {
    if (!impl_) {
        if (!final_.ok()) {
            return final_;
        }
        return true;
    }
    Status result;
    if (impl_->poll(&result)) {
        final_ = result;
        finish();
        if (!final_.ok()) {
            return final_;
        }
        return true;
    }
    if (Clock::now() >= deadline_) {
        auto waited = std::chrono::duration_cast<Millis>(Clock::now() - issued_).count();
        final_ = deadline_exceeded(impl_->describe() + ": not complete after " + std::to_string(waited) +
                                   " ms (deadline passed; peer dead, hung or not participating)");
        impl_->abandon(final_);
        finish();
        return final_;
    }
    return false;
}

Status wait_all(std::span<Request> requests) {
    Status first;
    for (auto& r : requests) {
        Status s = r.wait();
        if (!s.ok() && first.ok()) {
            first = s;
        }
    }
    return first;
}

Status PointToPoint::check_peer(const char* what, int peer) const {
    if (peer < 0 || peer >= size()) {
        return invalid_argument(std::string(what) + " on rank " + std::to_string(rank()) + ": peer " +
                                std::to_string(peer) + " out of range [0, " + std::to_string(size()) + ")");
    }
    return ok_status();
}

Status PointToPoint::check_tag(const char* what, Tag tag) const {
    if (tag.value < 0 || tag.value > Tag::kMaxTag) {
        return invalid_argument(std::string(what) + " on rank " + std::to_string(rank()) + ": tag " +
                                std::to_string(tag.value) + " out of range [0, " + std::to_string(Tag::kMaxTag) + "]");
    }
    return ok_status();
}

Status PointToPoint::send(const void* buf, size_t count, DataType type, int peer, Tag tag) {
    DS_ASSIGN_OR_RETURN(Request r, isend(buf, count, type, peer, tag));
    return r.wait();
}

Status PointToPoint::recv(void* buf, size_t count, DataType type, int peer, Tag tag) {
    DS_ASSIGN_OR_RETURN(Request r, irecv(buf, count, type, peer, tag));
    return r.wait();
}

Status Communicator::allreduce_sum(const float* send, float* recv, size_t count) {
    DS_ASSIGN_OR_RETURN(Request r, iallreduce_sum(send, recv, count));
    return r.wait();
}

Status Communicator::allgather(const void* send, void* recv, size_t count, DataType type) {
    DS_ASSIGN_OR_RETURN(Request r, iallgather(send, recv, count, type));
    return r.wait();
}

Status Communicator::reduce_scatter_sum(const float* send, float* recv, size_t recv_count) {
    DS_ASSIGN_OR_RETURN(Request r, ireduce_scatter_sum(send, recv, recv_count));
    return r.wait();
}

Status Communicator::alltoallv(const void* send, std::span<const size_t> send_counts,
                               std::span<const size_t> send_displs, void* recv, std::span<const size_t> recv_counts,
                               std::span<const size_t> recv_displs, DataType type) {
    DS_ASSIGN_OR_RETURN(Request r, ialltoallv(send, send_counts, send_displs, recv, recv_counts, recv_displs, type));
    return r.wait();
}

Status Communicator::broadcast(void* buf, size_t count, DataType type, int root) {
    DS_ASSIGN_OR_RETURN(Request r, ibroadcast(buf, count, type, root));
    return r.wait();
}

Status Communicator::barrier() {
    DS_ASSIGN_OR_RETURN(Request r, ibarrier());
    return r.wait();
}

Status Communicator::check_alltoallv(std::span<const size_t> send_counts, std::span<const size_t> send_displs,
                                     std::span<const size_t> recv_counts,
                                     std::span<const size_t> recv_displs) const {
    const size_t n = static_cast<size_t>(size());
    if (send_counts.size() != n || send_displs.size() != n || recv_counts.size() != n || recv_displs.size() != n) {
        return invalid_argument("alltoallv on rank " + std::to_string(rank()) + ": counts/displacements need " +
                                std::to_string(n) + " entries each");
    }
    return ok_status();
}

std::vector<size_t> exclusive_prefix_sum(std::span<const size_t> counts) {
    std::vector<size_t> displs(counts.size());
    size_t acc = 0;
    for (size_t i = 0; i < counts.size(); ++i) {
        displs[i] = acc;
        acc += counts[i];
    }
    return displs;
}

const char* memory_space_name(MemorySpace m) {
    return m == MemorySpace::kHost ? "host" : "device";
}

Status PointToPoint::require_memory(MemorySpace m, std::string_view user) const {
    if (memory_space() == m) return ok_status();
    return invalid_argument(std::string(user) + " needs a communicator on " + memory_space_name(m) + " memory; '" +
                            std::string(backend()) + "' takes " + memory_space_name(memory_space()) + " memory");
}

}  // namespace deepshard::comm
