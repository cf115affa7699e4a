// Service mode of rank 0: register with the coordinator (versioned Hello with the model
// fingerprint, plan and capacity), then execute the step batches it sends, keeping up to one batch
// per pipeline stage in flight, and return the sampled tokens. Returns when the coordinator shuts
// the job down (OK), when *stop becomes true (OK; the coordinator is told that the job leaves,
// after the steps in flight were answered) or when the coordinator is lost (kUnavailable).
#pragma once

#include <atomic>
#include <chrono>
#include <string>

#include "common/env.h"
#include "common/status.h"
#include "control/tls.h"
#include "model/checkpoint.h"
#include "shard_node/pipeline.h"

namespace deepshard::shard_node {

struct LeaderConfig {
    std::string coordinator;  // HOST:PORT of the control port
    std::string plan_json;
    std::string secret;       // the job's control secret (control/auth.h)
    control::TlsFiles tls;    // dial with TLS (tls.client) and verify with tls.ca
    std::chrono::milliseconds connect_timeout = comm_timeout();
    const std::atomic<bool>* stop = nullptr;  // e.g. set on SIGTERM
    std::atomic<bool>* said_goodbye = nullptr;  // set once the coordinator was told the job leaves
};

Status run_leader(const LeaderConfig& config, const model::Checkpoint& checkpoint, Pipeline* pipeline);

}  // namespace deepshard::shard_node
