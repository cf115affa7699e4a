// Reading a checkpoint directory's index and shard headers (model/checkpoint_files.h): the checks
// that need no config and no weight byte. model::Checkpoint builds its tensor table from the result;
// the coordinator computes the model fingerprint from it.
#include "model/checkpoint_files.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace deepshard::model {
namespace fs = std::filesystem;

namespace {

// An index larger than this is not one (the 671B model's is ~9 MB): refuse before reading it.
constexpr uintmax_t kMaxIndexBytes = uintmax_t{256} << 20;

// The index may only name files next to it: a shard name is a plain file name.
bool plain_file_name(const std::string& f) {
    return !f.empty() && f.find('/') == std::string::npos && f.find('\0') == std::string::npos && f != "." && f != "..";
}

StatusOr<std::map<std::string, std::string>> read_index(const std::string& path) {
    std::error_code ec;
    const uintmax_t size = fs::file_size(path, ec);
    if (ec) {
        return io_error("cannot read " + path + ": " + ec.message());
    }
    if (size > kMaxIndexBytes) {
        return data_loss(path + ": " + std::to_string(size) + " bytes is not a plausible index (limit " +
                         std::to_string(kMaxIndexBytes) + ")");
    }
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        return io_error("cannot read " + path);
    }
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string text = ss.str();
    nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) {
        return data_loss(path + ": malformed index: not a JSON object");
    }
    auto wm = j.find("weight_map");
    if (wm == j.end() || !wm->is_object()) {
        return data_loss(path + ": malformed index: no \"weight_map\" object");
    }
    std::map<std::string, std::string> out;
    for (auto it = wm->begin(); it != wm->end(); ++it) {
        if (!it->is_string()) {
            return data_loss(path + ": weight_map entry for tensor '" + it.key() + "' is not a file name");
        }
        out[it.key()] = it->get<std::string>();
    }
    if (out.empty()) {
        return data_loss(path + ": weight_map is empty");
    }
    return out;
}

}  // namespace

bool has_checkpoint_files(const std::string& dir) {
    std::error_code ec;
    return fs::exists(fs::path(dir) / "model.safetensors.index.json", ec) ||
           fs::exists(fs::path(dir) / "model.safetensors", ec);
}

StatusOr<CheckpointFiles> open_checkpoint_files(const std::string& dir) {
    CheckpointFiles out;
    std::error_code ec;
    const std::string index_path = (fs::path(dir) / "model.safetensors.index.json").string();
    std::map<std::string, std::string> first_tensor_of;  // file -> a tensor naming it (for messages)
    if (fs::exists(index_path, ec)) {
        out.index_path = index_path;
        DS_ASSIGN_OR_RETURN(out.weight_map, read_index(index_path));
        for (const auto& [tensor, file] : out.weight_map) first_tensor_of.emplace(file, tensor);
    } else if (fs::exists(fs::path(dir) / "model.safetensors", ec)) {
        first_tensor_of.emplace("model.safetensors", "");
    } else {
        return not_found(dir + ": no model.safetensors.index.json and no model.safetensors");
    }
    std::map<std::string, std::string> file_of;  // tensor -> the file whose header holds it
    for (const auto& [file, tensor] : first_tensor_of) {
        const std::string path = (fs::path(dir) / file).string();
        if (!plain_file_name(file)) {
            return data_loss(index_path + ": shard '" + file + "' (of tensor '" + tensor +
                             "') is not a plain file name");
        }
        if (!fs::is_regular_file(path, ec)) {
            return not_found(index_path + ": names shard '" + file + "' (for tensor '" + tensor +
                             "'), which does not exist in " + dir);
        }
        CheckpointFile cf;
        cf.name = file;
        DS_ASSIGN_OR_RETURN(cf.file, MappedFile::open(path));
        DS_ASSIGN_OR_RETURN(cf.header, safetensors::parse_header(cf.file.data(), cf.file.size(), path));
        for (const auto& e : cf.header.tensors) {
            if (auto [it, fresh] = file_of.emplace(e.name, file); !fresh) {
                return data_loss(path + ": tensor '" + e.name + "' also appears in " + it->second);
            }
        }
        out.files.push_back(std::move(cf));
    }
    for (const auto& [tensor, file] : out.weight_map) {
        auto it = file_of.find(tensor);
        if (it == file_of.end()) {
            return data_loss(index_path + ": tensor '" + tensor + "' is mapped to " + file +
                             ", whose header does not contain it");
        }
        if (it->second != file) {
            return data_loss(index_path + ": tensor '" + tensor + "' is mapped to " + file + " but is stored in " +
                             it->second);
        }
    }
    return out;
}

FingerprintBuilder::FingerprintBuilder(uint64_t config_hash) { mix_u64(config_hash); }

void FingerprintBuilder::mix(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    for (size_t i = 0; i < n; ++i) h_ = (h_ ^ b[i]) * 1099511628211ull;
}

void FingerprintBuilder::add(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                             uint64_t nbytes) {
    mix(name.c_str(), name.size() + 1);
    mix_u64(static_cast<uint64_t>(dtype));
    mix_u64(shape.size());
    for (auto d : shape) mix_u64(static_cast<uint64_t>(d));
    mix_u64(nbytes);
}

uint64_t checkpoint_fingerprint(const CheckpointFiles& files, uint64_t config_hash) {
    std::map<std::string, const safetensors::TensorEntry*> by_name;  // name order: independent of the sharding
    for (const auto& f : files.files) {
        for (const auto& e : f.header.tensors) by_name.emplace(e.name, &e);
    }
    FingerprintBuilder fp(config_hash);
    for (const auto& [name, e] : by_name) fp.add(name, e->dtype, e->shape, e->end - e->begin);
    return fp.value();
}

}  // namespace deepshard::model
