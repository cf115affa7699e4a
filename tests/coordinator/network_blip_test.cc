// A 2.5 s network blip on the control link (issue 12 parts 3 and 6): every packet to or from the
// coordinator's control port is dropped, long enough for both sides to declare the link lost
// (3 missed heartbeats of 500 ms). The shard job's leader reconnects and resumes its session within
// the grace period: no reload (same mpirun job, same ranks, same session), nothing counted as a
// lost job, and a request submitted during the blip completes with the output it has without one.
//
// Real processes: deepshard-coordinator and a 4-rank mpirun job on the tiny golden model, all in a
// network namespace of this test's own (unshare(CLONE_NEWNET); needs root), so that the traffic
// control rules touch nobody else: an htb root on that namespace's lo whose u32 filters send the
// control port's packets to a class with a zero-length queue (every packet dropped) while the blip
// lasts; MPI, HTTP and everything else pass. (Debian's kernel here has no sch_netem/sch_prio; htb,
// pfifo and u32 are enough for a partition.)
//
// A lossy control link (issue 12 part 6, netem's "loss" without netem): iptables' statistic match
// drops a random 20% of the control port's packets in both directions while requests run. TCP
// retransmits, heartbeats go missing, the link may break and resume: every request still ends with
// exactly the output it has on a clean link.
//
// A delayed control link (netem's "delay"): this kernel has no qdisc that holds packets for a time
// (no sch_netem, no sch_fq for EDT), so a proxy in the link delivers every byte 150 ms late each way
// (tests/coordinator/delay_proxy.h). Outputs are unchanged, the coordinator's step round trip shows
// the delay, and the job is neither lost nor re-registered.
#include <sched.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <future>
#include <thread>
#include <sstream>

#include "tests/coordinator/delay_proxy.h"
#include "tests/coordinator/live_util.h"
#include "tests/util/subprocess.h"

