// `deepshard doctor` reports each pre-flight check on its own line and fails (exit 1) exactly when
// something would stop a job: here a port already taken and a corrupt checkpoint.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "tests/util/subprocess.h"

namespace deepshard {
namespace {

using testing_util::binary_path;
using testing_util::run_command;
using testing_util::source_path;

// Binds 127.0.0.1:0 and keeps the socket open; returns the port.
struct HeldPort {
    int fd = -1;
    int port = 0;
    HeldPort() {
        fd = socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
        listen(fd, 1);
        socklen_t len = sizeof(a);
        getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
        port = ntohs(a.sin_port);
    }
    ~HeldPort() { close(fd); }
};

int free_port() {
    HeldPort p;
    return p.port;  // released on return; free unless raced
}

std::string line_of(const std::string& out, const std::string& check) {
    std::istringstream in(out);
    for (std::string line; std::getline(in, line);) {
        if (line.find(" " + check + " ") != std::string::npos) {
            return line;
        }
    }
    return "";
}

TEST(DoctorCli, ReadyHostPassesAndPrintsFingerprint) {
    const auto r = run_command({binary_path("deepshard"), "doctor", "--model", source_path("testdata/golden/tiny-bf16"),
                                "--ports", std::to_string(free_port()), "--np", "2"},
                               std::chrono::seconds(120));
    ASSERT_FALSE(r.timed_out) << r.out << r.err;
    EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
    EXPECT_EQ(line_of(r.out, "checkpoint").rfind("PASS", 0), 0u) << r.out;
    EXPECT_NE(line_of(r.out, "checkpoint").find("fingerprint "), std::string::npos) << r.out;
    EXPECT_EQ(line_of(r.out, "mpi-ranks").rfind("PASS", 0), 0u) << r.out;
    // Every rank fingerprinted the checkpoint on its host and they agree, with the same value.
    const std::string hosts = line_of(r.out, "checkpoint-hosts");
    EXPECT_EQ(hosts.rfind("PASS", 0), 0u) << r.out;
    const std::string ck = line_of(r.out, "checkpoint");
    const std::string fp = ck.substr(ck.find("fingerprint ") + 12, 16);
    EXPECT_NE(hosts.find("same fingerprint " + fp), std::string::npos) << r.out;
    EXPECT_EQ(line_of(r.out, "ports").rfind("PASS", 0), 0u) << r.out;
    // No GPU here: reported as skipped, not passed or failed.
    EXPECT_NE(line_of(r.out, "gpu"), "") << r.out;
}

// The ranks of the cross-host check see a broken checkpoint: the check fails with each host's error
// instead of passing on the ranks that could not read it.
TEST(DoctorCli, RanksThatCannotReadTheCheckpointFailTheHostCheck) {
    const std::string dir = testing_util::make_temp_dir("ds_doctor_ranks_");
    std::filesystem::copy(source_path("testdata/golden/tiny-bf16"), dir, std::filesystem::copy_options::recursive);
    std::filesystem::resize_file(dir + "/model.safetensors", 1000);
    const auto r = run_command({binary_path("deepshard"), "doctor", "--model", dir, "--ports",
                                std::to_string(free_port()), "--np", "2"},
                               std::chrono::seconds(120));
    ASSERT_FALSE(r.timed_out) << r.out << r.err;
    EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
    const std::string hosts = line_of(r.out, "checkpoint-hosts");
    EXPECT_EQ(hosts.rfind("FAIL", 0), 0u) << r.out;
    EXPECT_NE(hosts.find("model.safetensors"), std::string::npos) << r.out;
    std::filesystem::remove_all(dir);
}

TEST(DoctorCli, TakenPortAndCorruptCheckpointFail) {
    HeldPort held;
    const std::string dir = testing_util::make_temp_dir("ds_doctor_");
    std::filesystem::copy(source_path("testdata/golden/tiny-bf16"), dir, std::filesystem::copy_options::recursive);
    // Cut the weights file short: the checkpoint must be reported broken, naming the file.
    std::filesystem::resize_file(dir + "/model.safetensors", 1000);
    const auto r = run_command({binary_path("deepshard"), "doctor", "--model", dir, "--ports",
                                std::to_string(held.port), "--no-mpi-ranks"},
                               std::chrono::seconds(120));
    ASSERT_FALSE(r.timed_out) << r.out << r.err;
    EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
    const std::string ports = line_of(r.out, "ports");
    EXPECT_EQ(ports.rfind("FAIL", 0), 0u) << r.out;
    EXPECT_NE(ports.find(std::to_string(held.port)), std::string::npos) << r.out;
    const std::string ck = line_of(r.out, "checkpoint");
    EXPECT_EQ(ck.rfind("FAIL", 0), 0u) << r.out;
    EXPECT_NE(ck.find("model.safetensors"), std::string::npos) << r.out;
    std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace deepshard
