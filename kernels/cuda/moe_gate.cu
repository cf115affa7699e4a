// MoE gate on the GPU: one thread per token runs route_token (device_math.h), the same code the host
// tests check against the CPU routing of kernels::moe_route. The router GEMM itself is matmul().
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/launch_util.h"

namespace deepshard::kernels::cuda {

namespace {

__global__ void moe_gate_kernel(const float* logits, int64_t T, int64_t ld, const float* bias, RouteParams p,
                                int32_t* experts, float* weights) {
    for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < T;
         t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        int32_t e[kMaxRouteTopK];
        float w[kMaxRouteTopK];
        route_token(p, logits + t * ld, bias, e, w);
        for (int32_t k = 0; k < p.top_k; ++k) {
            experts[t * p.top_k + k] = e[k];
            weights[t * p.top_k + k] = w[k];
        }
    }
}

}  // namespace

Status moe_gate(const float* logits, int64_t T, int64_t ld, const float* bias, const RouteParams& params,
                int32_t* experts, float* weights, cudaStream_t stream) {
    DS_RETURN_IF_ERROR(validate_route_params(params));
    if (T < 0 || ld < params.num_experts || (T > 0 && (logits == nullptr || experts == nullptr || weights == nullptr))) {
        return internal::bad_arg("moe_gate", "need T >= 0, ld >= num_experts and non-null logits/experts/weights");
    }
    if (T == 0) return ok_status();
    // Small blocks: a token's routing is serial work, so spread tokens over many SMs.
    constexpr int kThreads = 64;
    moe_gate_kernel<<<internal::grid_for(T, kThreads), kThreads, 0, stream>>>(logits, T, ld, bias, params, experts,
                                                                              weights);
    DS_CUDA_RETURN_IF_LAUNCH_ERROR("moe_gate_kernel");
    return ok_status();
}

}  // namespace deepshard::kernels::cuda
