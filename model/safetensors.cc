#include "model/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

namespace deepshard::model::safetensors {
namespace {

// A safetensors header is three levels deep. Refusing deeper nesting before parsing keeps a hostile
// header ([[[[...) from driving the recursive JSON value code into a stack overflow.
constexpr int kMaxJsonDepth = 16;

bool nesting_within(const char* p, size_t n, int max_depth) {
    int depth = 0;
    bool in_string = false;
    for (size_t i = 0; i < n; ++i) {
        const char c = p[i];
        if (in_string) {
            if (c == '\\') {
                ++i;
            } else if (c == '"') {
                in_string = false;
            }
        } else if (c == '"') {
            in_string = true;
        } else if (c == '{' || c == '[') {
            if (++depth > max_depth) {
                return false;
            }
        } else if (c == '}' || c == ']') {
            --depth;
        }
    }
    return true;
}

Status tensor_error(const std::string& file, const std::string& name, const std::string& what) {
    return data_loss(file + ": tensor '" + name + "': " + what);
}

std::string shape_string(const std::vector<int64_t>& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) {
        s += (i ? ", " : "") + std::to_string(shape[i]);
    }
    return s + "]";
}

// Reads a JSON unsigned integer that fits in int64.
bool get_u63(const nlohmann::json& v, uint64_t* out) {
    if (!v.is_number_unsigned()) {
        return false;
    }
    const uint64_t x = v.get<uint64_t>();
    if (x > static_cast<uint64_t>(INT64_MAX)) {
        return false;
    }
    *out = x;
    return true;
}

Status parse_entry(
    const std::string& file, const std::string& name, const nlohmann::json& v, uint64_t data_size, TensorEntry* e) {
    if (!v.is_object()) {
        return tensor_error(file, name, "header entry is not an object");
    }
    e->name = name;
    auto dt = v.find("dtype");
    if (dt == v.end() || !dt->is_string()) {
        return tensor_error(file, name, "missing or non-string \"dtype\"");
    }
    auto dtype = dtype_from_name(dt->get_ref<const std::string&>());
    if (!dtype) {
        return tensor_error(file, name, "unsupported dtype \"" + dt->get<std::string>() + "\"");
    }
    e->dtype = *dtype;
    auto sh = v.find("shape");
    if (sh == v.end() || !sh->is_array()) {
        return tensor_error(file, name, "missing or non-array \"shape\"");
    }
    if (sh->size() > 8) {
        return tensor_error(file, name, "shape has " + std::to_string(sh->size()) + " dimensions");
    }
    uint64_t numel = 1;
    for (const auto& d : *sh) {
        uint64_t x = 0;
        if (!get_u63(d, &x)) {
            return tensor_error(file, name, "shape entries must be non-negative integers, got " + d.dump());
        }
        e->shape.push_back(static_cast<int64_t>(x));
        if (x != 0 && numel > (static_cast<uint64_t>(INT64_MAX) / 8) / x) {
            return tensor_error(file, name, "shape " + shape_string(e->shape) + " is too large");
        }
        numel *= x;
    }
    auto off = v.find("data_offsets");
    if (off == v.end() || !off->is_array() || off->size() != 2 || !get_u63((*off)[0], &e->begin) ||
        !get_u63((*off)[1], &e->end)) {
        return tensor_error(file, name, "\"data_offsets\" must be two non-negative integers");
    }
    if (e->begin > e->end) {
        return tensor_error(
            file, name, "data_offsets [" + std::to_string(e->begin) + ", " + std::to_string(e->end) + ") are reversed");
    }
    const uint64_t expect = numel * dtype_size(e->dtype);
    if (e->end - e->begin != expect) {
        return tensor_error(file, name,
                            "data_offsets [" + std::to_string(e->begin) + ", " + std::to_string(e->end) + ") hold " +
                                std::to_string(e->end - e->begin) + " bytes but " + dtype_name(e->dtype) + " " +
                                shape_string(e->shape) + " needs " + std::to_string(expect));
    }
    if (e->end > data_size) {
        return tensor_error(file, name,
                            "data_offsets [" + std::to_string(e->begin) + ", " + std::to_string(e->end) +
                                ") run past the end of the data section (" + std::to_string(data_size) +
                                " bytes): the file is truncated or the offsets are corrupt");
    }
    return ok_status();
}

}  // namespace

