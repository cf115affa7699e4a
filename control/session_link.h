// The part of a registered session that survives a broken TCP link (protocol.h, "Resume"): data
// frames (StepBatch one way, StepResult the other) are numbered, kept until the peer acknowledges
// them, and resent on the next connection from exactly where the peer stopped receiving. Used by
// both ends; thread-safe.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>

#include "common/status.h"

namespace deepshard::control::internal {

class FramedConnection;

class SessionLink {
public:
    // `max_retained_bytes` bounds what may wait unacknowledged (the peer stopped acknowledging).
    explicit SessionLink(size_t max_retained_bytes);

    // Numbers and keeps a data frame, and sends it on the bound connection (if any).
    // kResourceExhausted once more than max_retained_bytes are unacknowledged.
    Status send_data(std::string frame);
    // One data frame arrived from the peer.
    void on_data_received();
    uint64_t received() const;
    uint64_t sent() const;
    // The peer has received `peer_received` data frames: they need not be kept any more.
    void on_ack(uint64_t peer_received);
    // Binds a (new) connection: drops what the peer already has and resends the rest, in order.
    // kProtocol when `peer_received` is impossible (more than was sent, or less than it acknowledged).
    Status bind(std::shared_ptr<FramedConnection> connection, uint64_t peer_received);
    // Forgets `connection` if it is the bound one.
    void unbind(const FramedConnection* connection);
    std::shared_ptr<FramedConnection> connection() const;
    size_t retained_bytes() const;

private:
    const size_t max_retained_bytes_;
    mutable std::mutex mu_;
    std::shared_ptr<FramedConnection> connection_;
    std::deque<std::shared_ptr<const std::string>> retained_;  // frames acked_+1 .. sent_
    uint64_t sent_ = 0;
    uint64_t acked_ = 0;
    uint64_t received_ = 0;
    size_t retained_bytes_ = 0;
};

}  // namespace deepshard::control::internal
