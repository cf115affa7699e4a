// RAII handles and the cuBLAS error -> Status conversion (CUDA's own: common/cuda_status.cc). Plain C++ (host compiler): only the
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

// ---- DeviceBuffer ----

StatusOr<DeviceBuffer> DeviceBuffer::create(size_t bytes) {
    DeviceBuffer b;
    DS_RETURN_IF_ERROR(b.reserve(bytes));
    return b;
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : ptr_(std::exchange(other.ptr_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
        reset();
        ptr_ = std::exchange(other.ptr_, nullptr);
        bytes_ = std::exchange(other.bytes_, 0);
    }
    return *this;
}

DeviceBuffer::~DeviceBuffer() {
    reset();
}

void DeviceBuffer::reset() noexcept {
    if (ptr_ != nullptr) {
        cudaError_t err = cudaFree(ptr_);
        if (err != cudaSuccess) {
            spdlog::warn("cuda: cudaFree({} bytes) failed: {}", bytes_, cudaGetErrorString(err));
        }
    }
    ptr_ = nullptr;
    bytes_ = 0;
}

Status DeviceBuffer::reserve(size_t bytes) {
    if (bytes <= bytes_ && ptr_ != nullptr) {
        return ok_status();
    }
    reset();
    if (bytes == 0) {
        return ok_status();
    }
    void* p = nullptr;
    cudaError_t err = cudaMalloc(&p, bytes);
    if (err != cudaSuccess) {
        return cuda_error(err, "cudaMalloc", __FILE__, __LINE__)
            .with_context("DeviceBuffer of " + std::to_string(bytes) + " bytes");
    }
    ptr_ = p;
    bytes_ = bytes;
    return ok_status();
}

Status DeviceBuffer::upload(const void* host, size_t bytes) {
    if (bytes > bytes_) {
        return invalid_argument("DeviceBuffer::upload: " + std::to_string(bytes) + " bytes into a buffer of " +
                                std::to_string(bytes_));
    }
    if (bytes == 0) {
        return ok_status();
    }
    DS_CUDA_RETURN_IF_ERROR(cudaMemcpy(ptr_, host, bytes, cudaMemcpyHostToDevice));
    return ok_status();
}

Status DeviceBuffer::download(void* host, size_t bytes) const {
    if (bytes > bytes_) {
        return invalid_argument("DeviceBuffer::download: " + std::to_string(bytes) + " bytes from a buffer of " +
                                std::to_string(bytes_));
    }
    if (bytes == 0) {
        return ok_status();
    }
    DS_CUDA_RETURN_IF_ERROR(cudaMemcpy(host, ptr_, bytes, cudaMemcpyDeviceToHost));
    return ok_status();
}

// ---- CudaStream ----

StatusOr<CudaStream> CudaStream::create() {
    cudaStream_t s = nullptr;
    DS_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    return CudaStream(s, true);
}

CudaStream::CudaStream(CudaStream&& other) noexcept
    : stream_(std::exchange(other.stream_, nullptr)), owned_(std::exchange(other.owned_, false)) {}

CudaStream& CudaStream::operator=(CudaStream&& other) noexcept {
    if (this != &other) {
        reset();
        stream_ = std::exchange(other.stream_, nullptr);
        owned_ = std::exchange(other.owned_, false);
    }
    return *this;
}

CudaStream::~CudaStream() {
    reset();
}

void CudaStream::reset() noexcept {
    if (owned_ && stream_ != nullptr) {
        // cudaStreamDestroy returns at once; pending work still completes on the device.
        cudaError_t err = cudaStreamDestroy(stream_);
        if (err != cudaSuccess) {
            spdlog::warn("cuda: cudaStreamDestroy failed: {}", cudaGetErrorString(err));
        }
    }
    stream_ = nullptr;
    owned_ = false;
}

Status CudaStream::synchronize() const {
    DS_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
    return ok_status();
}

// ---- CudaEvent ----

StatusOr<CudaEvent> CudaEvent::create() {
    CudaEvent e;
    DS_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&e.event_, cudaEventDisableTiming));
    return e;
}

CudaEvent::CudaEvent(CudaEvent&& other) noexcept : event_(std::exchange(other.event_, nullptr)) {}

CudaEvent& CudaEvent::operator=(CudaEvent&& other) noexcept {
    if (this != &other) {
        reset();
        event_ = std::exchange(other.event_, nullptr);
    }
    return *this;
}

CudaEvent::~CudaEvent() {
    reset();
}

void CudaEvent::reset() noexcept {
    if (event_ != nullptr) {
        cudaError_t err = cudaEventDestroy(event_);
        if (err != cudaSuccess) {
            spdlog::warn("cuda: cudaEventDestroy failed: {}", cudaGetErrorString(err));
        }
    }
    event_ = nullptr;
}

Status CudaEvent::record(cudaStream_t stream) const {
    DS_CUDA_RETURN_IF_ERROR(cudaEventRecord(event_, stream));
    return ok_status();
}

StatusOr<bool> CudaEvent::query() const {
    cudaError_t err = cudaEventQuery(event_);
    if (err == cudaSuccess) {
        return true;
    }
    if (err == cudaErrorNotReady) {
        return false;
    }
    return cuda_error(err, "cudaEventQuery", __FILE__, __LINE__);
}

Status CudaEvent::synchronize() const {
    DS_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(event_));
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
