// Shard side of the control protocol: the shard job's leader (rank 0) authenticates with the
// coordinator (challenge-response over the job's shared secret, both ways: it also checks that the
// coordinator holds the secret), registers, then pulls step batches and pushes step results.
//
// Threading: an internal I/O thread owns the socket; it sends heartbeats every DS_HEARTBEAT_MS and
// watches the coordinator's (silence for 3 periods = link lost). next_batch() is for one reader
// thread, send_result() for one writer thread (they may be different threads); both are safe to call
// concurrently with each other. The destructor tells the coordinator we leave, closes the
// connection and joins the thread.
//
// A broken link is not the end: the client reconnects and resumes the session for as long as the
// coordinator keeps it (HelloAck.resume_grace_ms). Meanwhile next_batch() simply waits and results
// are kept; nothing is lost or duplicated (protocol.h, "Resume").
//
// Errors: kUnavailable — the coordinator is gone (connection closed or heartbeats lost, and no
// resume within the grace period; protocol error from it); kCancelled — the coordinator sent
// Shutdown{reason} (the reason is the message); kDeadlineExceeded — nothing arrived in time (the
// connection is still fine).
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "common/status.h"
#include "control/protocol.h"
#include "control/tls.h"

namespace deepshard::control {

struct LeaderOptions {
    std::string coordinator;                         // HOST:PORT of the control port
    std::string secret;                              // the job's shared secret (auth.h)
    TlsFiles tls;                                    // tls.client / tls.ca: dial with TLS
    std::chrono::milliseconds connect_timeout{30000};
};

class LeaderClient {
public:
    // Connects (retrying refused connections until the deadline, so the job may start before the
    // coordinator listens), authenticates, sends `hello` and waits for HelloAck. A Refuse (wrong
    // secret, fingerprint, plan, another job registered) becomes kInvalidArgument carrying the
    // coordinator's reason; a coordinator that cannot prove the secret is kInvalidArgument; no
    // answer in time is kDeadlineExceeded.
    static StatusOr<std::unique_ptr<LeaderClient>> connect(const LeaderOptions& options, const Hello& hello);
    ~LeaderClient();
    LeaderClient(const LeaderClient&) = delete;
    LeaderClient& operator=(const LeaderClient&) = delete;

    // The next step batch; waits at most `deadline` (0 = just poll).
    StatusOr<StepBatch> next_batch(std::chrono::milliseconds deadline);
    // Queues a result for sending (does not wait for the bytes to leave; kept while the link is
    // down). kUnavailable when the coordinator is lost.
    Status send_result(const StepResult& result);
    // Tells the coordinator we are leaving (Shutdown{reason}), flushes and closes. Idempotent.
    void shutdown(const std::string& reason);

    uint64_t session_id() const;
    // OK while the session lives (also while it is reconnecting); otherwise why not.
    Status status() const;
    // Times the session was resumed after a broken link.
    uint64_t resumes() const;

    struct Impl;

private:
    explicit LeaderClient(std::shared_ptr<Impl> impl);
    std::shared_ptr<Impl> impl_;
};

}  // namespace deepshard::control
