// Engine registry: every engine this build has is listed here explicitly (no static registration,
// which static libraries can silently drop).
#include "model/engine.h"

#include <string>

#include "model/cpu_engine.h"
#include "model/cuda_engine.h"

namespace deepshard::model {

const char* device_name(Device d) {
    switch (d) {
        case Device::kCpu:
            return "cpu";
        case Device::kCuda:
            return "cuda";
    }
    return "?";
}

StatusOr<Device> parse_device(std::string_view name) {
    if (name == "cpu") return Device::kCpu;
    if (name == "cuda") return Device::kCuda;
    return invalid_argument("device must be \"cpu\" or \"cuda\", got \"" + std::string(name) + "\"");
}

const char* precision_name(Precision p) {
    switch (p) {
        case Precision::kDefault:
            return "default";
        case Precision::kExact:
            return "exact";
        case Precision::kFast:
            return "fast";
    }
    return "?";
}

StatusOr<Precision> parse_precision(std::string_view name) {
    if (name == "default") return Precision::kDefault;
    if (name == "exact") return Precision::kExact;
    if (name == "fast") return Precision::kFast;
    return invalid_argument("precision must be \"default\", \"exact\" or \"fast\", got \"" + std::string(name) + "\"");
}

StatusOr<std::unique_ptr<Engine>> create_engine(Device device, std::shared_ptr<const ShardWeights> weights,
                                                const EngineOptions& options) {
    switch (device) {
        case Device::kCpu: {
            DS_ASSIGN_OR_RETURN(auto e, CpuEngine::create(std::move(weights), options));
            return std::unique_ptr<Engine>(std::move(e));
        }
        case Device::kCuda:
#if defined(DS_WITH_CUDA_ENGINE)
            return create_cuda_engine(std::move(weights), options);
#else
            return unavailable("device cuda: this build of deepshard has no CUDA engine (run with --device cpu)");
#endif
    }
    return invalid_argument("unknown device");
}

StatusOr<std::unique_ptr<Engine>> create_engine(Device device, std::shared_ptr<const Checkpoint> checkpoint,
                                                const ShardSpec& spec, const EngineOptions& options) {
    if (options.head_fp8 && device != Device::kCpu) {
        // The CUDA engine uploads the checkpoint's own bytes of every tensor (ShardWeights::tensors).
        return invalid_argument("--head-fp8 (an FP8 requantized output head) is a CPU engine option; device " +
                                std::string(device_name(device)) + " keeps the checkpoint's head");
    }
    ShardSpec s = spec;
    s.head_fp8 = s.head_fp8 || options.head_fp8;
    DS_ASSIGN_OR_RETURN(auto weights, ShardWeights::load(std::move(checkpoint), s));
    return create_engine(device, std::move(weights), options);
}

}  // namespace deepshard::model
