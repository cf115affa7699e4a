// Executes one step batch's KV operations on one rank's pool: releases of finished sequences and
// the prefix-cache / preemption operations (control protocol KvOps) that the coordinator decided
// with its mirror of the pool (coordinator/kv_pool.h). The order is the protocol's: publish,
// release, preempt, evict, start. Only operations of `domain` (this rank's KV domain) touch the
// pool. Shared by the pipeline and by tests that replay batches against a real KvBlockManager.
#pragma once

#include <cstdint>
#include <functional>

#include "control/protocol.h"
#include "model/kv_blocks.h"

namespace deepshard::shard_node {

// `drop_kv` releases a sequence's cache through its engine (Engine::release). Returns kProtocol
// naming the operation when the pool refuses one (the coordinator's view disagrees with the job's);
// the pool may then be partly changed, and the job must not continue.
Status apply_kv_ops(const deepshard::control::StepBatch& batch, uint32_t domain, uint32_t domains,
                    model::KvBlockManager& blocks, const std::function<void(uint64_t)>& drop_kv);

}  // namespace deepshard::shard_node
