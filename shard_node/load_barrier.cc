#include "shard_node/load_barrier.h"

#include <algorithm>

#include "common/logging.h"

namespace deepshard::shard_node {

using std::chrono::milliseconds;

std::chrono::milliseconds post_load_wait(uint64_t checkpoint_bytes, const model::LoadStats& own,
                                         milliseconds comm_timeout) {
    // A rank that read little (or nothing) measured mostly overhead: fall back to the plausible rate.
    double rate = own.bytes >= (64u << 20) && own.seconds > 0 ? own.bytes / own.seconds : kPlausibleLoadBytesPerS;
    rate = std::min(rate, kPlausibleLoadBytesPerS);
    const double estimate_s = 3.0 * static_cast<double>(checkpoint_bytes) / rate + 30.0;
    return std::max(comm_timeout, milliseconds(static_cast<int64_t>(estimate_s * 1000.0)));
}

uint64_t checkpoint_bytes(const model::Checkpoint& checkpoint) {
    uint64_t total = 0;
    for (const auto& t : checkpoint.tensors()) total += t.nbytes;
    return total;
}

Status wait_for_every_rank_loaded(comm::Communicator* world, const model::Checkpoint& checkpoint,
                                  const model::LoadStats& own) {
    const uint64_t total = checkpoint_bytes(checkpoint);
    const milliseconds wait = post_load_wait(total, own, world->timeout());
    spdlog::debug("rank {}: waiting up to {} s for every rank to load (checkpoint {:.2f} GB, read here at {:.2f} GB/s)",
                  world->rank(), wait.count() / 1000, total / 1e9, own.gb_per_s());
    DS_ASSIGN_OR_RETURN(comm::Request barrier, world->ibarrier());
    Status s = barrier.wait(comm::Clock::now() + wait);
    if (!s.ok()) {
        return s.with_context("waiting up to " + std::to_string(wait.count() / 1000) +
                              " s (from the checkpoint's " + std::to_string(total >> 20) +
                              " MiB and this rank's load rate) for every rank to load its shard");
    }
    return ok_status();
}

}  // namespace deepshard::shard_node
