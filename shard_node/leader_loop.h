// Service mode of rank 0: register with the coordinator (versioned Hello with the model
// fingerprint, plan and capacity), then execute the step batches it sends, keeping up to one batch
// per pipeline stage in flight, and return the sampled tokens. Returns when the coordinator shuts
// the job down (OK) or is lost (kUnavailable).
#pragma once

#include <chrono>
#include <string>

#include "common/env.h"
#include "common/status.h"
#include "model/checkpoint.h"
#include "shard_node/pipeline.h"

namespace deepshard::shard_node {

struct LeaderConfig {
    std::string coordinator;  // HOST:PORT of the control port
    std::string plan_json;
    std::chrono::milliseconds connect_timeout = comm_timeout();
};

Status run_leader(const LeaderConfig& config, const model::Checkpoint& checkpoint, Pipeline* pipeline);

}  // namespace deepshard::shard_node
