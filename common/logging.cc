#include "common/logging.h"

#include <spdlog/sinks/stdout_color_sinks.h>

#include "common/env.h"

namespace deepshard {

void init_logging() {
    static bool done = false;
    if (done) {
        return;
    }
    done = true;
    auto logger = spdlog::stderr_color_mt("deepshard");
    spdlog::set_default_logger(logger);
    spdlog::set_pattern("[%H:%M:%S.%e] [%^%l%$] %v");
    spdlog::set_level(spdlog::level::from_str(env_str("DS_LOG_LEVEL")));
}

}  // namespace deepshard
