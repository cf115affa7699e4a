// fork/exec with a pipe that reports exec failures (CLOEXEC: it closes on success), process groups,
// and stop-by-PID. The descendant list is taken before the first signal: once mpirun dies its ranks
// are re-parented and could no longer be found through it.
#include "launch/process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "common/logging.h"

namespace deepshard::launch {

namespace fs = std::filesystem;

std::vector<pid_t> descendants_of(pid_t pid) {
    std::map<pid_t, pid_t> parent;  // pid -> ppid
    std::error_code ec;
    for (const auto& e : fs::directory_iterator("/proc", ec)) {
        const std::string n = e.path().filename().string();
        if (n.empty() || n.find_first_not_of("0123456789") != std::string::npos) {
            continue;
        }
        std::ifstream in(e.path() / "stat");
        std::string stat;
        std::getline(in, stat);
        const auto close_paren = stat.rfind(')');
        if (close_paren == std::string::npos || close_paren + 2 >= stat.size()) {
            continue;
        }
        std::istringstream rest(stat.substr(close_paren + 2));
        char state = 0;
        pid_t ppid = 0;
        if (rest >> state >> ppid && state != 'Z') {
            parent[static_cast<pid_t>(std::stol(n))] = ppid;
        }
    }
    std::vector<pid_t> out, frontier = {pid};
    while (!frontier.empty()) {
        const pid_t p = frontier.back();
        frontier.pop_back();
        for (const auto& [child, pp] : parent) {
            if (pp == p) {
                out.push_back(child);
                frontier.push_back(child);
            }
        }
    }
    return out;
}

std::string describe_wait_status(int status) {
    if (WIFEXITED(status)) {
        return "exit status " + std::to_string(WEXITSTATUS(status));
    }
    if (WIFSIGNALED(status)) {
        return "killed by signal " + std::to_string(WTERMSIG(status)) + " (" + strsignal(WTERMSIG(status)) + ")";
    }
    return "wait status " + std::to_string(status);
}

StatusOr<Child> Child::spawn(const ChildSpec& spec) {
    if (spec.argv.empty()) {
        return invalid_argument("no command for " + spec.name);
    }
    int report[2];
    if (pipe2(report, O_CLOEXEC) != 0) {
        return io_error(std::string("pipe: ") + std::strerror(errno));
    }
    // Everything the child needs is prepared before fork: only async-signal-safe calls after it.
    std::vector<char*> argv;
    for (const auto& a : spec.argv) {
        argv.push_back(const_cast<char*>(a.c_str()));
    }
    argv.push_back(nullptr);
    std::vector<std::string> env_strings;
    for (char** e = environ; *e; ++e) {
        const std::string s = *e;
        const std::string key = s.substr(0, s.find('='));
        bool replaced = false;
        for (const auto& [k, v] : spec.env) {
            replaced = replaced || k == key;
        }
        if (!replaced) {
            env_strings.push_back(s);
        }
    }
    for (const auto& [k, v] : spec.env) {
        env_strings.push_back(k + "=" + v);
    }
    std::vector<char*> envp;
    for (auto& s : env_strings) {
        envp.push_back(s.data());
    }
    envp.push_back(nullptr);
    int log_fd = -1;
    if (!spec.log_path.empty()) {
        log_fd = open(spec.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (log_fd < 0) {
            close(report[0]);
            close(report[1]);
            return io_error("cannot open log " + spec.log_path + ": " + std::strerror(errno));
        }
    }
    const pid_t pid = fork();
    if (pid < 0) {
        const int err = errno;
        close(report[0]);
        close(report[1]);
        if (log_fd >= 0) {
            close(log_fd);
        }
        return io_error(std::string("fork: ") + std::strerror(err));
    }
    if (pid == 0) {
        setpgid(0, 0);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, nullptr);
        for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGPIPE, SIGCHLD}) {
            signal(sig, SIG_DFL);
        }
        if (log_fd >= 0) {
            dup2(log_fd, 1);
            dup2(log_fd, 2);
        }
        execvpe(argv[0], argv.data(), envp.data());
        const int err = errno;
        ssize_t ignored = write(report[1], &err, sizeof(err));
        (void)ignored;
        _exit(127);
    }
    setpgid(pid, pid);  // also here, so the group exists whichever of the two runs first
    close(report[1]);
    if (log_fd >= 0) {
        close(log_fd);
    }
    int err = 0;
    ssize_t n;
    do {
        n = read(report[0], &err, sizeof(err));
    } while (n < 0 && errno == EINTR);
    close(report[0]);
    if (n == static_cast<ssize_t>(sizeof(err))) {
        int status = 0;
        waitpid(pid, &status, 0);
        return unavailable("cannot start " + spec.name + " (" + spec.argv[0] + "): " + std::strerror(err));
    }
    return Child(pid, spec.name);
}

