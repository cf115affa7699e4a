// Logging goes through spdlog (to stderr). init_logging() applies DS_LOG_LEVEL once per process.
#pragma once

#include <spdlog/spdlog.h>

namespace deepshard {
void init_logging();
}  // namespace deepshard
