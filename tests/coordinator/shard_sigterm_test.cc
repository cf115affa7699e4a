// A clean SIGTERM of the shard job (what the launcher, scancel or an operator sends to mpirun):
// mpirun forwards it to the ranks; the leader tells the coordinator that the job leaves, so the
// coordinator reports a departure ("shard job left"), not a loss, and no rank is left running.
// Real processes: deepshard-coordinator and a 4-rank mpirun job on the tiny golden model.
#include <signal.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "tests/coordinator/live_util.h"
#include "tests/util/subprocess.h"

namespace deepshard {
namespace {

using namespace testing_util;
using namespace std::chrono_literals;

// Gone or a zombie waiting for its reaper.
bool process_gone(pid_t pid) {
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    if (!stat) return true;
    std::string line;
    std::getline(stat, line);
    const auto close = line.rfind(')');
    return close != std::string::npos && close + 2 < line.size() && line[close + 2] == 'Z';
}

TEST(ShardSigtermTest, ACleanSigtermOfTheShardJobIsADepartureNotALoss) {
    ensure_test_env();
    const std::string dir = make_temp_dir("ds_shard_sigterm");
    LiveCluster cluster;
    const std::string err = cluster.start(source_path("testdata/golden/tiny-bf16"), dir);
    ASSERT_EQ(err, "");
    const auto r = http_request(cluster.http(), "POST", "/v1/completions",
                                R"({"model":"tiny-bf16","prompt":[5,6,7],"max_tokens":2,"ignore_eos":true})", {}, 120s);
    ASSERT_EQ(r.status, 200) << r.body << cluster.logs();
    const std::vector<pid_t> ranks = cluster.shard()->descendants("deepshard-shard");
    ASSERT_EQ(ranks.size(), 4u) << cluster.logs();

    ASSERT_EQ(::kill(cluster.shard()->pid(), SIGTERM), 0);
    ASSERT_TRUE(cluster.shard()->wait_exit(60s).has_value()) << "mpirun did not exit after SIGTERM\n"
                                                             << cluster.logs();
    for (pid_t p : ranks) {
        for (int i = 0; i < 500 && !process_gone(p); ++i) std::this_thread::sleep_for(20ms);
        EXPECT_TRUE(process_gone(p)) << "rank process " << p << " outlived mpirun";
    }
    ASSERT_TRUE(cluster.wait_health(503, 30s)) << cluster.logs();
    const auto h = http_request(cluster.http(), "GET", "/health", "", {}, 5s);
    EXPECT_NE(h.body.find("shard job left"), std::string::npos) << h.body;
    EXPECT_NE(h.body.find("stopped by a signal"), std::string::npos) << h.body;
    const std::string coordinator_log = cluster.coordinator().log();
    EXPECT_EQ(coordinator_log.find("lost"), std::string::npos) << coordinator_log;
    // (The coordinator's word for it: mpirun may drop the ranks' last output while it stops them.)
    EXPECT_NE(coordinator_log.find("shard job left: the shard job shut down"), std::string::npos) << coordinator_log;
    // The coordinator keeps serving: it answers the next request with a clear 503 (no job).
    const auto r2 = http_request(cluster.http(), "POST", "/v1/completions",
                                 R"({"model":"tiny-bf16","prompt":[5,6,7],"max_tokens":2})", {}, 30s);
    EXPECT_EQ(r2.status, 503) << r2.body;
    std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace deepshard
