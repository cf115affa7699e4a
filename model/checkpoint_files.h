// The files of a checkpoint directory and what their headers say: model.safetensors.index.json (or a
// single model.safetensors), every shard's safetensors header, and the model fingerprint computed
// from them. Nothing here reads a weight byte or needs the kernels, so the coordinator (which must
// not link the weights code, DESIGN §1) and model::Checkpoint share this one reader and therefore
// one fingerprint: a shard job's Hello matches the coordinator only when both saw the same files.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/mapped_file.h"
#include "common/status.h"
#include "model/safetensors.h"

namespace deepshard::model {

struct CheckpointFile {
    std::string name;  // plain file name inside the directory
    MappedFile file;   // the whole file, mapped: only the header pages have been touched
    safetensors::Header header;
};

struct CheckpointFiles {
    std::string index_path;                        // "" when the directory has a single model.safetensors
    std::map<std::string, std::string> weight_map;  // the index's tensor -> file name (empty without one)
    std::vector<CheckpointFile> files;             // in file-name order
};

// Opens `dir`'s index (or its model.safetensors) and parses every shard header. Checks that shard
// names are plain file names of existing files, headers are valid (safetensors::parse_header), no
// tensor appears in two files, and the index agrees with the headers. Errors name the file and tensor.
StatusOr<CheckpointFiles> open_checkpoint_files(const std::string& dir);

// True when `dir` holds weights (an index or a single model.safetensors).
bool has_checkpoint_files(const std::string& dir);

// The model's identity: FNV-1a over the config hash, then per tensor in name order its name with
// the terminating NUL, dtype, rank, dims and byte size (u64s in native byte order). Not the data.
// Feed tensors with add() in strictly increasing name order.
class FingerprintBuilder {
public:
    explicit FingerprintBuilder(uint64_t config_hash);
    void add(const std::string& name, DType dtype, const std::vector<int64_t>& shape, uint64_t nbytes);
    uint64_t value() const { return h_; }

private:
    void mix(const void* p, size_t n);
    void mix_u64(uint64_t v) { mix(&v, sizeof(v)); }
    uint64_t h_ = 1469598103934665603ull;
};

// The fingerprint of the tensors `files` holds (what model::Checkpoint::fingerprint() returns for
// the same directory).
uint64_t checkpoint_fingerprint(const CheckpointFiles& files, uint64_t config_hash);

}  // namespace deepshard::model
