// Read-only memory mapping of a whole file (RAII, move-only). Pages are faulted in lazily, so
// reading a byte range touches only that range.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "common/status.h"

namespace deepshard {

class MappedFile {
public:
    static StatusOr<MappedFile> open(const std::string& path);

    MappedFile() = default;
    MappedFile(MappedFile&& o) noexcept;
    MappedFile& operator=(MappedFile&& o) noexcept;
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;
    ~MappedFile();

    const uint8_t* data() const { return data_; }
    size_t size() const { return size_; }
    const std::string& path() const { return path_; }

    // Hints the kernel to read [offset, offset+len) ahead (MADV_WILLNEED); no-op on failure.
    void prefetch(size_t offset, size_t len) const;
    // Gives the pages of [offset, offset+len) back (MADV_DONTNEED); they re-fault from the file.
    void release(size_t offset, size_t len) const;

private:
    MappedFile(std::string path, const uint8_t* data, size_t size) : path_(std::move(path)), data_(data), size_(size) {}
    void reset() noexcept;
    std::string path_;
    const uint8_t* data_ = nullptr;
    size_t size_ = 0;
};

}  // namespace deepshard
