// Coordinator side of the control protocol: listens on the control port, accepts one shard-job
// leader at a time, checks its Hello (protocol version, model fingerprint, plan), then carries step
// batches out and step results back.
//
// Threading: one internal I/O thread accepts, reads and writes. Listener callbacks run on that
// thread and must not block (push into a queue and return). send_batch() / shutdown_leader() are
// thread-safe. The destructor sends Shutdown to a registered leader, stops the thread and joins.
//
// A second leader that connects while one is registered is refused with the reason; a leader that
// does not send Hello within the handshake timeout is dropped.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "control/protocol.h"
#include "common/status.h"

namespace deepshard::control {

struct ControlServerOptions {
    std::string listen = "127.0.0.1:7000";  // port 0 picks a free port (see port())
    uint64_t model_fingerprint = 0;
    std::optional<std::string> plan_json;   // when set, Hello.plan_json must have the same content
    std::chrono::milliseconds handshake_timeout{10000};
};

struct LeaderInfo {
    uint64_t session_id = 0;
    Hello hello;
    std::string peer;  // remote address
};

class ControlListener {
public:
    virtual ~ControlListener() = default;
    virtual void on_registered(const LeaderInfo& leader) = 0;
    virtual void on_result(uint64_t session_id, StepResult result) = 0;
    // The registered leader is gone (closed, heartbeats lost, protocol error, or it sent Shutdown).
    virtual void on_lost(uint64_t session_id, const Status& reason) = 0;
};

// Content comparison of two plans: equal JSON values (whitespace and key order do not matter);
// falls back to byte comparison when either is not JSON. Returns "" or a reason for the mismatch.
std::string compare_plans(const std::string& expected, const std::string& got);

class ControlServer {
public:
    static StatusOr<std::unique_ptr<ControlServer>> start(const ControlServerOptions& options,
                                                          ControlListener* listener);
    ~ControlServer();
    ControlServer(const ControlServer&) = delete;
    ControlServer& operator=(const ControlServer&) = delete;

    uint16_t port() const;
    // Queues a batch for the leader of `session_id`; kUnavailable when that session is not the
    // registered one any more.
    Status send_batch(uint64_t session_id, const StepBatch& batch);
    // Sends Shutdown{reason} to the registered leader and drops it.
    void shutdown_leader(const std::string& reason);
    bool has_leader() const;

    struct Impl;

private:
    explicit ControlServer(std::shared_ptr<Impl> impl);
    std::shared_ptr<Impl> impl_;
};

}  // namespace deepshard::control
