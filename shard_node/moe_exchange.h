// MoE token exchange for data-parallel attention + expert parallelism inside a stage: an adapter
// from model::MoeExchange to comm/ep's dispatch and combine over the stage communicator.
#pragma once

#include <memory>
#include <vector>

#include "comm/communicator.h"
#include "model/engine.h"

namespace deepshard::shard_node {

// `expert_owner[e]` is the stage-local rank that holds expert e.
std::unique_ptr<model::MoeExchange> make_moe_exchange(comm::Communicator* stage, std::vector<int> expert_owner);

}  // namespace deepshard::shard_node
