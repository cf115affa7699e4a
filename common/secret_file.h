// Files that hold secrets (the control secret, API keys): readable by their owner only.
#pragma once

#include <string>

#include "common/status.h"

namespace deepshard {

// Reads a secret file: a regular file (no symlink, FIFO or device), not accessible to group or
// others, at most `max_bytes`, returned with surrounding whitespace trimmed. `what` names it in
// errors ("control secret file", "API key file").
StatusOr<std::string> read_secret_file(const std::string& path, const std::string& what, size_t max_bytes = 1u << 16);

// Creates `path` with mode 0600 holding 64 random hex digits (32 bytes from getrandom(2)), fsynced.
// Fails if the file already exists: another job's secret is never overwritten.
Status write_new_secret_file(const std::string& path);

// Creates `path` with mode 0600 holding `content` (O_EXCL: never replaces an existing file).
Status write_secret_file(const std::string& path, const std::string& content);

}  // namespace deepshard
