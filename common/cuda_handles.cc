// RAII handles of the CUDA runtime (common/cuda_handles.h). Plain C++ (host compiler).
#include "common/cuda_handles.h"

#include <utility>

#include "common/cuda_status.h"
#include "common/logging.h"

namespace deepshard::cuda {

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

}  // namespace deepshard::cuda
