// Move-only RAII wrappers of CUDA runtime handles: DeviceBuffer (cudaMalloc), CudaStream and CudaEvent,
// the one set used by kernels/cuda (which adds CublasLtHandle, kernels/cuda/cuda_handles.h) and
// comm/nccl. Fallible construction is `static StatusOr<T> create(...)`; destructors are noexcept and
// log (never throw, never abort) when the CUDA call fails.
//
// Device: every handle belongs to the device that was current when it was created; the caller keeps
// that device current when using it (cudaSetDevice). Thread-safety: a handle is used by one thread at
// a time, as the underlying CUDA object requires. Host-only (plain C++); built with common_cuda.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "common/status.h"

namespace deepshard::cuda {

// Owns `bytes` of device memory (cudaMalloc: 256-byte aligned). Contents are uninitialized.
class DeviceBuffer {
public:
    DeviceBuffer() = default;
    static StatusOr<DeviceBuffer> create(size_t bytes);
    DeviceBuffer(DeviceBuffer&& other) noexcept;
    DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    ~DeviceBuffer();

    void* get() const { return ptr_; }
    template <typename T>
    T* as() const {
        return static_cast<T*>(ptr_);
    }
    size_t bytes() const { return bytes_; }

    // Makes the buffer at least `bytes` large. Growing frees the old allocation (cudaFree waits for
    // the device, so in-flight work that used it finishes first) and loses the contents.
    Status reserve(size_t bytes);

    // Synchronous copies (cudaMemcpy) of `bytes` from / to host memory at offset 0.
    Status upload(const void* host, size_t bytes);
    Status download(void* host, size_t bytes) const;

private:
    void reset() noexcept;
    void* ptr_ = nullptr;
    size_t bytes_ = 0;
};

// An owned non-blocking stream (cudaStreamNonBlocking), or a borrowed one (owned = false; e.g. the
// legacy default stream 0 or a stream owned by another library).
class CudaStream {
public:
    CudaStream() = default;
    static StatusOr<CudaStream> create();
    static CudaStream borrow(cudaStream_t stream) { return CudaStream(stream, false); }
    CudaStream(CudaStream&& other) noexcept;
    CudaStream& operator=(CudaStream&& other) noexcept;
    CudaStream(const CudaStream&) = delete;
    CudaStream& operator=(const CudaStream&) = delete;
    ~CudaStream();

    cudaStream_t get() const { return stream_; }
    bool owned() const { return owned_; }
    // Blocks until all work on the stream is done (cudaStreamSynchronize); reports async errors.
    Status synchronize() const;

private:
    CudaStream(cudaStream_t s, bool owned) : stream_(s), owned_(owned) {}
    void reset() noexcept;
    cudaStream_t stream_ = nullptr;
    bool owned_ = false;
};

// An event without timing (cudaEventDisableTiming): cheap to record and query.
class CudaEvent {
public:
    CudaEvent() = default;
    static StatusOr<CudaEvent> create();
    CudaEvent(CudaEvent&& other) noexcept;
    CudaEvent& operator=(CudaEvent&& other) noexcept;
    CudaEvent(const CudaEvent&) = delete;
    CudaEvent& operator=(const CudaEvent&) = delete;
    ~CudaEvent();

    cudaEvent_t get() const { return event_; }
    Status record(cudaStream_t stream) const;
    // true when every piece of work captured by the last record() finished, false while pending,
    // an error for a failed kernel (sticky CUDA error).
    StatusOr<bool> query() const;
    Status synchronize() const;

private:
    void reset() noexcept;
    cudaEvent_t event_ = nullptr;
};

}  // namespace deepshard::cuda
