// The barrier after every rank has loaded its slice of the checkpoint. Ranks finish loading at very
// different times (slice sizes differ per stage, storage differs per host, a cold page cache on
// one node), so the wait cannot be the communicator's fixed deadline: a rank that is done waits as
// long as loading can plausibly take, estimated from the checkpoint's size and the throughput this
// rank itself measured, and still gives up (naming the estimate) when a peer is hung.
#pragma once

#include <chrono>
#include <cstdint>

#include "comm/communicator.h"
#include "common/status.h"
#include "model/checkpoint.h"

namespace deepshard::shard_node {

// How long a rank that loaded `own` may wait for the others. No rank reads more than the whole
// checkpoint (`checkpoint_bytes`); the others read it at about the rate measured here, but a cache
// hit here says little about a cold disk there, so the rate is capped at kPlausibleLoadBytesPerS
// and the estimate taken three times over, plus a fixed allowance for start-up. Never shorter than
// `comm_timeout`.
inline constexpr double kPlausibleLoadBytesPerS = 1e9;
std::chrono::milliseconds post_load_wait(uint64_t checkpoint_bytes, const model::LoadStats& own,
                                         std::chrono::milliseconds comm_timeout);

// Total bytes of the checkpoint's tensors.
uint64_t checkpoint_bytes(const model::Checkpoint& checkpoint);

// Barrier over `world` with the post_load_wait() deadline (world->timeout() as the floor).
Status wait_for_every_rank_loaded(comm::Communicator* world, const model::Checkpoint& checkpoint,
                                  const model::LoadStats& own);

}  // namespace deepshard::shard_node
