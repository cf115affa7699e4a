// Watchdog (see watchdog.h).
#include "comm/watchdog.h"

#include <cstdio>
#include <cstdlib>
#include <memory>

#include "common/logging.h"

namespace deepshard::comm {

Watchdog::Watchdog(Options options) : opt_(std::move(options)) {
    if (!opt_.on_fatal) {
        opt_.on_fatal = [](const std::string& m) {
            spdlog::critical("{}", m);
            spdlog::default_logger()->flush();
            std::fprintf(stderr, "fatal: %s\n", m.c_str());  // also where launchers and tests look
            std::fflush(stderr);
            std::_Exit(kExitCode);
        };
    }
    thread_ = std::thread([this] { loop(); });
}

Watchdog::~Watchdog() {
    {
        std::lock_guard<std::mutex> lock(mu_);
        stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
}

Watchdog::Scope& Watchdog::Scope::operator=(Scope&& o) noexcept {
    if (this != &o) {
        if (w_ != nullptr) w_->unwatch(id_);
        w_ = o.w_;
        id_ = o.id_;
        o.w_ = nullptr;
    }
    return *this;
}

Watchdog::Scope::~Scope() {
    if (w_ != nullptr) w_->unwatch(id_);
}

Watchdog::Scope Watchdog::watch(std::string what, std::function<bool()> done) {
    std::lock_guard<std::mutex> lock(mu_);
    const uint64_t id = next_id_++;
    active_[id] = Entry{std::move(what), std::move(done), Clock::now() + opt_.deadline};
    cv_.notify_all();
    return Scope(this, id);
}

void Watchdog::unwatch(uint64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    active_.erase(id);
}

void Watchdog::loop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
        cv_.wait_for(lock, opt_.poll);
        if (stop_) break;
        const auto now = Clock::now();
        for (auto it = active_.begin(); it != active_.end();) {
            // done() runs under the lock: it must be a cheap poll (cudaEventQuery, an atomic load).
            if (it->second.done()) {
                it = active_.erase(it);
                continue;
            }
            if (now >= it->second.deadline) {
                const std::string what = it->second.what;
                active_.erase(it);
                lock.unlock();
                fire(what, opt_.deadline);
                lock.lock();
                it = active_.begin();
                continue;
            }
            ++it;
        }
    }
}

void Watchdog::fire(const std::string& what, Millis waited) {
    ++fired_;
    spdlog::error("{}: {} did not complete within {} ms (a peer is dead, hung or not participating); aborting",
                  opt_.name, what, waited.count());
    bool aborted = true;
    if (opt_.abort) {
        // The abort runs on its own thread: if it hangs too, the grace timer still ends the wait.
        auto state = std::make_shared<std::pair<std::mutex, std::condition_variable>>();
        auto finished = std::make_shared<bool>(false);
        std::function<void()> abort = opt_.abort;
        std::thread([state, finished, abort] {
            abort();
            std::lock_guard<std::mutex> l(state->first);
            *finished = true;
            state->second.notify_all();
        }).detach();
        std::unique_lock<std::mutex> l(state->first);
        aborted = state->second.wait_for(l, opt_.abort_grace, [&] { return *finished; });
    }
    opt_.on_fatal(opt_.name + ": " + what + " did not complete within " + std::to_string(waited.count()) +
                  " ms (a peer is dead, hung or not participating); " +
                  (aborted ? std::string("the communicator was aborted")
                           : "the abort itself did not return within " + std::to_string(opt_.abort_grace.count()) +
                                 " ms") +
                  "; exiting so the job can be restarted");
}

}  // namespace deepshard::comm
