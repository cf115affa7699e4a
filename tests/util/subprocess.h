// Test helper: run a real command (mpirun jobs, the deepshard binaries) with a deadline, capturing
// its exit status and output. The child gets its own process group so a timeout kills all of it.
#pragma once

#include <chrono>
#include <string>
#include <vector>

namespace deepshard::testing_util {

struct CommandResult {
    int exit_code = -1;       // exit status, or 128+signal
    bool timed_out = false;
    std::string out;          // stdout
    std::string err;          // stderr
    double seconds = 0;
};

// Runs `argv` (argv[0] looked up in PATH) with extra environment entries "K=V".
CommandResult run_command(const std::vector<std::string>& argv, std::chrono::milliseconds timeout,
                          const std::vector<std::string>& env = {}, const std::string& stdin_data = "");

// In a forked child: adds env entries "K=V", execs argv (PATH lookup); on failure prints why, _exit(127).
[[noreturn]] void exec_in_child(const std::vector<std::string>& argv, const std::vector<std::string>& env);

// $DS_BINARY_DIR/bin/<name>, $DS_SOURCE_DIR/<rel>.
std::string binary_path(const std::string& name);
std::string source_path(const std::string& rel);
// A fresh temporary directory (removed by the caller if wanted).
std::string make_temp_dir(const std::string& prefix);

// mpirun with the flags every multi-rank test needs (root allowed, oversubscribed, loopback TCP).
std::vector<std::string> mpirun_prefix(int np);

}  // namespace deepshard::testing_util