Child::Child(Child&& o) noexcept : pid_(o.pid_), name_(std::move(o.name_)), status_(o.status_) { o.pid_ = -1; }

Child& Child::operator=(Child&& o) noexcept {
    if (this != &o) {
        if (pid_ > 0 && !status_) {
            stop(std::chrono::seconds(5));
        }
        pid_ = o.pid_;
        name_ = std::move(o.name_);
        status_ = o.status_;
        o.pid_ = -1;
    }
    return *this;
}

Child::~Child() {
    if (pid_ > 0 && !status_) {
        stop(std::chrono::seconds(5));
    }
}

std::optional<int> Child::poll() {
    if (pid_ <= 0 || status_) {
        return status_;
    }
    int status = 0;
    pid_t r;
    do {
        r = waitpid(pid_, &status, WNOHANG);
    } while (r < 0 && errno == EINTR);
    if (r == pid_) {
        status_ = status;
    } else if (r < 0) {
        status_ = 0;  // not our child any more (ECHILD): nothing to wait for
    }
    return status_;
}

bool Child::stop(std::chrono::milliseconds grace) {
    if (pid_ <= 0) {
        return true;
    }
    std::vector<pid_t> all = descendants_of(pid_);
    if (!poll()) {
        all.push_back(pid_);
    }
    // Always the group too: it outlives its leader when ranks were orphaned, and while any member
    // lives the kernel does not hand its number out as a new PID, so it is still ours.
    ::kill(-pid_, SIGTERM);
    for (pid_t p : all) {
        ::kill(p, SIGTERM);
    }
    auto alive = [&] {
        poll();
        std::vector<pid_t> left;
        for (pid_t p : all) {
            if (p == pid_ ? !status_.has_value() : ::kill(p, 0) == 0) {
                // A zombie of someone else's (reparented to init, not yet reaped) counts as gone.
                std::ifstream in("/proc/" + std::to_string(p) + "/stat");
                std::string stat;
                std::getline(in, stat);
                const auto cp = stat.rfind(')');
                if (p == pid_ || (cp != std::string::npos && cp + 2 < stat.size() && stat[cp + 2] != 'Z')) {
                    left.push_back(p);
                }
            }
        }
        if (::kill(-pid_, 0) == 0 && left.empty() && status_) {
            left.push_back(-pid_);  // members of the group we did not see as descendants
        }
        return left;
    };
    const auto deadline = std::chrono::steady_clock::now() + grace;
    std::vector<pid_t> left = alive();
    while (!left.empty() && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        // Processes started after the first look (mpirun spawning while we stop it) are caught too.
        if (!status_) {
            for (pid_t p : descendants_of(pid_)) {
                if (std::find(all.begin(), all.end(), p) == all.end()) {
                    all.push_back(p);
                    ::kill(p, SIGTERM);
                }
            }
        }
        left = alive();
    }
    const bool clean = left.empty();
    if (!clean) {
        spdlog::warn("{} (pid {}): {} process(es) still alive {} ms after SIGTERM; sending SIGKILL", name_, pid_,
                     left.size(), grace.count());
        ::kill(-pid_, SIGKILL);
        for (pid_t p : left) {
            ::kill(p, SIGKILL);
        }
    }
    if (!status_) {
        // SIGKILL cannot be ignored; the bounded loop only guards against a stuck reap (D state).
        for (int i = 0; i < 200 && !poll(); ++i) {
            std::this_thread::sleep_for(std::chrono::milliseconds(25));
        }
    }
    return clean;
}

}  // namespace deepshard::launch
