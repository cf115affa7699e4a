#include "control/session_link.h"

#include "control/connection.h"

namespace deepshard::control::internal {

SessionLink::SessionLink(size_t max_retained_bytes) : max_retained_bytes_(max_retained_bytes) {}

Status SessionLink::send_data(std::string frame) {
    auto shared = std::make_shared<const std::string>(std::move(frame));
    std::lock_guard lock(mu_);
    if (retained_bytes_ + shared->size() > max_retained_bytes_) {
        return resource_exhausted("the peer left " + std::to_string(retained_bytes_) +
                                  " bytes of data frames unacknowledged (limit " +
                                  std::to_string(max_retained_bytes_) + ")");
    }
    ++sent_;
    retained_bytes_ += shared->size();
    retained_.push_back(shared);
    // Sent under the lock: frames reach the connection in numbering order whatever thread sends.
    if (connection_) connection_->send_shared(std::move(shared));
    return ok_status();
}

void SessionLink::on_data_received() {
    std::lock_guard lock(mu_);
    ++received_;
}

uint64_t SessionLink::received() const {
    std::lock_guard lock(mu_);
    return received_;
}

uint64_t SessionLink::sent() const {
    std::lock_guard lock(mu_);
    return sent_;
}

void SessionLink::on_ack(uint64_t peer_received) {
    std::lock_guard lock(mu_);
    // A stale or bogus ack never drops frames the peer may still need.
    while (acked_ < peer_received && acked_ < sent_ && !retained_.empty()) {
        retained_bytes_ -= retained_.front()->size();
        retained_.pop_front();
        ++acked_;
    }
}

Status SessionLink::bind(std::shared_ptr<FramedConnection> connection, uint64_t peer_received) {
    std::lock_guard lock(mu_);
    if (peer_received > sent_ || peer_received < acked_) {
        return protocol_error("the peer says it received " + std::to_string(peer_received) +
                              " data frames; " + std::to_string(sent_) + " were sent and " + std::to_string(acked_) +
                              " acknowledged");
    }
    while (acked_ < peer_received) {
        retained_bytes_ -= retained_.front()->size();
        retained_.pop_front();
        ++acked_;
    }
    connection_ = std::move(connection);
    for (const auto& f : retained_) connection_->send_shared(f);
    return ok_status();
}

void SessionLink::unbind(const FramedConnection* connection) {
    std::lock_guard lock(mu_);
    if (connection_.get() == connection) connection_.reset();
}

std::shared_ptr<FramedConnection> SessionLink::connection() const {
    std::lock_guard lock(mu_);
    return connection_;
}

size_t SessionLink::retained_bytes() const {
    std::lock_guard lock(mu_);
    return retained_bytes_;
}

}  // namespace deepshard::control::internal
