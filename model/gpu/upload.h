// Uploading a rank's weights to one device arena (issue 10: "uploaded once per rank into one device
// arena, straight from the rank's safetensors byte ranges through pinned staging with async copies
// overlapping the reads, with progress and GB/s"). CUDA-free: the device side is an UploadSink (the
// CUDA engine's sink copies with cudaMemcpyAsync from pinned buffers; tests use a host sink), so the
// planning, chunking and file reading run and are tested on any machine.
//
// An ArenaPlan lists what goes where: each entry is `rows` rows of `row_bytes` bytes read from a file at
// `file_offset` with `file_stride` bytes between rows (a column slice reads only its columns), or bytes
// supplied from host memory (the small fp32 vectors, derived tables), or space reserved for later; entries
// are 256-byte aligned in the arena. upload() cuts the plan into chunks of at most the staging size,
// preads each chunk into the next free staging buffer (round robin over the sink's buffers, waiting only
// for that buffer's previous copy) and hands it to the sink, so reading chunk i + 1 overlaps copying i.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common/status.h"
#include "model/checkpoint.h"
#include "model/shard_weights.h"

namespace deepshard::model::gpu {

inline constexpr uint64_t kArenaAlignment = 256;

struct ArenaEntry {
    enum class Source { kFile, kHost, kReserved } source = Source::kFile;
    std::string name;           // for errors and logs
    uint64_t arena_offset = 0;  // kArenaAlignment-aligned
    uint64_t bytes = 0;         // rows * row_bytes
    // kFile:
    int file_index = 0;
    uint64_t file_offset = 0;
    int64_t rows = 1;
    int64_t row_bytes = 0;
    int64_t file_stride = 0;  // == row_bytes: contiguous
    // kHost: index into ArenaPlan::host_data().
    size_t host_index = 0;
};

// One chunk of an upload: a byte range of one entry, whole rows when the source is strided.
struct UploadChunk {
    size_t entry = 0;
    uint64_t entry_offset = 0;  // byte offset inside the entry (and inside its arena range)
    uint64_t bytes = 0;
};

class ArenaPlan {
public:
    // `rows` rows of `row_bytes` from file `file_index` at `file_offset`, `file_stride` apart.
    uint64_t add_file(std::string name, int file_index, uint64_t file_offset, int64_t rows, int64_t row_bytes,
                      int64_t file_stride);
    // Bytes from host memory (copied into the plan).
    uint64_t add_host(std::string name, const void* data, uint64_t bytes);
    // Space written later by the owner (device tables holding arena pointers).
    uint64_t reserve(std::string name, uint64_t bytes);

    const std::vector<ArenaEntry>& entries() const { return entries_; }
    const std::vector<std::vector<uint8_t>>& host_data() const { return host_; }
    uint64_t total_bytes() const { return total_; }
    uint64_t file_bytes() const { return file_bytes_; }

    // The upload order: entries in plan order, cut at chunk_bytes (strided entries at whole rows).
    // kInvalidArgument naming the entry when one row of a strided entry exceeds chunk_bytes.
    StatusOr<std::vector<UploadChunk>> chunks(uint64_t chunk_bytes) const;

private:
    uint64_t place(uint64_t bytes);
    std::vector<ArenaEntry> entries_;
    std::vector<std::vector<uint8_t>> host_;
    uint64_t total_ = 0;
    uint64_t file_bytes_ = 0;
};

// Where each held weight of a ShardWeights lands: its elements made dense (ld = cols) and, for FP8, its
// scale rows [scale_row0, scale_row0 + scale_rows) with all columns.
struct PlacedTensor {
    const HeldTensor* tensor = nullptr;
    uint64_t data_offset = 0;
    uint64_t scale_offset = 0;  // FP8 only
};

// Adds every held tensor of `w` to `plan` (in ShardWeights::tensors() order) and returns the placements.
StatusOr<std::vector<PlacedTensor>> plan_weights(const ShardWeights& w, ArenaPlan* plan);

// The view of a placed tensor in an arena at `base` (a device address for the engine): dense rows,
// the scale grid re-based to the uploaded rows (row_offset - scale_row0 * block_rows).
kernels::WeightView placed_view(const PlacedTensor& p, const void* base);

// The device side of an upload.
class UploadSink {
public:
    virtual ~UploadSink() = default;
    virtual int num_buffers() const = 0;
    virtual uint64_t buffer_bytes() const = 0;
    // Staging buffer b (pinned host memory for a device sink).
    virtual uint8_t* buffer(int b) = 0;
    // Blocks until buffer b's previous copy finished (it may be refilled).
    virtual Status wait(int b) = 0;
    // Starts copying `bytes` from buffer b to arena offset `arena_offset` (asynchronous).
    virtual Status copy(int b, uint64_t bytes, uint64_t arena_offset) = 0;
    // Blocks until every copy finished.
    virtual Status finish() = 0;
};

struct UploadProgress {
    uint64_t done = 0, total = 0;
    double seconds = 0;
};

// Reads every chunk of `plan` from the checkpoint's files (pread, never the mapping) through `sink`.
// `progress` (optional) is called about every 5% and at the end. Returns bytes and time.
StatusOr<LoadStats> upload(const ArenaPlan& plan, const Checkpoint& checkpoint, UploadSink& sink,
                           const std::function<void(const UploadProgress&)>& progress = {});

// A sink over host memory (tests, and a CPU-side check of the whole reader): `arena` receives the bytes.
class HostUploadSink : public UploadSink {
public:
    HostUploadSink(std::vector<uint8_t>* arena, int buffers, uint64_t buffer_bytes);
    int num_buffers() const override { return static_cast<int>(buffers_.size()); }
    uint64_t buffer_bytes() const override { return buffer_bytes_; }
    uint8_t* buffer(int b) override { return buffers_[b].data(); }
    Status wait(int) override { return ok_status(); }
    Status copy(int b, uint64_t bytes, uint64_t arena_offset) override;
    Status finish() override { return ok_status(); }
    int64_t copies() const { return copies_; }

private:
    std::vector<uint8_t>* arena_;
    std::vector<std::vector<uint8_t>> buffers_;
    uint64_t buffer_bytes_;
    int64_t copies_ = 0;
};

}  // namespace deepshard::model::gpu
