#include "comm/profile.h"

#include <numeric>

namespace deepshard::comm {

void CommProfile::record(const std::string& key, int64_t bytes, double seconds) {
    std::lock_guard lock(mu_);
    OpStats& s = stats_[key];
    s.count += 1;
    s.bytes += bytes;
    s.seconds += seconds;
}

std::map<std::string, OpStats> CommProfile::snapshot() const {
    std::lock_guard lock(mu_);
    return stats_;
}

std::map<std::string, OpStats> CommProfile::delta(const std::map<std::string, OpStats>& now,
                                                  const std::map<std::string, OpStats>& before) {
    std::map<std::string, OpStats> out;
    for (const auto& [key, s] : now) {
        OpStats d = s;
        if (auto it = before.find(key); it != before.end()) {
            d.count -= it->second.count;
            d.bytes -= it->second.bytes;
            d.seconds -= it->second.seconds;
        }
        out[key] = d;
    }
    return out;
}

namespace {

// Owns the wrapped operation's Request and records its time when it completes (with any result:
// a failed operation still cost the time it took).
class TimedRequest final : public RequestImpl {
public:
    TimedRequest(Request inner, std::shared_ptr<CommProfile> profile, std::string key, int64_t bytes)
        : inner_(std::move(inner)), profile_(std::move(profile)), key_(std::move(key)), bytes_(bytes),
          issued_(Clock::now()) {}

    bool poll(Status* result) override {
        StatusOr<bool> done = inner_.test();
        if (done.ok() && !done.value()) return false;
        profile_->record(key_, bytes_, std::chrono::duration<double>(Clock::now() - issued_).count());
        *result = done.ok() ? ok_status() : done.status();
        return true;
    }
    void abandon(const Status&) noexcept override {
        Request dropped = std::move(inner_);  // its destructor abandons the wrapped operation
    }
    std::string describe() const override { return key_ + " (" + std::to_string(bytes_) + " bytes)"; }

private:
    Request inner_;
    std::shared_ptr<CommProfile> profile_;
    std::string key_;
    int64_t bytes_;
    Clock::time_point issued_;
};

int64_t total(std::span<const size_t> counts, DataType type) {
    return static_cast<int64_t>(std::accumulate(counts.begin(), counts.end(), size_t{0}) * data_type_size(type));
}

}  // namespace

ProfiledCommunicator::ProfiledCommunicator(Communicator* inner, std::shared_ptr<CommProfile> profile,
                                           std::string label)
    : inner_(inner), profile_(std::move(profile)), label_(std::move(label)) {
    set_timeout(inner_->timeout());
}

ProfiledCommunicator::ProfiledCommunicator(std::unique_ptr<Communicator> owned, std::shared_ptr<CommProfile> profile,
                                           std::string label)
    : ProfiledCommunicator(owned.get(), std::move(profile), std::move(label)) {
    owned_ = std::move(owned);
}

StatusOr<Request> ProfiledCommunicator::wrap(const char* op, int64_t bytes, StatusOr<Request> inner) {
    if (!inner.ok()) return inner.status();
    const Deadline deadline = inner.value().deadline();
    return Request(std::make_unique<TimedRequest>(std::move(inner).value(), profile_, label_ + "." + op, bytes),
                   deadline);
}

StatusOr<Request> ProfiledCommunicator::isend(const void* buf, size_t count, DataType type, int peer, Tag tag) {
    return wrap("send", static_cast<int64_t>(count * data_type_size(type)), inner_->isend(buf, count, type, peer, tag));
}

StatusOr<Request> ProfiledCommunicator::irecv(void* buf, size_t count, DataType type, int peer, Tag tag) {
    return wrap("recv", static_cast<int64_t>(count * data_type_size(type)), inner_->irecv(buf, count, type, peer, tag));
}

StatusOr<Request> ProfiledCommunicator::iallreduce_sum(const float* send, float* recv, size_t count) {
    return wrap("allreduce", static_cast<int64_t>(count * 4), inner_->iallreduce_sum(send, recv, count));
}

StatusOr<Request> ProfiledCommunicator::iallgather(const void* send, void* recv, size_t count, DataType type) {
    return wrap("allgather", static_cast<int64_t>(count * data_type_size(type)),
                inner_->iallgather(send, recv, count, type));
}

StatusOr<Request> ProfiledCommunicator::ireduce_scatter_sum(const float* send, float* recv, size_t recv_count) {
    return wrap("reduce_scatter", static_cast<int64_t>(recv_count * 4 * static_cast<size_t>(size())),
                inner_->ireduce_scatter_sum(send, recv, recv_count));
}

StatusOr<Request> ProfiledCommunicator::ialltoallv(const void* send, std::span<const size_t> send_counts,
                                                   std::span<const size_t> send_displs, void* recv,
                                                   std::span<const size_t> recv_counts,
                                                   std::span<const size_t> recv_displs, DataType type) {
    return wrap("alltoallv", total(send_counts, type),
                inner_->ialltoallv(send, send_counts, send_displs, recv, recv_counts, recv_displs, type));
}

StatusOr<Request> ProfiledCommunicator::ibroadcast(void* buf, size_t count, DataType type, int root) {
    return wrap("broadcast", static_cast<int64_t>(count * data_type_size(type)),
                inner_->ibroadcast(buf, count, type, root));
}

StatusOr<Request> ProfiledCommunicator::ibarrier() { return wrap("barrier", 0, inner_->ibarrier()); }

StatusOr<std::unique_ptr<Communicator>> ProfiledCommunicator::split(int color, int key) {
    DS_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> child, inner_->split(color, key));
    if (!child) return std::unique_ptr<Communicator>();
    return std::unique_ptr<Communicator>(
        std::make_unique<ProfiledCommunicator>(std::move(child), profile_, label_ + ".split"));
}

}  // namespace deepshard::comm
