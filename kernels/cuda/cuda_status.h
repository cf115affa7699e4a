// CUDA / cuBLAS(Lt) return codes -> Status (kCuda), recording the call text, file and line, as
// NCCLCHECK's "->" trace does. The CUDA runtime part (cuda_error, DS_CUDA_RETURN_IF_ERROR) is
// common/cuda_status.h, shared with comm/nccl; this header adds cuBLAS(Lt) and launch checks.
// Host-only header (plain C++; no nvcc needed).
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <string>

#include "common/cuda_status.h"
#include "common/status.h"

namespace deepshard::kernels::cuda {

using ::deepshard::cuda_error;  // kCuda "expr failed: cudaErrorX: <string> (file:line)"
// kCuda "expr failed: CUBLAS_STATUS_X: <string> (file:line)".
Status cublas_error(cublasStatus_t st, const char* expr, const char* file, int line);

// Number of visible CUDA devices; 0 when the driver/runtime reports none or fails (the error is
// then in *why when given). Never aborts, so CPU-only machines can call it.
int device_count(std::string* why = nullptr);

// The last launch error (cudaGetLastError, which also clears it) as a Status naming `what`.
Status check_launch(const char* what, const char* file, int line);

}  // namespace deepshard::kernels::cuda

#define DS_CUBLAS_RETURN_IF_ERROR(expr)                                                            \
    do {                                                                                           \
        cublasStatus_t _ds_cublas_st = (expr);                                                     \
        if (_ds_cublas_st != CUBLAS_STATUS_SUCCESS) {                                              \
            return ::deepshard::kernels::cuda::cublas_error(_ds_cublas_st, #expr, __FILE__, __LINE__); \
        }                                                                                          \
    } while (0)

// After a <<<...>>> launch: returns the launch error (bad configuration, no kernel image for this
// GPU, ...) naming the kernel.
#define DS_CUDA_RETURN_IF_LAUNCH_ERROR(what)                                                     \
    do {                                                                                         \
        ::deepshard::Status _ds_launch = ::deepshard::kernels::cuda::check_launch(what, __FILE__, __LINE__); \
        if (!_ds_launch.ok()) {                                                                  \
            return _ds_launch;                                                                   \
        }                                                                                        \
    } while (0)
