// Arena planning and the staged upload (see upload.h).
#include "model/gpu/upload.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

namespace deepshard::model::gpu {

namespace {

uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

// Reads exactly `bytes` at `offset` (retrying short reads and EINTR).
Status pread_all(int fd, uint8_t* dst, uint64_t bytes, uint64_t offset, const std::string& what) {
    while (bytes > 0) {
        const ssize_t n = ::pread(fd, dst, bytes, static_cast<off_t>(offset));
        if (n < 0) {
            if (errno == EINTR) continue;
            return Status(StatusCode::kIo, "reading " + what + ": " + std::strerror(errno));
        }
        if (n == 0) return Status(StatusCode::kIo, "reading " + what + ": unexpected end of file");
        dst += n;
        bytes -= static_cast<uint64_t>(n);
        offset += static_cast<uint64_t>(n);
    }
    return ok_status();
}

class Files {
public:
    ~Files() {
        for (int fd : fds_) {
            if (fd >= 0) ::close(fd);
        }
    }
    Status open(const Checkpoint& ck) {
        for (const std::string& name : ck.file_names()) {
            const std::string path = ck.dir() + "/" + name;
            const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
            if (fd < 0) return Status(StatusCode::kIo, "opening " + path + ": " + std::strerror(errno));
            fds_.push_back(fd);
            paths_.push_back(path);
        }
        return ok_status();
    }
    int fd(int i) const { return fds_[i]; }
    const std::string& path(int i) const { return paths_[i]; }
    size_t size() const { return fds_.size(); }

private:
    std::vector<int> fds_;
    std::vector<std::string> paths_;
};

}  // namespace

uint64_t ArenaPlan::place(uint64_t bytes) {
    const uint64_t off = align_up(total_, kArenaAlignment);
    total_ = off + bytes;
    return off;
}

uint64_t ArenaPlan::add_file(std::string name, int file_index, uint64_t file_offset, int64_t rows, int64_t row_bytes,
                             int64_t file_stride) {
    ArenaEntry e;
    e.source = ArenaEntry::Source::kFile;
    e.name = std::move(name);
    e.file_index = file_index;
    e.file_offset = file_offset;
    e.rows = rows;
    e.row_bytes = row_bytes;
    e.file_stride = file_stride;
    e.bytes = static_cast<uint64_t>(rows) * static_cast<uint64_t>(row_bytes);
    e.arena_offset = place(e.bytes);
    file_bytes_ += e.bytes;
    entries_.push_back(std::move(e));
    return entries_.back().arena_offset;
}

uint64_t ArenaPlan::add_host(std::string name, const void* data, uint64_t bytes) {
    ArenaEntry e;
    e.source = ArenaEntry::Source::kHost;
    e.name = std::move(name);
    e.bytes = bytes;
    e.row_bytes = static_cast<int64_t>(bytes);
    e.file_stride = e.row_bytes;
    e.host_index = host_.size();
    const auto* p = static_cast<const uint8_t*>(data);
    host_.emplace_back(p, p + bytes);
    e.arena_offset = place(bytes);
    entries_.push_back(std::move(e));
    return entries_.back().arena_offset;
}

uint64_t ArenaPlan::reserve(std::string name, uint64_t bytes) {
    ArenaEntry e;
    e.source = ArenaEntry::Source::kReserved;
    e.name = std::move(name);
    e.bytes = bytes;
    e.arena_offset = place(bytes);
    entries_.push_back(std::move(e));
    return entries_.back().arena_offset;
}

StatusOr<std::vector<UploadChunk>> ArenaPlan::chunks(uint64_t chunk_bytes) const {
    if (chunk_bytes == 0) return invalid_argument("upload: chunk size must be positive");
    std::vector<UploadChunk> out;
    for (size_t i = 0; i < entries_.size(); ++i) {
        const ArenaEntry& e = entries_[i];
        if (e.source == ArenaEntry::Source::kReserved || e.bytes == 0) continue;
        const bool strided = e.source == ArenaEntry::Source::kFile && e.file_stride != e.row_bytes && e.rows > 1;
        uint64_t step = chunk_bytes;
        if (strided) {
            const uint64_t rb = static_cast<uint64_t>(e.row_bytes);
            if (rb > chunk_bytes) {
                return invalid_argument("upload: a row of " + e.name + " (" + std::to_string(rb) +
                                        " bytes) exceeds the staging buffer of " + std::to_string(chunk_bytes));
            }
            step = chunk_bytes / rb * rb;
        }
        for (uint64_t off = 0; off < e.bytes; off += step) {
            out.push_back(UploadChunk{i, off, std::min(step, e.bytes - off)});
        }
    }
    return out;
}

StatusOr<std::vector<PlacedTensor>> plan_weights(const ShardWeights& w, ArenaPlan* plan) {
    std::vector<PlacedTensor> out;
    out.reserve(w.tensors().size());
    for (const HeldTensor& t : w.tensors()) {
        const kernels::WeightView& v = *t.view;
        const int64_t es = static_cast<int64_t>(dtype_size(v.dtype));
        PlacedTensor p;
        p.tensor = &t;
        p.data_offset = plan->add_file(t.name, t.file_index, t.file_offset, v.rows, v.cols * es, v.ld * es);
        if (v.dtype == DType::kF8E4M3) {
            if (t.scale_info == nullptr || t.scale_info->shape.size() != 2) {
                return invalid_argument("upload: " + t.name + " is FP8 without a 2-D scale grid");
            }
            const int64_t sc = t.scale_info->shape[1];
            if (sc != v.scale_ld || t.scale_row0 < 0 || t.scale_row0 + t.scale_rows > t.scale_info->shape[0]) {
                return invalid_argument("upload: scale rows of " + t.name + " do not fit its grid");
            }
            p.scale_offset = plan->add_file(t.name + "_scale_inv", t.scale_info->file_index,
                                            t.scale_info->offset + static_cast<uint64_t>(t.scale_row0 * sc * 4),
                                            t.scale_rows, sc * 4, sc * 4);
        }
        out.push_back(p);
    }
    return out;
}

kernels::WeightView placed_view(const PlacedTensor& p, const void* base) {
    kernels::WeightView v = *p.tensor->view;
    const auto* b = static_cast<const uint8_t*>(base);
    v.data = b + p.data_offset;
    v.ld = v.cols;
    if (v.dtype == DType::kF8E4M3) {
        v.scale = reinterpret_cast<const float*>(b + p.scale_offset);
        v.row_offset -= p.tensor->scale_row0 * v.block_rows;
    }
    return v;
}

StatusOr<LoadStats> upload(const ArenaPlan& plan, const Checkpoint& checkpoint, UploadSink& sink,
                           const std::function<void(const UploadProgress&)>& progress) {
    if (sink.num_buffers() <= 0) return invalid_argument("upload: the sink has no staging buffers");
    DS_ASSIGN_OR_RETURN(std::vector<UploadChunk> chunks, plan.chunks(sink.buffer_bytes()));
    Files files;
    DS_RETURN_IF_ERROR(files.open(checkpoint));
    uint64_t total = 0;
    for (const UploadChunk& c : chunks) total += c.bytes;
    const auto start = std::chrono::steady_clock::now();
    auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
    uint64_t done = 0, next_report = total / 20;
    int b = 0;
    for (const UploadChunk& c : chunks) {
        const ArenaEntry& e = plan.entries()[c.entry];
        DS_RETURN_IF_ERROR(sink.wait(b));
        uint8_t* dst = sink.buffer(b);
        if (e.source == ArenaEntry::Source::kHost) {
            std::memcpy(dst, plan.host_data()[e.host_index].data() + c.entry_offset, c.bytes);
        } else {
            if (e.file_index < 0 || static_cast<size_t>(e.file_index) >= files.size()) {
                return invalid_argument("upload: " + e.name + " names file " + std::to_string(e.file_index));
            }
            const int fd = files.fd(e.file_index);
            const std::string what = e.name + " from " + files.path(e.file_index);
            if (e.file_stride == e.row_bytes || e.rows <= 1) {
                DS_RETURN_IF_ERROR(pread_all(fd, dst, c.bytes, e.file_offset + c.entry_offset, what));
            } else {
                const uint64_t rb = static_cast<uint64_t>(e.row_bytes);
                const uint64_t r0 = c.entry_offset / rb;
                for (uint64_t r = 0; r < c.bytes / rb; ++r) {
                    DS_RETURN_IF_ERROR(pread_all(fd, dst + r * rb, rb,
                                                 e.file_offset + (r0 + r) * static_cast<uint64_t>(e.file_stride), what));
                }
            }
        }
        DS_RETURN_IF_ERROR(sink.copy(b, c.bytes, e.arena_offset + c.entry_offset));
        b = (b + 1) % sink.num_buffers();
        done += c.bytes;
        if (progress && done >= next_report && done < total) {
            progress(UploadProgress{done, total, elapsed()});
            next_report = done + total / 20;
        }
    }
    DS_RETURN_IF_ERROR(sink.finish());
    LoadStats stats;
    stats.bytes = total;
    stats.seconds = elapsed();
    if (progress) progress(UploadProgress{total, total, stats.seconds});
    return stats;
}

HostUploadSink::HostUploadSink(std::vector<uint8_t>* arena, int buffers, uint64_t buffer_bytes)
    : arena_(arena), buffers_(static_cast<size_t>(buffers), std::vector<uint8_t>(buffer_bytes)),
      buffer_bytes_(buffer_bytes) {}

Status HostUploadSink::copy(int b, uint64_t bytes, uint64_t arena_offset) {
    if (arena_offset + bytes > arena_->size()) {
        return invalid_argument("host sink: copy of " + std::to_string(bytes) + " bytes at " +
                                std::to_string(arena_offset) + " exceeds the arena of " + std::to_string(arena_->size()));
    }
    std::memcpy(arena_->data() + arena_offset, buffers_[b].data(), bytes);
    ++copies_;
    return ok_status();
}

}  // namespace deepshard::model::gpu
