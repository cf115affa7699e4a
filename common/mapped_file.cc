#include "common/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

namespace deepshard {

StatusOr<MappedFile> MappedFile::open(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return io_error("cannot open " + path + ": " + std::strerror(errno));
    }
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
        int e = errno;
        ::close(fd);
        return io_error("cannot stat " + path + ": " + std::strerror(e));
    }
    size_t size = static_cast<size_t>(st.st_size);
    if (size == 0) {
        ::close(fd);
        return MappedFile(path, nullptr, 0);
    }
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    ::close(fd);  // the mapping keeps the file referenced
    if (p == MAP_FAILED) {
        return io_error("cannot mmap " + path + ": " + std::strerror(e));
    }
    return MappedFile(path, static_cast<const uint8_t*>(p), size);
}

MappedFile::MappedFile(MappedFile&& o) noexcept
    : path_(std::move(o.path_)), data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& o) noexcept {
    if (this != &o) {
        reset();
        path_ = std::move(o.path_);
        data_ = std::exchange(o.data_, nullptr);
        size_ = std::exchange(o.size_, 0);
    }
    return *this;
}

MappedFile::~MappedFile() {
    reset();
}

void MappedFile::reset() noexcept {
    if (data_ != nullptr) {
        ::munmap(const_cast<uint8_t*>(data_), size_);
        data_ = nullptr;
        size_ = 0;
    }
}

static void page_range(const uint8_t* base, size_t total, size_t offset, size_t len, void** start, size_t* n) {
    const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
    if (offset >= total) {
        *n = 0;
        return;
    }
    if (len > total - offset) len = total - offset;
    size_t s = offset / page * page;
    *start = const_cast<uint8_t*>(base) + s;
    *n = offset + len - s;
}

void MappedFile::prefetch(size_t offset, size_t len) const {
    void* s = nullptr;
    size_t n = 0;
    page_range(data_, size_, offset, len, &s, &n);
    if (n > 0) {
        (void)::madvise(s, n, MADV_WILLNEED);
    }
}

void MappedFile::release(size_t offset, size_t len) const {
    void* s = nullptr;
    size_t n = 0;
    page_range(data_, size_, offset, len, &s, &n);
    if (n > 0) {
        (void)::madvise(s, n, MADV_DONTNEED);
    }
}

}  // namespace deepshard
