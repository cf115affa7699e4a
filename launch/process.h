// Child processes of deepshard-launch: each in its own process group, stopped by PID (the group, then
// every descendant found in /proc, since mpirun's daemons and ranks may leave the group), with
// bounded waits everywhere. Not thread-safe; the launcher drives them from one thread.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"

namespace deepshard::launch {

struct ChildSpec {
    std::string name;                                      // for messages: "coordinator", "shard job"
    std::vector<std::string> argv;                         // argv[0] looked up in PATH
    std::vector<std::pair<std::string, std::string>> env;  // added to (or replacing in) our environment
    std::string log_path;                                  // stdout+stderr appended here; "" = inherit ours
};

// Every live descendant of `pid` (children, grandchildren...), from /proc.
std::vector<pid_t> descendants_of(pid_t pid);
// "exit status 3", "killed by signal 9 (Killed)".
std::string describe_wait_status(int status);

class Child {
public:
    // fork + exec; the child gets its own process group, default signal dispositions and an empty
    // signal mask (the launcher blocks the signals it waits for). Fails when exec fails.
    static StatusOr<Child> spawn(const ChildSpec& spec);

    Child(Child&& o) noexcept;
    Child& operator=(Child&& o) noexcept;
    Child(const Child&) = delete;
    Child& operator=(const Child&) = delete;
    ~Child();  // stop(short grace) if still running; never throws

    pid_t pid() const { return pid_; }
    const std::string& name() const { return name_; }
    // Non-blocking: the wait status once the child has exited (reaped), nullopt while it runs.
    std::optional<int> poll();
    // SIGTERM to the group and every descendant, wait up to `grace` for all of them to go, then
    // SIGKILL whatever is left and reap. Returns true when nothing had to be SIGKILLed.
    bool stop(std::chrono::milliseconds grace);

private:
    Child(pid_t pid, std::string name) : pid_(pid), name_(std::move(name)) {}
    pid_t pid_ = -1;
    std::string name_;
    std::optional<int> status_;
};

}  // namespace deepshard::launch
