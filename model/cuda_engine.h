// The CUDA engine (issue 10; model/cuda_engine.cc + model/gpu/): the DeepSeek-V3 forward pass on one
// GPU over a ShardWeights, mirroring the CPU engine (model/cpu_engine.cc) op for op with the CUDA twins
// of kernels/ (kernels/cuda/). Summary of the design (details at the definitions):
//  - weights: uploaded once into one device arena straight from the checkpoint's byte ranges (pread into
//    pinned staging, async copies overlapping the reads; model/gpu/upload.h); FP8 stays FP8;
//  - KV: paged latent cache on the device (BF16, or fp32 in exact precision), block bookkeeping by the
//    shared KvBlockManager (model/kv_blocks.h), plus one scratch block for the padding of graph batches;
//  - a fixed workspace sized at start (model/gpu/plan.h); per step only async H2D/D2H copies through
//    pinned buffers and one synchronization for the outputs;
//  - decode steps replayed from CUDA graphs captured per batch-size bucket;
//  - GEMMs: exact (fp32 activations, weights dequantized in the kernel) or fast (Hopper: FP8 x FP8
//    cuBLASLt with DeepSeek's 1x128 / 128x128 block scales; A100: BF16 tensor cores with in-kernel
//    dequantization; decode batches: 16-byte-load GEMV on the FP8 weights);
//  - sampling on the device for LogitsMode::kSample chunks (the CPU sampler's decisions).
// This header is CUDA-free: model/engine.cc registers the engine through it.
#pragma once

#include <memory>

#include "model/engine.h"

namespace deepshard::model {

// The CUDA engine over `weights` on options.device_ordinal. kUnavailable with "no CUDA device" (and the
// runtime's reason) on a machine without a usable GPU.
StatusOr<std::unique_ptr<Engine>> create_cuda_engine(std::shared_ptr<const ShardWeights> weights,
                                                     const EngineOptions& options);

}  // namespace deepshard::model
