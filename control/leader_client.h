// Shard side of the control protocol: the shard job's leader (rank 0) registers with the
// coordinator, then pulls step batches and pushes step results.
//
// Threading: an internal I/O thread owns the socket; it sends heartbeats every DS_HEARTBEAT_MS and
// watches the coordinator's (silence for 3 periods = lost). next_batch() is for one reader thread,
// send_result() for one writer thread (they may be different threads); both are safe to call
// concurrently with each other. The destructor closes the connection and joins the thread.
//
// Errors: kUnavailable — the coordinator is gone (connection closed, heartbeats lost, protocol
// error from it); kCancelled — the coordinator sent Shutdown{reason} (the reason is the message);
// kDeadlineExceeded — nothing arrived in time (the connection is still fine).
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "control/protocol.h"
#include "common/status.h"

namespace deepshard::control {

class LeaderClient {
public:
    // Connects to `host_port` (retrying refused connections until the deadline, so the job may
    // start before the coordinator listens), sends `hello` and waits for HelloAck. A Refuse becomes
    // kInvalidArgument carrying the coordinator's reason; no answer in time is kDeadlineExceeded.
    static StatusOr<std::unique_ptr<LeaderClient>> connect(const std::string& host_port, const Hello& hello,
                                                           std::chrono::milliseconds deadline);
    ~LeaderClient();
    LeaderClient(const LeaderClient&) = delete;
    LeaderClient& operator=(const LeaderClient&) = delete;

    // The next step batch; waits at most `deadline` (0 = just poll).
    StatusOr<StepBatch> next_batch(std::chrono::milliseconds deadline);
    // Queues a result for sending (does not wait for the bytes to leave). kUnavailable when lost.
    Status send_result(const StepResult& result);
    // Tells the coordinator we are leaving (Shutdown{reason}), flushes and closes. Idempotent.
    void shutdown(const std::string& reason);

    uint64_t session_id() const;
    // OK while connected; otherwise why not.
    Status status() const;

    struct Impl;

private:
    explicit LeaderClient(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace deepshard::control
