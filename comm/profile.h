// Time accounting for communication: a Communicator decorator that records, per operation kind,
// how many operations ran, how many bytes they moved and how long each took from issue to
// completion. Used by benchmarks to split a step into compute and each kind of communication
// without touching the code that communicates.
//
// The recorded time of an operation is issue -> observed completion, so for the blocking forms it
// is exactly the time the caller was blocked; for a receive it includes waiting for the sender
// (e.g. a pipeline stage waiting for the previous one). Children from split() report into the same
// profile under "<label>.split" unless relabelled.
//
// Thread-safety: like the wrapped communicator; the profile itself is updated under a mutex.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "comm/communicator.h"

namespace deepshard::comm {

struct OpStats {
    int64_t count = 0;
    int64_t bytes = 0;
    double seconds = 0;
};

// Shared accumulator: "label.op" -> totals.
class CommProfile {
public:
    void record(const std::string& key, int64_t bytes, double seconds);
    std::map<std::string, OpStats> snapshot() const;
    // Per-key differences now - before (keys missing in `before` count from zero).
    static std::map<std::string, OpStats> delta(const std::map<std::string, OpStats>& now,
                                                const std::map<std::string, OpStats>& before);

private:
    mutable std::mutex mu_;
    std::map<std::string, OpStats> stats_;
};

class ProfiledCommunicator : public Communicator {
public:
    // `inner` must outlive this; `profile` is shared with children from split().
    ProfiledCommunicator(Communicator* inner, std::shared_ptr<CommProfile> profile, std::string label);
    ProfiledCommunicator(std::unique_ptr<Communicator> owned, std::shared_ptr<CommProfile> profile,
                         std::string label);

    const std::shared_ptr<CommProfile>& profile() const { return profile_; }

    int rank() const override { return inner_->rank(); }
    int size() const override { return inner_->size(); }
    std::string_view backend() const override { return inner_->backend(); }
    MemorySpace memory_space() const override { return inner_->memory_space(); }

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
    StatusOr<std::unique_ptr<Communicator>> split(int color, int key) override;

private:
    StatusOr<Request> wrap(const char* op, int64_t bytes, StatusOr<Request> inner);

    std::unique_ptr<Communicator> owned_;
    Communicator* inner_;
    std::shared_ptr<CommProfile> profile_;
    std::string label_;
};

}  // namespace deepshard::comm
