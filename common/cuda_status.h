// CUDA runtime return codes -> Status (kCuda), recording the call text, file and line, as NCCLCHECK's
// "->" trace does. The one conversion used by kernels/cuda (which adds cuBLAS on top,
// kernels/cuda/cuda_status.h) and comm/nccl: both may depend on common/, not on each other.
// Host-only header (plain C++; no nvcc needed); built only where CUDA was found (common_cuda).
#pragma once

#include <cuda_runtime_api.h>

#include "common/status.h"

namespace deepshard {

// kCuda "expr failed: cudaErrorX: <string> (file:line)".
Status cuda_error(cudaError_t err, const char* expr, const char* file, int line);

}  // namespace deepshard

#define DS_CUDA_RETURN_IF_ERROR(expr)                                                   \
    do {                                                                                \
        cudaError_t _ds_cuda_err = (expr);                                              \
        if (_ds_cuda_err != cudaSuccess) {                                              \
            return ::deepshard::cuda_error(_ds_cuda_err, #expr, __FILE__, __LINE__);    \
        }                                                                               \
    } while (0)
