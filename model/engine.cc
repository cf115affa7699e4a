// Engine registry: every engine this build has is listed here explicitly (no static registration,
// which static libraries can silently drop).
#include "model/engine.h"

#include <string>

#include "model/cpu_engine.h"

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

StatusOr<std::unique_ptr<Engine>> create_engine(Device device, std::shared_ptr<const ShardWeights> weights,
                                                const EngineOptions& options) {
    switch (device) {
        case Device::kCpu: {
            DS_ASSIGN_OR_RETURN(auto e, CpuEngine::create(std::move(weights), options));
            return std::unique_ptr<Engine>(std::move(e));
        }
        case Device::kCuda:
            // TODO(cuda-engine): #10 register the CUDA engine here under DS_WITH_CUDA.
            return unavailable("device cuda: this build of deepshard has no CUDA engine (run with --device cpu)");
    }
    return invalid_argument("unknown device");
}

StatusOr<std::unique_ptr<Engine>> create_engine(Device device, std::shared_ptr<const Checkpoint> checkpoint,
                                                const ShardSpec& spec, const EngineOptions& options) {
    DS_ASSIGN_OR_RETURN(auto weights, ShardWeights::load(std::move(checkpoint), spec));
    return create_engine(device, std::move(weights), options);
}

}  // namespace deepshard::model
