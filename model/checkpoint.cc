// Checkpoint: config.json + safetensors shards, memory-mapped. open() checks the files themselves
// (headers, offsets, the index); validate() checks them against the config; weight()/vector_f32()
// check the one tensor they hand out, so a rank that never calls validate() still cannot be given a
// wrongly shaped view.
#include "model/checkpoint.h"

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "common/logging.h"
#include "common/thread_pool.h"
#include "model/checkpoint_files.h"
#include "model/make_model.h"
#include "model/safetensors.h"

namespace deepshard::model {
namespace fs = std::filesystem;

namespace {

std::string shape_str(const std::vector<int64_t>& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

bool is_float_dtype(DType t) { return t == DType::kF32 || t == DType::kBF16 || t == DType::kF16; }

bool aligned(const void* p, size_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; }

}  // namespace

std::string layer_prefix(int64_t layer) { return "model.layers." + std::to_string(layer) + "."; }

StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::open(const std::string& dir) {
    std::unique_ptr<Checkpoint> ck(new Checkpoint());
    ck->dir_ = dir;
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) {
        return not_found("model directory " + dir + " does not exist");
    }
    DS_ASSIGN_OR_RETURN(ck->config_, ModelConfig::load((fs::path(dir) / "config.json").string()));

    // The index and the shard headers (model/checkpoint_files.h: shared with the coordinator).
    DS_ASSIGN_OR_RETURN(CheckpointFiles files, open_checkpoint_files(dir));
    for (CheckpointFile& f : files.files) {
        const int fi = static_cast<int>(ck->files_.size());
        for (auto& e : f.header.tensors) {
            TensorInfo t;
            t.name = e.name;
            t.dtype = e.dtype;
            t.shape = e.shape;
            t.file_index = fi;
            t.offset = f.header.data_start + e.begin;
            t.nbytes = e.end - e.begin;
            ck->by_name_[t.name] = ck->tensors_.size();
            ck->tensors_.push_back(std::move(t));
        }
        ck->files_.push_back(std::move(f.file));
        ck->file_names_.push_back(f.name);
    }
    return ck;
}

const TensorInfo* Checkpoint::find(const std::string& name) const {
    auto it = by_name_.find(name);
    return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

StatusOr<kernels::WeightView> Checkpoint::weight(const std::string& name,
                                                 int64_t expect_rows,
                                                 int64_t expect_cols) const {
    const TensorInfo* t = find(name);
    if (t == nullptr) {
        return not_found(dir_ + ": tensor '" + name + "' is missing from the checkpoint");
    }
    const std::string& file = file_names_[t->file_index];
    const std::vector<int64_t> want{expect_rows, expect_cols};
    if (t->shape != want) {
        return invalid_argument(file + ": tensor '" + name + "' has shape " + shape_str(t->shape) +
                                ", the config implies " + shape_str(want));
    }
    if (!is_float_dtype(t->dtype) && t->dtype != DType::kF8E4M3) {
        return invalid_argument(file + ": tensor '" + name + "' has dtype " + dtype_name(t->dtype) +
                                "; weights must be F32, BF16, F16 or F8_E4M3");
    }
    const uint8_t* base = files_[t->file_index].data() + t->offset;
    if (!aligned(base, dtype_size(t->dtype))) {
        return data_loss(file + ": tensor '" + name + "' data is not aligned to its element size");
    }
    kernels::WeightView v;
    v.dtype = t->dtype;
    v.data = base;
    v.rows = expect_rows;
    v.cols = expect_cols;
    v.ld = expect_cols;
    v.block_rows = config_.quantization.block_rows;
    v.block_cols = config_.quantization.block_cols;
    if (t->dtype != DType::kF8E4M3) {
        return v;
    }
    const std::string sname = scale_name(name);
    const TensorInfo* s = find(sname);
    if (s == nullptr) {
        return not_found(file + ": FP8 tensor '" + name + "' has no scale tensor '" + sname + "'");
    }
    const std::string& sfile = file_names_[s->file_index];
    const std::vector<int64_t> grid = scale_shape(config_, expect_rows, expect_cols);
    if (s->dtype != DType::kF32) {
        return data_loss(sfile + ": scale tensor '" + sname + "' is " + dtype_name(s->dtype) + ", expected F32");
    }
    if (s->shape != grid) {
        return data_loss(sfile + ": scale tensor '" + sname + "' has shape " + shape_str(s->shape) + ", expected " +
                         shape_str(grid) + " (one per " + std::to_string(v.block_rows) + "x" +
                         std::to_string(v.block_cols) + " block of " + shape_str(want) + ")");
    }
    const uint8_t* sbase = files_[s->file_index].data() + s->offset;
    if (!aligned(sbase, 4)) {
        return data_loss(sfile + ": scale tensor '" + sname + "' data is not 4-byte aligned");
    }
    v.scale = reinterpret_cast<const float*>(sbase);
    v.scale_ld = grid[1];
    return v;
}

StatusOr<kernels::WeightView> Checkpoint::weight_rows(
    const std::string& name, int64_t expect_rows, int64_t expect_cols, int64_t r0, int64_t n) const {
    DS_ASSIGN_OR_RETURN(kernels::WeightView v, weight(name, expect_rows, expect_cols));
    if (r0 < 0 || n <= 0 || r0 + n > expect_rows) {
        return invalid_argument("tensor '" + name + "': row range [" + std::to_string(r0) + ", " +
                                std::to_string(r0 + n) + ") is outside its " + std::to_string(expect_rows) + " rows");
    }
    return v.slice_rows(r0, n);
}

StatusOr<kernels::WeightView> Checkpoint::weight_cols(
    const std::string& name, int64_t expect_rows, int64_t expect_cols, int64_t c0, int64_t n) const {
    DS_ASSIGN_OR_RETURN(kernels::WeightView v, weight(name, expect_rows, expect_cols));
    if (c0 < 0 || n <= 0 || c0 + n > expect_cols) {
        return invalid_argument("tensor '" + name + "': column range [" + std::to_string(c0) + ", " +
                                std::to_string(c0 + n) + ") is outside its " + std::to_string(expect_cols) +
                                " columns");
    }
    return v.slice_cols(c0, n);
}

StatusOr<std::vector<float>> Checkpoint::vector_f32(const std::string& name, int64_t expect_len) const {
    const TensorInfo* t = find(name);
    if (t == nullptr) {
        return not_found(dir_ + ": tensor '" + name + "' is missing from the checkpoint");
    }
    const std::string& file = file_names_[t->file_index];
    if (t->shape != std::vector<int64_t>{expect_len}) {
        return invalid_argument(file + ": tensor '" + name + "' has shape " + shape_str(t->shape) +
                                ", the config implies [" + std::to_string(expect_len) + "]");
    }
    if (!is_float_dtype(t->dtype)) {
        return invalid_argument(file + ": tensor '" + name + "' has dtype " + dtype_name(t->dtype) +
                                "; expected F32, BF16 or F16");
    }
    const uint8_t* p = files_[t->file_index].data() + t->offset;
    std::vector<float> out(static_cast<size_t>(expect_len));
    for (int64_t i = 0; i < expect_len; ++i) {
        if (t->dtype == DType::kF32) {
            std::memcpy(&out[i], p + 4 * i, 4);
        } else {
            uint16_t h;
            std::memcpy(&h, p + 2 * i, 2);
            out[i] = t->dtype == DType::kBF16 ? bf16_to_f32(h) : f16_to_f32(h);
        }
    }
    return out;
}

Status Checkpoint::validate() const {
    std::vector<std::string> problems;
    const bool fp8 = config_.quantization.fp8;
    for (const ExpectedTensor& e : expected_tensors(config_)) {
        const TensorInfo* t = find(e.name);
        const DType want = e.dtype(config_);
        if (t == nullptr) {
            problems.push_back(dir_ + ": tensor '" + e.name + "' is missing (the config implies " + dtype_name(want) +
                               " " + shape_str(e.shape) + ")");
            continue;
        }
        const std::string& file = file_names_[t->file_index];
        const std::string what = file + ": tensor '" + e.name + "' ";
        if (t->shape != e.shape) {
            problems.push_back(what + "has shape " + shape_str(t->shape) + ", the config implies " +
                               shape_str(e.shape));
            continue;
        }
        if (e.quantizable() && fp8 && t->dtype != DType::kF8E4M3) {
            problems.push_back(what + "has dtype " + dtype_name(t->dtype) +
                               " but config.json declares FP8 (quantization_config): expected F8_E4M3");
            continue;
        }
        if (e.quantizable() && !fp8 && !is_float_dtype(t->dtype)) {
            problems.push_back(what + "has dtype " + dtype_name(t->dtype) +
                               (t->dtype == DType::kF8E4M3 ? " but config.json has no quantization_config"
                                                           : ", expected BF16, F16 or F32"));
            continue;
        }
        if (!e.quantizable() && !is_float_dtype(t->dtype)) {
            problems.push_back(what + "has dtype " + dtype_name(t->dtype) + ", expected " + dtype_name(want));
            continue;
        }
        if (t->dtype != DType::kF8E4M3) {
            continue;
        }
        auto v = weight(e.name, e.shape[0], e.shape[1]);
        if (!v.ok()) {
            problems.push_back(v.status().message());
            continue;
        }
        // Scales are multipliers: a negative, infinite or NaN one corrupts a whole block.
        const std::vector<int64_t> grid = scale_shape(config_, e.shape[0], e.shape[1]);
        for (int64_t i = 0; i < grid[0] * grid[1]; ++i) {
            float s;
            std::memcpy(&s, v->scale + i, 4);
            if (!std::isfinite(s) || s < 0) {
                problems.push_back(file_names_[find(scale_name(e.name))->file_index] + ": scale tensor '" +
                                   scale_name(e.name) + "' holds " + std::to_string(s) + " at block [" +
                                   std::to_string(i / grid[1]) + ", " + std::to_string(i % grid[1]) + "]");
                break;
            }
        }
    }
    if (problems.empty()) {
        return ok_status();
    }
    std::string msg = dir_ + ": checkpoint does not match its config (" + std::to_string(problems.size()) +
                      (problems.size() == 1 ? " defect)" : " defects)");
    for (size_t i = 0; i < problems.size() && i < 20; ++i) msg += "\n  " + problems[i];
    if (problems.size() > 20) {
        msg += "\n  ...";
    }
    return data_loss(msg);
}

StatusOr<LoadStats> Checkpoint::load(const std::vector<std::string>& names) const {
    struct Piece {
        int file;
        uint64_t begin, len;
    };
    constexpr uint64_t kPiece = 16ull << 20;
    std::vector<Piece> pieces;
    uint64_t total = 0;
    auto add = [&](const TensorInfo& t) {
        for (uint64_t off = 0; off < t.nbytes; off += kPiece) {
            pieces.push_back({t.file_index, t.offset + off, std::min(kPiece, t.nbytes - off)});
        }
        total += t.nbytes;
    };
    if (names.empty()) {
        for (const auto& t : tensors_) add(t);
    } else {
        for (const auto& n : names) {
            const TensorInfo* t = find(n);
            if (t == nullptr) {
                return not_found(dir_ + ": tensor '" + n + "' is missing from the checkpoint");
            }
            add(*t);
            if (const TensorInfo* s = find(scale_name(n)); s != nullptr) {
                add(*s);
            }
        }
    }
    const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
    std::atomic<uint64_t> done{0};
    std::atomic<bool> finished{false};
    std::mutex mu;
    std::condition_variable cv;
    const auto t0 = std::chrono::steady_clock::now();
    auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
    const bool tty = ::isatty(STDERR_FILENO) == 1;
    auto report = [&](bool final_line) {
        const uint64_t d = done.load();
        const double frac = total ? static_cast<double>(d) / static_cast<double>(total) : 1.0;
        const double secs = elapsed();
        const double rate = secs > 0 ? d / secs / 1e9 : 0;
        if (tty) {
            constexpr int kWidth = 30;
            const int fill = static_cast<int>(frac * kWidth);
            std::fprintf(stderr, "\rloading [%s%s] %3d%% %.2f/%.2f GB %.2f GB/s%s", std::string(fill, '#').c_str(),
                         std::string(kWidth - fill, ' ').c_str(), static_cast<int>(frac * 100), d / 1e9, total / 1e9,
                         rate, final_line ? "\n" : "");
            std::fflush(stderr);
        } else if (!final_line) {
            spdlog::info("loading weights: {:.0f}% ({:.2f} of {:.2f} GB, {:.2f} GB/s)", frac * 100, d / 1e9,
                         total / 1e9, rate);
        }
    };
    // Bar refresh on a terminal; a log line every few seconds otherwise (a short load logs nothing).
    std::thread reporter([&] {
        const auto period = std::chrono::milliseconds(tty ? 100 : 3000);
        std::unique_lock<std::mutex> lock(mu);
        while (!cv.wait_for(lock, period, [&] { return finished.load(); })) report(false);
    });
    std::atomic<size_t> next{0};
    ThreadPool& pool = ThreadPool::global();
    pool.parallel_for(pool.size(), [&](int64_t, int64_t) {
        uint64_t sink = 0;
        for (size_t i = next++; i < pieces.size(); i = next++) {
            const Piece& p = pieces[i];
            const MappedFile& f = files_[p.file];
            f.prefetch(p.begin, p.len);
            const volatile uint8_t* b = f.data() + p.begin;
            for (uint64_t off = 0; off < p.len; off += page) sink += b[off];
            sink += b[p.len - 1];
            done += p.len;
        }
        static std::atomic<uint64_t> keep{0};  // keeps the reads from being optimized away
        keep += sink;
    });
    {
        std::lock_guard<std::mutex> lock(mu);
        finished = true;
    }
    cv.notify_all();
    reporter.join();
    LoadStats st;
    st.bytes = total;
    st.seconds = elapsed();
    if (tty) {
        report(true);
    }
    return st;
}

uint64_t Checkpoint::fingerprint() const {
    FingerprintBuilder fp(config_.hash());
    for (const auto& [name, index] : by_name_) {  // sorted by name: independent of the shard layout
        const TensorInfo& t = tensors_[index];
        fp.add(name, t.dtype, t.shape, t.nbytes);
    }
    return fp.value();
}

uint64_t Checkpoint::resident_bytes() const {
    const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
    uint64_t total = 0;
    for (const MappedFile& f : files_) {
        if (f.data() == nullptr || f.size() == 0) {
            continue;
        }
        const size_t pages = (f.size() + page - 1) / page;
        std::vector<unsigned char> vec(pages);
        if (::mincore(const_cast<uint8_t*>(f.data()), f.size(), vec.data()) != 0) {
            continue;
        }
        for (size_t i = 0; i < pages; ++i) {
            if (vec[i] & 1) {
                total += std::min<uint64_t>(page, f.size() - i * page);
            }
        }
    }
    return total;
}

}  // namespace deepshard::model
