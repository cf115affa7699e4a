#include "common/cuda_status.h"

#include <string>

namespace deepshard {

Status cuda_error(cudaError_t err, const char* expr, const char* file, int line) {
    return Status(StatusCode::kCuda, std::string(expr) + " failed: " + cudaGetErrorName(err) + ": " +
                                         cudaGetErrorString(err) + " (" + file + ":" + std::to_string(line) + ")");
}

}  // namespace deepshard
