// Coordinator side of the control protocol: listens on the control port, accepts one shard-job
// leader at a time, authenticates it (challenge-response over the job's shared secret, auth.h),
// checks its Hello (protocol version, model fingerprint, plan), then carries step batches out and
// step results back.
//
// Threading: one internal I/O thread accepts, reads and writes. Listener callbacks run on that
// thread and must not block (push into a queue and return). send_batch() / shutdown_leader() are
// thread-safe. The destructor sends Shutdown to a registered leader, stops the thread and joins.
//
// Hostile peers: a connection that has not authenticated may send only the handshake's few bytes
// (connection.h ReadPolicy), must finish the whole handshake within `handshake_timeout`, and at
// most `max_pending_connections` such connections exist at once (a new one pushes out the oldest,
// so a flood cannot lock the real job out for long). Nothing is allocated for a peer beyond its
// socket and a fixed-size handshake state until it has proved it holds the secret.
//
// A second leader that connects while one is registered is refused with the reason. When the
// registered leader's link breaks after going quiet (heartbeats lost; an I/O error after silence),
// the session is kept for `resume_grace`: the leader may reconnect and resume it (nothing lost or
// duplicated, see protocol.h); batches sent meanwhile wait. Only when the grace period passes is
// the job lost. A link the leader closed while traffic was flowing here gets the shorter
// `resume_grace_after_close`: a leader process that crashed closes a live link, but so does a leader
// whose own side went quiet (loss in one direction only) and that is about to resume. A Shutdown
// from the leader loses the job at once.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "common/status.h"
#include "control/protocol.h"
#include "control/tls.h"

namespace deepshard::control {

struct ControlServerOptions {
    std::string listen = "127.0.0.1:7000";  // port 0 picks a free port (see port())
    uint64_t model_fingerprint = 0;
    std::optional<std::string> plan_json;   // when set, Hello.plan_json must have the same content
    std::string secret;                     // the job's shared secret (required, auth.h)
    TlsFiles tls;                           // cert + key: the control port speaks TLS only
    std::chrono::milliseconds handshake_timeout{5000};  // accept -> registered
    size_t max_pending_connections = 8;     // connections not yet registered
    std::chrono::milliseconds resume_grace{10000};      // 0: a broken link loses the job at once
    // For a link closed by the leader without a Shutdown while it was not quiet here (at most
    // resume_grace): long enough for a leader on a lossy link to redial (a lost SYN is retried
    // after 1 s), short enough that a crashed job's requests are retried soon.
    std::chrono::milliseconds resume_grace_after_close{3000};
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
    // The registered leader is gone (closed, heartbeats lost past the grace period, protocol
    // error, it sent Shutdown, or it was dropped).
    virtual void on_lost(uint64_t session_id, const Status& reason) = 0;
    // The session's link broke (connected = false, `why` says how) or was resumed (true).
    virtual void on_link(uint64_t /*session_id*/, bool /*connected*/, const Status& /*why*/) {}
};

struct ControlServerStats {
    size_t pending_connections = 0;      // accepted, not (yet) registered
    uint64_t pending_evicted = 0;        // pushed out by newer connections (cap reached)
    uint64_t auth_failures = 0;          // wrong proof
    uint64_t handshake_timeouts = 0;
    uint64_t resumes = 0;                // sessions resumed after a broken link
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
    // Queues a batch for the leader of `session_id` (kept for resending while its link is down);
    // kUnavailable when that session is not the registered one any more.
    Status send_batch(uint64_t session_id, const StepBatch& batch);
    // Sends Shutdown{reason} to the registered leader and drops it (on_lost follows).
    void shutdown_leader(const std::string& reason);
    // The same for one session only (no-op when it is not the registered one).
    void drop_leader(uint64_t session_id, const std::string& reason);
    bool has_leader() const;
    ControlServerStats stats() const;

    struct Impl;

private:
    explicit ControlServer(std::shared_ptr<Impl> impl);
    std::shared_ptr<Impl> impl_;
};

}  // namespace deepshard::control
