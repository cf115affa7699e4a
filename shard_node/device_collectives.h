// The tensor-parallel collectives of a CUDA stage on device memory (model::DeviceCollectives): NCCL over
// the stage's ranks (bootstrapped over the stage's host communicator), enqueued on the engine's compute
// stream so they run inside the decode graph, and a Watchdog that turns a dead or stuck peer into
// ncclCommAbort + an exit the launcher restarts (comm/watchdog.h). Built with NCCL and the CUDA engine.
#pragma once

#include <map>
#include <memory>

#include "comm/communicator.h"
#include "comm/nccl/nccl_comm.h"
#include "comm/watchdog.h"
#include "kernels/cuda/cuda_handles.h"
#include "model/engine.h"

namespace deepshard::shard_node {

class NcclDeviceCollectives final : public model::DeviceCollectives {
public:
    // Collective over `stage` (a host communicator of the stage's ranks). `max_rows` x `vocab_local`
    // bounds the logits an allgather_vocab moves (its staging buffer is allocated here, once).
    static StatusOr<std::unique_ptr<NcclDeviceCollectives>> create(comm::Communicator& stage, int device,
                                                                   int64_t max_rows, int64_t vocab_local);

    Status allreduce_sum(float* data, int64_t n, void* stream) override;
    Status allgather_vocab(const float* local, int64_t rows, int64_t vocab_local, float* full, void* stream) override;
    uint64_t begin_wait(const std::string& what, std::function<bool()> done) override;
    void end_wait(uint64_t token) override;

    comm::NcclComm& nccl() { return *nccl_; }

private:
    NcclDeviceCollectives() = default;
    std::unique_ptr<comm::NcclComm> nccl_;
    kernels::cuda::DeviceBuffer gather_;
    int64_t max_rows_ = 0, vocab_local_ = 0;
    std::unique_ptr<comm::Watchdog> watchdog_;
    std::map<uint64_t, comm::Watchdog::Scope> waits_;
    uint64_t next_ = 1;
};

}  // namespace deepshard::shard_node
