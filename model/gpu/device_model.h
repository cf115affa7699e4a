// A rank's weights on the device (CUDA engine): one arena holding every held tensor (dense rows, FP8
// kept FP8 with its scale rows), the small fp32 vectors (norms, router bias, RoPE frequencies), the
// per-layer expert tables the grouped GEMMs index, and, where the FP8 cuBLASLt path is in use, each
// eligible weight's scales repacked in the layout its self-test chose. Device WeightViews mirror the
// host LayerWeights one for one.
#pragma once

#include <memory>
#include <optional>
#include <unordered_map>
#include <vector>

#include "kernels/cuda/cublaslt_fp8.h"
#include "kernels/cuda/cuda_handles.h"
#include "kernels/cuda/device_math.h"
#include "model/checkpoint.h"
#include "model/shard_weights.h"

namespace deepshard::model::gpu {

struct DevMlp {
    kernels::WeightView w1, w3, w2;
    int64_t inter = 0;
    bool held() const { return w1.valid(); }
};

struct DevLayer {
    int64_t index = 0;
    bool moe = false;
    const float* attn_norm = nullptr;
    const float* ffn_norm = nullptr;
    const float* q_norm = nullptr;
    const float* kv_norm = nullptr;
    const float* bias = nullptr;  // router correction bias, or nullptr
    kernels::WeightView wq_a, wq_b, wq, wkv_a, wkv_b, wo, gate;
    DevMlp dense, shared;
    bool has_shared = false;
    // Routed experts for the grouped GEMMs: device arrays of E DevWeight (unheld experts: rows 0).
    const kernels::cuda::DevWeight* exp_w1 = nullptr;
    const kernels::cuda::DevWeight* exp_w3 = nullptr;
    const kernels::cuda::DevWeight* exp_w2 = nullptr;
    const uint8_t* exp_held = nullptr;  // [E] 1 for experts held here
    kernels::cuda::DevDType exp_dtype = kernels::cuda::DevDType::kF32;
    bool exp_vec = false;  // every held expert passes weight_vec_ok
    int64_t moe_inter = 0;
    std::vector<DevMlp> experts;  // host copies of the views (EP: per-expert GEMMs)
};

class DeviceModel {
public:
    // Uploads `w` (device `device` must be current). `lt`: the FP8 cuBLASLt layout, when that path is in
    // use. Logs progress and GB/s; `stats` receives bytes and time.
    static StatusOr<std::unique_ptr<DeviceModel>> upload(const ShardWeights& w,
                                                         const std::optional<kernels::cuda::Fp8GemmConfig>& lt,
                                                         LoadStats* stats);

    const std::vector<DevLayer>& layers() const { return layers_; }
    const kernels::WeightView& embed() const { return embed_; }
    const kernels::WeightView& head() const { return head_; }
    const float* final_norm() const { return final_norm_; }
    const float* rope_inv_freq() const { return inv_freq_; }
    uint64_t arena_bytes() const { return arena_.bytes(); }
    // The repacked FP8 scales of a device view (by its data pointer), or nullptr.
    const float* lt_scales(const kernels::WeightView& v) const;
    // How many weights go through the FP8 x FP8 cuBLASLt GEMM (their activations are rounded to FP8).
    int64_t lt_weight_count() const { return static_cast<int64_t>(lt_scales_.size()); }

private:
    DeviceModel() = default;
    kernels::cuda::DeviceBuffer arena_;
    std::vector<DevLayer> layers_;
    kernels::WeightView embed_, head_;
    const float* final_norm_ = nullptr;
    const float* inv_freq_ = nullptr;
    std::unordered_map<const void*, const float*> lt_scales_;
};

}  // namespace deepshard::model::gpu
