// Move-only RAII wrappers of CUDA handles: DeviceBuffer, CudaStream and CudaEvent (common/cuda_handles.h,
// shared with comm/nccl) and CublasLtHandle (with its matmul workspace). Fallible construction is `static StatusOr<T> create(...)`;
// destructors are noexcept and log (never throw, never abort) when the CUDA call fails.
//
// Device: every handle belongs to the device that was current when it was created; the caller keeps
// that device current when using it (cudaSetDevice). Thread-safety: a handle is used by one thread at
// a time, as the underlying CUDA object requires.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "common/cuda_handles.h"
#include "common/status.h"

namespace deepshard::kernels::cuda {

using ::deepshard::cuda::CudaEvent;
using ::deepshard::cuda::CudaStream;
using ::deepshard::cuda::DeviceBuffer;

// cuBLASLt handle plus the workspace its matmuls may use (default 32 MiB, what cuBLAS recommends
// for Hopper). One handle per thread / stream at a time: the workspace is shared by its matmuls,
// so two matmuls on different streams must not run concurrently with the same handle.
class CublasLtHandle {
public:
    static constexpr size_t kDefaultWorkspace = size_t{32} << 20;
    CublasLtHandle() = default;
    static StatusOr<CublasLtHandle> create(size_t workspace_bytes = kDefaultWorkspace);
    CublasLtHandle(CublasLtHandle&& other) noexcept;
    CublasLtHandle& operator=(CublasLtHandle&& other) noexcept;
    CublasLtHandle(const CublasLtHandle&) = delete;
    CublasLtHandle& operator=(const CublasLtHandle&) = delete;
    ~CublasLtHandle();

    cublasLtHandle_t get() const { return handle_; }
    void* workspace() const { return workspace_.get(); }
    size_t workspace_bytes() const { return workspace_.bytes(); }

private:
    void reset() noexcept;
    cublasLtHandle_t handle_ = nullptr;
    DeviceBuffer workspace_;
};

}  // namespace deepshard::kernels::cuda
