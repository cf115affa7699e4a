// CublasLtHandle, device_count, launch checks and the cuBLAS error -> Status conversion (CUDA's own: common/cuda_status.cc). Plain C++ (host compiler): only the
// runtime and cuBLASLt APIs are used here, so nvcc time stays with the kernels.
#include "kernels/cuda/cuda_handles.h"

#include <utility>

#include "common/logging.h"
#include "kernels/cuda/cuda_status.h"

namespace deepshard::kernels::cuda {

Status cublas_error(cublasStatus_t st, const char* expr, const char* file, int line) {
    return Status(StatusCode::kCuda, std::string(expr) + " failed: " + cublasLtGetStatusName(st) + ": " +
                                         cublasLtGetStatusString(st) + " (" + file + ":" + std::to_string(line) + ")");
}

int device_count(std::string* why) {
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
        if (why != nullptr) {
            *why = std::string("cudaGetDeviceCount failed: ") + cudaGetErrorName(err) + ": " + cudaGetErrorString(err);
        }
        cudaGetLastError();  // not sticky; clear it so later calls do not see it
        return 0;
    }
    if (n == 0 && why != nullptr) {
        *why = "cudaGetDeviceCount returned 0 devices";
    }
    return n;
}

Status check_launch(const char* what, const char* file, int line) {
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) {
        return cuda_error(err, what, file, line);
    }
    return ok_status();
}

// ---- CublasLtHandle ----

StatusOr<CublasLtHandle> CublasLtHandle::create(size_t workspace_bytes) {
    CublasLtHandle h;
    DS_CUBLAS_RETURN_IF_ERROR(cublasLtCreate(&h.handle_));
    DS_RETURN_IF_ERROR(h.workspace_.reserve(workspace_bytes));
    return h;
}

CublasLtHandle::CublasLtHandle(CublasLtHandle&& other) noexcept
    : handle_(std::exchange(other.handle_, nullptr)), workspace_(std::move(other.workspace_)) {}

CublasLtHandle& CublasLtHandle::operator=(CublasLtHandle&& other) noexcept {
    if (this != &other) {
        reset();
        handle_ = std::exchange(other.handle_, nullptr);
        workspace_ = std::move(other.workspace_);
    }
    return *this;
}

CublasLtHandle::~CublasLtHandle() {
    reset();
}

void CublasLtHandle::reset() noexcept {
    if (handle_ != nullptr) {
        cublasStatus_t st = cublasLtDestroy(handle_);
        if (st != CUBLAS_STATUS_SUCCESS) {
            spdlog::warn("cuda: cublasLtDestroy failed: {}", cublasLtGetStatusString(st));
        }
    }
    handle_ = nullptr;
    workspace_ = DeviceBuffer();
}

}  // namespace deepshard::kernels::cuda
