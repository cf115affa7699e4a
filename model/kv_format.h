// How the engines store the latent KV cache (MLA, absorbed form: per token and layer kv_lora_rank
// latent values + qk_rope_head_dim rope-key values). One place for the fact, so that the planner's
// KV budget (topology/planner.cc) and the blocks an engine carves from it (model/cpu_engine.cc,
// model/cuda_engine.cc) agree: what `deepshard plan` promises is what a rank registers.
// Header-only, config-level (no kernels): the planner and the coordinator may include it.
#pragma once

#include <cstdint>

#include "model/config.h"

namespace deepshard::model {

enum class KvStorage { kF32, kBf16 };

// The CPU engine's cache is float32 under both numerics (it is the exact reference; fast numerics
// change only the weight matmuls). The CUDA engine keeps BF16 under fast numerics and float32 under
// exact (cuda_engine.cc: kv_dtype_).
inline KvStorage kv_storage_for(bool cuda, bool exact) {
    return cuda && !exact ? KvStorage::kBf16 : KvStorage::kF32;
}

inline int64_t kv_value_bytes(KvStorage s) { return s == KvStorage::kBf16 ? 2 : 4; }
inline const char* kv_storage_name(KvStorage s) { return s == KvStorage::kBf16 ? "bf16" : "float32"; }

// Bytes of one token's cache entry in one layer.
inline int64_t kv_bytes_per_token_layer(const ModelConfig& c, KvStorage s) {
    return (c.kv_lora_rank + c.qk_rope_head_dim) * kv_value_bytes(s);
}

}  // namespace deepshard::model
