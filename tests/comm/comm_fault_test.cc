// A rank that hangs, is killed or exits inside a collective: the job must end (non-zero) with a
// clear error within the deadline instead of hanging. Spawns `mpirun ... comm_fault_helper`.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

struct RunResult {
    bool timed_out = false;
    int exit_code = -1;  // exit status, or 128+signal
    double seconds = 0;
    std::string output;
};

std::vector<std::string> split_words(const std::string& s) {
    std::istringstream in(s);
    std::vector<std::string> out;
    for (std::string w; in >> w;) {
        out.push_back(w);
    }
    return out;
}

RunResult run_job(const std::string& mode, int np, int deadline_ms, int limit_s) {
    std::vector<std::string> args = {DS_MPIEXEC, "-np", std::to_string(np)};
    for (auto& f : split_words(DS_MPIRUN_FLAGS)) {
        args.push_back(f);
    }
    args.push_back(DS_FAULT_HELPER);
    args.push_back(mode);
    args.push_back(std::to_string(deadline_ms));
    std::string log = ::testing::TempDir() + "comm_fault_" + mode + "_" + std::to_string(getpid()) + ".log";

    auto t0 = std::chrono::steady_clock::now();
    pid_t pid = fork();
    if (pid == 0) {
        setpgid(0, 0);  // own process group, so a stuck job can be ended without touching others
        int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 1);
        dup2(fd, 2);
        setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
        setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
        std::vector<char*> argv;
        for (auto& a : args) {
            argv.push_back(a.data());
        }
        argv.push_back(nullptr);
        execv(argv[0], argv.data());
        _exit(127);
    }
    RunResult r;
    int status = 0;
    while (true) {
        pid_t done = waitpid(pid, &status, WNOHANG);
        if (done == pid) {
            break;
        }
        if (std::chrono::steady_clock::now() - t0 > std::chrono::seconds(limit_s)) {
            r.timed_out = true;
            kill(-pid, SIGTERM);
            std::this_thread::sleep_for(std::chrono::seconds(2));
            kill(-pid, SIGKILL);
            waitpid(pid, &status, 0);
            break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    std::ifstream in(log);
    std::stringstream ss;
    ss << in.rdbuf();
    r.output = ss.str();
    std::remove(log.c_str());
    return r;
}

bool contains(const std::string& s, const std::string& what) {
    return s.find(what) != std::string::npos;
}

TEST(CommFault, HealthyJobSucceeds) {
    RunResult r = run_job("ok", 3, 5000, 120);
    ASSERT_FALSE(r.timed_out) << r.output;
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_TRUE(contains(r.output, "rank 0 ok 9")) << r.output;
}

TEST(CommFault, HungPeerGivesDeadlineErrorNotHang) {
    const int deadline_ms = 1000;
    RunResult r = run_job("hang", 3, deadline_ms, 120);
    std::printf("hang: exit %d after %.1f s\n%s\n", r.exit_code, r.seconds, r.output.c_str());
    ASSERT_FALSE(r.timed_out) << "job hung:\n" << r.output;
    EXPECT_NE(r.exit_code, 0);
    EXPECT_TRUE(contains(r.output, "DeadlineExceeded")) << r.output;
    EXPECT_TRUE(contains(r.output, "allreduce_sum")) << r.output;
    EXPECT_TRUE(contains(r.output, "on rank 0/3") || contains(r.output, "on rank 2/3")) << r.output;
}

TEST(CommFault, KilledPeerEndsJobWithError) {
    RunResult r = run_job("kill", 3, 2000, 120);
    std::printf("kill: exit %d after %.1f s\n%s\n", r.exit_code, r.seconds, r.output.c_str());
    ASSERT_FALSE(r.timed_out) << "job hung:\n" << r.output;
    EXPECT_NE(r.exit_code, 0);
    // Either a survivor reported the failure, or mpirun reported the dead rank and tore the job down.
    EXPECT_TRUE(contains(r.output, "deepshard comm fault") || contains(r.output, "signal 9") ||
                contains(r.output, "Killed"))
        << r.output;
}

TEST(CommFault, ExitedPeerEndsJobWithError) {
    RunResult r = run_job("exit", 3, 2000, 120);
    std::printf("exit: exit %d after %.1f s\n%s\n", r.exit_code, r.seconds, r.output.c_str());
    ASSERT_FALSE(r.timed_out) << "job hung:\n" << r.output;
    EXPECT_NE(r.exit_code, 0);
    EXPECT_TRUE(contains(r.output, "deepshard comm fault") || contains(r.output, "without calling") ||
                contains(r.output, "exited"))
        << r.output;
}

}  // namespace
