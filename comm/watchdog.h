// A watchdog for waits that a dead or stuck peer would make endless: device work containing NCCL
// collectives (the stream waits inside an NCCL kernel for a peer that never arrives; nothing returns to
// the host), or anything else whose completion can be polled cheaply.
//
// The owner wraps each such wait in watch(what, done): a thread polls done() every `poll` and, once the
// deadline passes without completion, logs the operation by name, calls `abort` (ncclCommAbort: it stops
// NCCL's kernels, so the stream can drain) on a separate thread bounded by `abort_grace` (an abort that
// itself hangs cannot hold the process), and then calls `on_fatal` with a message saying what happened.
// The default on_fatal logs it and exits with kExitCode, so deepshard-launch restarts the job instead of
// the job hanging; tests inject their own.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>

#include "comm/communicator.h"

namespace deepshard::comm {

class Watchdog {
public:
    // EX_TEMPFAIL: the process did not fail on its own; the job should be restarted.
    static constexpr int kExitCode = 75;

    struct Options {
        Millis deadline = default_timeout();
        Millis abort_grace = Millis(10000);
        Millis poll = Millis(5);
        std::function<void()> abort;                          // may be empty
        std::function<void(const std::string&)> on_fatal;     // default: log, exit(kExitCode)
        std::string name = "watchdog";
    };

    explicit Watchdog(Options options);
    ~Watchdog();
    Watchdog(const Watchdog&) = delete;
    Watchdog& operator=(const Watchdog&) = delete;

    // Watches until the returned scope ends (normally right after the wait returned).
    class Scope {
    public:
        Scope() = default;
        Scope(Watchdog* w, uint64_t id) : w_(w), id_(id) {}
        Scope(Scope&& o) noexcept : w_(o.w_), id_(o.id_) { o.w_ = nullptr; }
        Scope& operator=(Scope&& o) noexcept;
        Scope(const Scope&) = delete;
        Scope& operator=(const Scope&) = delete;
        ~Scope();

    private:
        Watchdog* w_ = nullptr;
        uint64_t id_ = 0;
    };
    Scope watch(std::string what, std::function<bool()> done);

    // How many times the deadline fired (tests).
    int64_t fired() const { return fired_.load(); }

private:
    struct Entry {
        std::string what;
        std::function<bool()> done;
        Clock::time_point deadline;
    };
    void loop();
    void unwatch(uint64_t id);
    void fire(const std::string& what, Millis waited);

    Options opt_;
    std::mutex mu_;
    std::condition_variable cv_;
    std::map<uint64_t, Entry> active_;  // guarded by mu_
    uint64_t next_id_ = 1;              // guarded by mu_
    bool stop_ = false;                 // guarded by mu_
    std::atomic<int64_t> fired_{0};
    std::thread thread_;
};

}  // namespace deepshard::comm