StatusOr<Header> parse_header(const uint8_t* data, size_t size, const std::string& file) {
    if (size < 8) {
        return data_loss(file + ": file is " + std::to_string(size) +
                         " bytes, too short for a safetensors header (truncated?)");
    }
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];
    if (n > size - 8) {
        return data_loss(file + ": header length " + std::to_string(n) + " runs past the end of the file (" +
                         std::to_string(size) + " bytes)");
    }
    if (n > kMaxHeaderBytes) {
        return data_loss(file + ": header length " + std::to_string(n) + " exceeds the " +
                         std::to_string(kMaxHeaderBytes) + "-byte limit");
    }
    if (n < 2) {
        return data_loss(file + ": header length " + std::to_string(n) + " is too small");
    }
    const char* text = reinterpret_cast<const char*>(data + 8);
    if (!nesting_within(text, n, kMaxJsonDepth)) {
        return data_loss(file + ": malformed header: JSON nested deeper than " + std::to_string(kMaxJsonDepth));
    }
    nlohmann::json j = nlohmann::json::parse(text, text + n, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) {
        return data_loss(file + ": malformed header: not valid JSON");
    }
    if (!j.is_object()) {
        return data_loss(file + ": malformed header: not a JSON object");
    }
    Header h;
    h.data_start = 8 + n;
    const uint64_t data_size = size - h.data_start;
    for (auto it = j.begin(); it != j.end(); ++it) {
        if (it.key() == "__metadata__") {
            if (!it->is_object()) {
                return data_loss(file + ": malformed header: \"__metadata__\" is not an object");
            }
            for (auto m = it->begin(); m != it->end(); ++m) {
                h.metadata[m.key()] = m->is_string() ? m->get<std::string>() : m->dump();
            }
            continue;
        }
        TensorEntry e;
        DS_RETURN_IF_ERROR(parse_entry(file, it.key(), it.value(), data_size, &e));
        h.tensors.push_back(std::move(e));
    }
    std::sort(h.tensors.begin(), h.tensors.end(), [](const TensorEntry& a, const TensorEntry& b) {
        return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    // Sorted by start, two non-empty ranges overlap iff one starts before its predecessor ends.
    const TensorEntry* prev = nullptr;
    for (const TensorEntry& e : h.tensors) {
        if (e.begin == e.end) {
            continue;
        }
        if (prev != nullptr && e.begin < prev->end) {
            return tensor_error(file, e.name,
                                "data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                                    ") overlap tensor '" + prev->name + "' [" + std::to_string(prev->begin) + ", " +
                                    std::to_string(prev->end) + ")");
        }
        prev = &e;
    }
    return h;
}

uint64_t TensorSpec::nbytes() const {
    uint64_t n = dtype_size(dtype);
    for (auto d : shape) n *= static_cast<uint64_t>(d);
    return n;
}

FileLayout plan_file(const std::vector<TensorSpec>& specs, const std::map<std::string, std::string>& metadata) {
    constexpr auto kReplace = nlohmann::json::error_handler_t::replace;
    std::string json = "{";
    uint64_t pos = 0;
    FileLayout layout;
    std::vector<uint64_t> rel;
    for (const TensorSpec& s : specs) {
        const uint64_t nb = s.nbytes();
        json += nlohmann::json(s.name).dump(-1, ' ', false, kReplace);
        json += ":{\"dtype\":\"";
        json += dtype_name(s.dtype);
        json += "\",\"shape\":[";
        for (size_t i = 0; i < s.shape.size(); ++i) {
            json += (i ? "," : "") + std::to_string(s.shape[i]);
        }
        json += "],\"data_offsets\":[" + std::to_string(pos) + "," + std::to_string(pos + nb) + "]},";
        rel.push_back(pos);
        pos += nb;
    }
    nlohmann::json meta = nlohmann::json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    json += "\"__metadata__\":" + meta.dump(-1, ' ', false, kReplace) + "}";
    while (json.size() % 8 != 0) json += ' ';
    layout.header.resize(8);
    uint64_t n = json.size();
    for (int i = 0; i < 8; ++i) layout.header[i] = static_cast<char>((n >> (8 * i)) & 0xff);
    layout.header += json;
    for (uint64_t r : rel) layout.offsets.push_back(layout.header.size() + r);
    layout.file_size = layout.header.size() + pos;
    return layout;
}

namespace {
Status pwrite_all(int fd, const void* bytes, size_t n, uint64_t offset, const std::string& path) {
    const auto* p = static_cast<const uint8_t*>(bytes);
    while (n > 0) {
        ssize_t w = ::pwrite(fd, p, n, static_cast<off_t>(offset));
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            return io_error("cannot write " + path + ": " + std::strerror(errno));
        }
        p += w;
        n -= static_cast<size_t>(w);
        offset += static_cast<uint64_t>(w);
    }
    return ok_status();
}
}  // namespace

StatusOr<std::unique_ptr<FileWriter>> FileWriter::create(const std::string& path,
                                                         std::vector<TensorSpec> specs,
                                                         const std::map<std::string, std::string>& metadata) {
    std::unique_ptr<FileWriter> w(new FileWriter());
    w->path_ = path;
    w->layout_ = plan_file(specs, metadata);
    w->specs_ = std::move(specs);
    w->fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (w->fd_ < 0) {
        return io_error("cannot create " + path + ": " + std::strerror(errno));
    }
    if (::ftruncate(w->fd_, static_cast<off_t>(w->layout_.file_size)) != 0) {
        return io_error("cannot size " + path + ": " + std::strerror(errno));
    }
    DS_RETURN_IF_ERROR(pwrite_all(w->fd_, w->layout_.header.data(), w->layout_.header.size(), 0, path));
    return w;
}

FileWriter::~FileWriter() {
    if (fd_ >= 0) {
        ::close(fd_);
    }
}

Status FileWriter::write(size_t index, uint64_t offset, const void* bytes, size_t n) const {
    if (index >= specs_.size() || offset + n > specs_[index].nbytes()) {
        return internal_error(path_ + ": write outside tensor " + std::to_string(index));
    }
    return pwrite_all(fd_, bytes, n, layout_.offsets[index] + offset, path_);
}

Status FileWriter::finish() {
    if (fd_ < 0) {
        return ok_status();
    }
    const int rc = ::close(fd_);
    fd_ = -1;
    if (rc != 0) {
        return io_error("cannot close " + path_ + ": " + std::strerror(errno));
    }
    return ok_status();
}

Status write_file(const std::string& path,
                  const std::vector<TensorSpec>& specs,
                  const std::vector<const void*>& data,
                  const std::map<std::string, std::string>& metadata) {
    if (data.size() != specs.size()) {
        return invalid_argument("write_file: " + std::to_string(specs.size()) + " specs but " +
                                std::to_string(data.size()) + " buffers");
    }
    DS_ASSIGN_OR_RETURN(auto w, FileWriter::create(path, specs, metadata));
    for (size_t i = 0; i < specs.size(); ++i) {
        DS_RETURN_IF_ERROR(w->write(i, 0, data[i], specs[i].nbytes()));
    }
    return w->finish();
}

}  // namespace deepshard::model::safetensors
