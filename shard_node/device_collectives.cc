// NCCL device collectives of a CUDA stage (see device_collectives.h).
#include "shard_node/device_collectives.h"

#include <cuda_runtime_api.h>

#include "kernels/cuda/cuda_status.h"

namespace deepshard::shard_node {

StatusOr<std::unique_ptr<NcclDeviceCollectives>> NcclDeviceCollectives::create(comm::Communicator& stage, int device,
                                                                                int64_t max_rows,
                                                                                int64_t vocab_local) {
    DS_RETURN_IF_ERROR(stage.require_memory(comm::MemorySpace::kHost, "the NCCL bootstrap"));
    std::unique_ptr<NcclDeviceCollectives> d(new NcclDeviceCollectives());
    DS_ASSIGN_OR_RETURN(d->nccl_, comm::NcclComm::create(stage, device, "stage-tp"));
    d->max_rows_ = max_rows;
    d->vocab_local_ = vocab_local;
    DS_CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
    DS_ASSIGN_OR_RETURN(d->gather_, kernels::cuda::DeviceBuffer::create(
                                        static_cast<size_t>(stage.size() * max_rows * vocab_local) * sizeof(float)));
    comm::Watchdog::Options o;
    o.deadline = stage.timeout();
    o.name = "cuda stage watchdog (rank " + std::to_string(stage.rank()) + " of the stage)";
    comm::NcclComm* nccl = d->nccl_.get();
    o.abort = [nccl] { nccl->abort(); };
    d->watchdog_ = std::make_unique<comm::Watchdog>(std::move(o));
    return d;
}

Status NcclDeviceCollectives::allreduce_sum(float* data, int64_t n, void* stream) {
    return nccl_->enqueue_allreduce_sum(data, static_cast<size_t>(n), static_cast<cudaStream_t>(stream));
}

Status NcclDeviceCollectives::allgather_vocab(const float* local, int64_t rows, int64_t vocab_local, float* full,
                                              void* stream) {
    if (rows > max_rows_ || vocab_local != vocab_local_) {
        return invalid_argument("device vocab allgather of " + std::to_string(rows) + " x " +
                                std::to_string(vocab_local) + " exceeds its buffer of " + std::to_string(max_rows_) +
                                " x " + std::to_string(vocab_local_));
    }
    auto s = static_cast<cudaStream_t>(stream);
    float* g = gather_.as<float>();
    DS_RETURN_IF_ERROR(nccl_->enqueue_allgather(local, g, static_cast<size_t>(rows * vocab_local), comm::DataType::kFloat32, s));
    // [rank][rows][vocab_local] -> [rows][rank * vocab_local + c]
    const int S = nccl_->size();
    for (int r = 0; r < S; ++r) {
        DS_CUDA_RETURN_IF_ERROR(cudaMemcpy2DAsync(full + r * vocab_local, static_cast<size_t>(S * vocab_local) * 4,
                                                  g + r * rows * vocab_local, static_cast<size_t>(vocab_local) * 4,
                                                  static_cast<size_t>(vocab_local) * 4, static_cast<size_t>(rows),
                                                  cudaMemcpyDeviceToDevice, s));
    }
    return ok_status();
}

uint64_t NcclDeviceCollectives::begin_wait(const std::string& what, std::function<bool()> done) {
    const uint64_t t = next_++;
    waits_.emplace(t, watchdog_->watch(what, std::move(done)));
    return t;
}

void NcclDeviceCollectives::end_wait(uint64_t token) { waits_.erase(token); }

}  // namespace deepshard::shard_node
