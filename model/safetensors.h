// The safetensors container (https://github.com/huggingface/safetensors): an 8-byte little-endian
// header length N, N bytes of JSON {"name": {"dtype", "shape", "data_offsets": [begin, end]}, ...,
// "__metadata__": {...}}, then the data section; offsets are relative to the data section.
// The parser never trusts the file: every size, offset and shape is checked before it is used, and
// every defect is a Status naming the file (and the tensor). The writer lays files out the way the
// reference implementation does (header padded with spaces to a multiple of 8, data contiguous in
// header order) and writes tensor data positionally, so many threads can fill one file at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/status.h"

namespace deepshard::model::safetensors {

// The reference implementation refuses larger headers; so do we (a corrupt length field must not
// make us allocate or scan gigabytes).
inline constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

struct TensorEntry {
    std::string name;
    DType dtype = DType::kF32;
    std::vector<int64_t> shape;
    uint64_t begin = 0;  // relative to the data section
    uint64_t end = 0;
    int64_t numel() const {
        int64_t n = 1;
        for (auto d : shape) n *= d;
        return n;
    }
};

struct Header {
    uint64_t data_start = 0;           // absolute offset of the data section (8 + header length)
    std::vector<TensorEntry> tensors;  // sorted by begin offset
    std::map<std::string, std::string> metadata;
};

// Parses and checks the header of a safetensors file whose whole contents are [data, data+size):
// header length inside the file, well-formed JSON, known dtypes, non-negative shapes, offsets that
// match the shape, lie inside the file and do not overlap. `file` names the file in errors.
StatusOr<Header> parse_header(const uint8_t* data, size_t size, const std::string& file);

// ---- Writing ----

struct TensorSpec {
    std::string name;
    DType dtype = DType::kF32;
    std::vector<int64_t> shape;
    uint64_t nbytes() const;
};

// The byte layout of a file holding `specs` in this order: the serialized header (with its 8-byte
// length prefix, padded to a multiple of 8) and the absolute offset of each tensor's data.
struct FileLayout {
    std::string header;
    std::vector<uint64_t> offsets;
    uint64_t file_size = 0;
};
FileLayout plan_file(const std::vector<TensorSpec>& specs, const std::map<std::string, std::string>& metadata);

// A file being written: created at its final size with the header in place; tensor bytes are then
// written with write() at any position, from any thread. finish() closes it and reports errors.
class FileWriter {
public:
    static StatusOr<std::unique_ptr<FileWriter>> create(const std::string& path,
                                                        std::vector<TensorSpec> specs,
                                                        const std::map<std::string, std::string>& metadata);
    ~FileWriter();
    FileWriter(const FileWriter&) = delete;
    FileWriter& operator=(const FileWriter&) = delete;

    const std::vector<TensorSpec>& specs() const { return specs_; }
    const FileLayout& layout() const { return layout_; }
    const std::string& path() const { return path_; }

    // Writes `n` bytes of tensor `index` starting `offset` bytes into its data. Thread-safe.
    Status write(size_t index, uint64_t offset, const void* bytes, size_t n) const;
    Status finish();

private:
    FileWriter() = default;
    std::string path_;
    std::vector<TensorSpec> specs_;
    FileLayout layout_;
    int fd_ = -1;
};

// Writes a whole file from in-memory tensors (data[i] holds specs[i].nbytes() bytes).
Status write_file(const std::string& path,
                  const std::vector<TensorSpec>& specs,
                  const std::vector<const void*>& data,
                  const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

}  // namespace deepshard::model::safetensors
