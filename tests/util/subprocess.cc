#include "tests/util/subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <thread>

namespace deepshard::testing_util {

void exec_in_child(const std::vector<std::string>& argv, const std::vector<std::string>& env) {
    for (const auto& e : env) putenv(strdup(e.c_str()));
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    std::fprintf(stderr, "exec %s failed: %s\n", args[0], std::strerror(errno));
    _exit(127);
}

CommandResult run_command(const std::vector<std::string>& argv, std::chrono::milliseconds timeout,
                          const std::vector<std::string>& env, const std::string& stdin_data) {
    CommandResult r;
    int out_pipe[2], err_pipe[2], in_pipe[2];
    if (pipe(out_pipe) != 0 || pipe(err_pipe) != 0 || pipe(in_pipe) != 0) {
        r.err = "pipe failed";
        return r;
    }
    const auto t0 = std::chrono::steady_clock::now();
    pid_t pid = fork();
    if (pid == 0) {
        setpgid(0, 0);
        dup2(in_pipe[0], 0);
        dup2(out_pipe[1], 1);
        dup2(err_pipe[1], 2);
        for (int fd : {out_pipe[0], out_pipe[1], err_pipe[0], err_pipe[1], in_pipe[0], in_pipe[1]}) close(fd);
        exec_in_child(argv, env);
    }
    setpgid(pid, pid);
    close(out_pipe[1]);
    close(err_pipe[1]);
    close(in_pipe[0]);
    if (!stdin_data.empty()) {
        ssize_t w = write(in_pipe[1], stdin_data.data(), stdin_data.size());
        (void)w;
    }
    close(in_pipe[1]);
    const auto deadline = t0 + timeout;
    bool out_open = true, err_open = true;
    char buf[65536];
    while (out_open || err_open) {
        const auto now = std::chrono::steady_clock::now();
        if (now >= deadline) {
            r.timed_out = true;
            kill(-pid, SIGKILL);
            break;
        }
        pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
        const int ms = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count());
        if (poll(fds, 2, std::min(ms, 200)) < 0) break;
        for (int i = 0; i < 2; ++i) {
            if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            ssize_t n = read(fds[i].fd, buf, sizeof(buf));
            if (n <= 0) {
                (i == 0 ? out_open : err_open) = false;
            } else {
                (i == 0 ? r.out : r.err).append(buf, static_cast<size_t>(n));
            }
        }
    }
    int status = 0;
    waitpid(pid, &status, 0);
    // Whatever the child left in its process group (e.g. orphaned ranks) goes too.
    kill(-pid, SIGKILL);
    close(out_pipe[0]);
    close(err_pipe[0]);
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return r;
}

std::string binary_path(const std::string& name) {
    const char* b = std::getenv("DS_BINARY_DIR");
    return std::string(b ? b : ".") + "/bin/" + name;
}

std::string source_path(const std::string& rel) {
    const char* s = std::getenv("DS_SOURCE_DIR");
    return std::string(s ? s : ".") + "/" + rel;
}

std::string make_temp_dir(const std::string& prefix) {
    std::string tmpl = "/tmp/" + prefix + "XXXXXX";
    char* d = mkdtemp(tmpl.data());
    if (d == nullptr) throw std::runtime_error("mkdtemp failed");
    return d;
}

std::vector<std::string> mpirun_prefix(int np) {
    return {"mpirun",    "-np",  std::to_string(np), "--allow-run-as-root", "--oversubscribe", "--bind-to",
            "none",      "--mca", "btl",              "self,vader,tcp",     "--mca",           "btl_tcp_if_include",
            "lo",        "--mca", "oob_tcp_if_include", "lo"};
}

}  // namespace deepshard::testing_util