namespace deepshard {
namespace {

using namespace testing_util;
using namespace std::chrono_literals;
using nlohmann::json;

// Runs `tool args...`: "" on success, else what it said.
std::string run_tool(const char* tool, const std::vector<std::string>& args) {
    std::vector<std::string> cmd{tool};
    cmd.insert(cmd.end(), args.begin(), args.end());
    const auto r = run_command(cmd, std::chrono::seconds(10));
    return r.exit_code == 0 ? "" : std::string(tool) + " failed: " + r.out + r.err;
}

std::string tc(const std::vector<std::string>& args) {
    return run_tool("tc", args);
}

double metric(const std::string& text, const std::string& name) {
    const auto at = text.find("\n" + name + " ");
    if (at == std::string::npos) return -1;
    return std::stod(text.substr(at + name.size() + 2));
}

TEST(NetworkBlipTest, TheLeaderResumesAfterABlipWithoutAReload) {
    if (::unshare(CLONE_NEWNET) != 0) GTEST_SKIP() << "no private network namespace (needs root): " << strerror(errno);
    ASSERT_EQ(run_command({"ip", "link", "set", "lo", "up"}, 10s).exit_code, 0);
    if (!tc({"qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "1", "r2q", "1000000"}).empty()) {
        GTEST_SKIP() << "no htb qdisc";
    }
    ASSERT_EQ(tc({"class", "add", "dev", "lo", "parent", "1:", "classid", "1:1", "htb", "rate", "10gbit"}), "");
    ASSERT_EQ(tc({"class", "add", "dev", "lo", "parent", "1:", "classid", "1:2", "htb", "rate", "10gbit"}), "");
    ASSERT_EQ(tc({"qdisc", "add", "dev", "lo", "parent", "1:2", "handle", "20:", "pfifo", "limit", "0"}), "");

    ensure_test_env();
    const std::string dir = make_temp_dir("ds_network_blip");
    LiveCluster cluster;
    ASSERT_EQ(cluster.start(source_path("testdata/golden/tiny-bf16"), dir), "");
    const uint16_t http = cluster.http();
    const std::string body = R"({"model":"tiny-bf16","prompt":[5,6,7],"max_tokens":24,"ignore_eos":true})";
    const auto ref = http_request(http, "POST", "/v1/completions", body, {}, 120s);
    ASSERT_EQ(ref.status, 200) << ref.body << cluster.logs();
    const json health0 = http_request(http, "GET", "/health", "", {}, 5s).json();
    const std::vector<pid_t> ranks = cluster.shard()->descendants("deepshard-shard");
    ASSERT_EQ(ranks.size(), 4u);

    // The blip: the control port's packets (both directions) go to the dropping class.
    const std::string port = std::to_string(cluster.port("control"));
    for (const char* dir_kw : {"dport", "sport"}) {
        ASSERT_EQ(tc({"filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32", "match", "ip",
                      dir_kw, port, "0xffff", "flowid", "1:2"}),
                  "");
    }
    // Submitted while the link is down: it waits for the job instead of failing.
    auto during = std::async(std::launch::async, [&] { return http_request(http, "POST", "/v1/completions", body, {}, 120s); });
    std::this_thread::sleep_for(2500ms);
    ASSERT_EQ(tc({"filter", "del", "dev", "lo", "parent", "1:", "prio", "1"}), "");

    const HttpResponse r = during.get();
    ASSERT_EQ(r.status, 200) << r.body << cluster.logs();
    EXPECT_EQ(r.json()["choices"][0]["text"], ref.json()["choices"][0]["text"]) << r.body << "\n" << ref.body;
    // The link really broke, and the session was resumed rather than replaced.
    const std::string m = http_request(http, "GET", "/metrics", "", {}, 5s).body;
    EXPECT_EQ(metric(m, "deepshard_control_resumes_total"), 1) << m;
    EXPECT_EQ(metric(m, "deepshard_shard_losses_total"), 0) << m;
    const json health1 = http_request(http, "GET", "/health", "", {}, 5s).json();
    EXPECT_EQ(health1.value("status", ""), "ok") << health1.dump();
    EXPECT_EQ(health1["session_id"], health0["session_id"]) << health1.dump();
    // No reload: the same job and ranks, registered once.
    EXPECT_TRUE(cluster.shard()->running()) << cluster.logs();
    EXPECT_EQ(cluster.shard()->descendants("deepshard-shard"), ranks);
    const std::string shard_log = cluster.shard()->log();
    const auto first = shard_log.find("registered with the coordinator");
    ASSERT_NE(first, std::string::npos) << shard_log;
    EXPECT_EQ(shard_log.find("registered with the coordinator", first + 1), std::string::npos) << shard_log;
    EXPECT_NE(shard_log.find("resumed session"), std::string::npos) << shard_log;
    std::filesystem::remove_all(dir);
}

TEST(NetworkBlipTest, ADelayedControlLinkLosesNothing) {
    ensure_test_env();
    const std::string dir = make_temp_dir("ds_network_delay");
    LiveCluster cluster;
    ASSERT_EQ(cluster.start_coordinator(source_path("testdata/golden/tiny-bf16"), dir, {}), "");
    DelayProxy proxy(static_cast<uint16_t>(cluster.port("control")), 0ms);
    cluster.set_job_control_port(proxy.port());
    cluster.start_shard_job();
    ASSERT_TRUE(cluster.wait_health(200, 180s)) << cluster.logs();
    const uint16_t http = cluster.http();
    const std::vector<std::string> bodies = {
        R"({"model":"tiny-bf16","prompt":[5,6,7],"max_tokens":12,"ignore_eos":true})",
        R"({"model":"tiny-bf16","prompt":[9,4],"max_tokens":12,"ignore_eos":true,"temperature":0.8,"seed":7})",
    };
    std::vector<std::string> ref;
    for (const std::string& b : bodies) {
        const auto r = http_request(http, "POST", "/v1/completions", b, {}, 120s);
        ASSERT_EQ(r.status, 200) << r.body << cluster.logs();
        ref.push_back(r.json()["choices"][0]["text"].get<std::string>());
    }
    const std::string m0 = http_request(http, "GET", "/metrics", "", {}, 5s).body;

    constexpr auto kDelay = 150ms;
    proxy.set_delay(kDelay);
    std::vector<std::future<HttpResponse>> runs;
    for (const std::string& b : bodies) {
        runs.push_back(std::async(std::launch::async,
                                  [&, b] { return http_request(http, "POST", "/v1/completions", b, {}, 120s); }));
    }
    for (size_t i = 0; i < runs.size(); ++i) {
        const HttpResponse r = runs[i].get();
        ASSERT_EQ(r.status, 200) << r.body << r.error << cluster.logs();
        EXPECT_EQ(r.json()["choices"][0]["text"].get<std::string>(), ref[i]) << i;
    }
    const std::string m1 = http_request(http, "GET", "/metrics", "", {}, 5s).body;
    // The coordinator saw the delay: its step round trip exceeds the job's own step time by about
    // two delays per step (the steps under delay only, from the metric sums and counts).
    auto delta = [&](const std::string& name) { return metric(m1, name) - metric(m0, name); };
    const double steps = delta("deepshard_step_seconds_count");
    ASSERT_GT(steps, 0) << m1;
    const double extra = (delta("deepshard_step_seconds_sum") - delta("deepshard_shard_step_seconds_sum")) / steps;
    EXPECT_GT(extra, 2 * 0.150 * 0.9) << m1;
    EXPECT_EQ(metric(m1, "deepshard_shard_losses_total"), 0) << m1;
    EXPECT_EQ(metric(m1, "deepshard_control_resumes_total"), 0) << m1;
    EXPECT_EQ(metric(m1, "deepshard_shard_registrations_total"), 1) << m1;
    std::printf("[delay] %.0f steps, %.0f ms round trip above the job's step time\n", steps, 1000 * extra);
    std::filesystem::remove_all(dir);
}

// Packets the INPUT chain's DROP rules have dropped so far (iptables -L -v -x: pkts is column 1).
int64_t dropped_packets() {
    const auto r = run_command({"iptables", "-L", "INPUT", "-v", "-x", "-n"}, 10s);
    int64_t total = 0;
    std::istringstream in(r.out);
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream fields(line);
        int64_t pkts = 0, bytes = 0;
        std::string target;
        if (fields >> pkts >> bytes >> target && target == "DROP") total += pkts;
    }
    return total;
}

TEST(NetworkBlipTest, ALossyControlLinkLosesNothing) {
    if (::unshare(CLONE_NEWNET) != 0) GTEST_SKIP() << "no private network namespace (needs root): " << strerror(errno);
    ASSERT_EQ(run_command({"ip", "link", "set", "lo", "up"}, 10s).exit_code, 0);
    if (const std::string e = run_tool("iptables", {"-L", "INPUT", "-n"}); !e.empty()) {
        GTEST_SKIP() << "no usable iptables (scripts/install-deps.sh installs it): " << e;
    }

    ensure_test_env();
    const std::string dir = make_temp_dir("ds_network_loss");
    LiveCluster cluster;
    ASSERT_EQ(cluster.start(source_path("testdata/golden/tiny-bf16"), dir, {"--retry"}), "");
    const uint16_t http = cluster.http();
    const std::vector<std::string> bodies = {
        R"({"model":"tiny-bf16","prompt":[5,6,7],"max_tokens":24,"ignore_eos":true})",
        R"({"model":"tiny-bf16","prompt":[9,4],"max_tokens":24,"ignore_eos":true,"temperature":0.8,"seed":7})",
        R"({"model":"tiny-bf16","prompt":[3,3,8],"max_tokens":24,"ignore_eos":true,"stream":true})",
    };
    auto output_of = [](const HttpResponse& r) {
        if (r.body.rfind("data:", 0) != 0) return r.json()["choices"][0]["text"].get<std::string>();
        std::string text;
        for (const std::string& e : sse_events(r.body)) {
            if (e == "[DONE]") break;
            text += nlohmann::json::parse(e)["choices"][0]["text"].get<std::string>();
        }
        return text;
    };
    std::vector<std::string> ref;
    for (const std::string& b : bodies) {
        const auto r = http_request(http, "POST", "/v1/completions", b, {}, 120s);
        ASSERT_EQ(r.status, 200) << r.body << cluster.logs();
        ref.push_back(output_of(r));
    }

    const std::string port = std::to_string(cluster.port("control"));
    for (const char* dir_kw : {"--dport", "--sport"}) {
        ASSERT_EQ(run_tool("iptables", {"-A", "INPUT", "-p", "tcp", dir_kw, port, "-m", "statistic", "--mode", "random",
                                        "--probability", "0.2", "-j", "DROP"}),
                  "");
    }
    // Two rounds of the three requests at once, all while the link loses packets. Should the job be
    // lost all the same (a leader whose redial loses its SYN twice misses the short grace), a new one
    // is started as deepshard-launch would, and --retry must still give every request its output.
    std::atomic<bool> done{false};
    int restarts = 0;
    std::thread restarter([&] {
        while (!done.load()) {
            if (!cluster.shard()->running()) cluster.start_shard_job("shard-" + std::to_string(++restarts) + ".log");
            std::this_thread::sleep_for(200ms);
        }
    });
    std::vector<std::future<HttpResponse>> runs;
    for (int round = 0; round < 2; ++round) {
        for (const std::string& b : bodies) {
            runs.push_back(std::async(std::launch::async,
                                      [&, b] { return http_request(http, "POST", "/v1/completions", b, {}, 120s); }));
        }
    }
    std::vector<HttpResponse> got;
    for (auto& f : runs) got.push_back(f.get());
    done = true;
    restarter.join();
    const int64_t dropped = dropped_packets();
    ASSERT_EQ(run_tool("iptables", {"-F", "INPUT"}), "");

    EXPECT_GT(dropped, 0) << "the rules dropped nothing: the test did not test loss";
    for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_EQ(got[i].status, 200) << i << ": " << got[i].body << got[i].error << cluster.logs();
        EXPECT_EQ(output_of(got[i]), ref[i % ref.size()]) << i;
    }
    const std::string m = http_request(http, "GET", "/metrics", "", {}, 5s).body;
    EXPECT_EQ(metric(m, "deepshard_kv_view_mismatches_total"), 0) << m;
    EXPECT_TRUE(cluster.wait_health(200, 60s)) << cluster.logs();
    std::printf("[loss] %lld control packets dropped; resumes %g, shard losses %g, jobs restarted %d\n",
                static_cast<long long>(dropped), metric(m, "deepshard_control_resumes_total"),
                metric(m, "deepshard_shard_losses_total"), restarts);
    std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace deepshard
