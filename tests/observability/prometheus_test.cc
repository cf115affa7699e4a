// The observability stack in observability/ against real tools and a live service:
//  - `promtool check rules` parses the alerting rules and `promtool test rules` runs their unit
//    tests (every alert fires exactly when its synthetic series say it must);
//  - a live cluster (deepshard-coordinator + 1-rank shard job on the tiny golden model) serves a
//    request; its /metrics passes `promtool check metrics` (Prometheus naming conventions: units,
//    _total counters, HELP/TYPE);
//  - Debian's `prometheus` (its own temp config, data dir and loopback port; 1 s scrape and rule
//    evaluation) scrapes the coordinator; every expression of the Grafana dashboard evaluates
//    there and names only metrics the coordinator exports (or the MTP ones, which exist only with
//    --speculative); killing the shard job fires DeepshardShardJobLost within seconds.
// Skipped (with the reason) where prometheus/promtool are not installed (scripts/install-deps.sh).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <thread>

#include <gtest/gtest.h>

#include "tests/coordinator/live_util.h"
#include "tests/util/subprocess.h"

namespace deepshard {
namespace {

using namespace testing_util;
using json = nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;

// MTP speculative decoding's counters: exported only when --speculative is on.
const std::set<std::string> kSpeculativeMetrics = {"deepshard_spec_accepted_tokens_total",
                                                   "deepshard_spec_draft_tokens_total"};
// Exported only with --prefill-control (disaggregation); the dashboard must still read them.
const std::set<std::string> kDisaggregationMetrics = {"deepshard_pd_handoffs_total", "deepshard_pd_fallbacks_total",
                                                      "deepshard_kv_import_failures_total"};

bool have(const std::string& tool) {
    return run_command({"/bin/sh", "-c", "command -v " + tool}, seconds(10)).exit_code == 0;
}

uint16_t free_port() {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    socklen_t len = sizeof(a);
    uint16_t port = 0;
    if (fd >= 0 && bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
        getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
        port = ntohs(a.sin_port);
    }
    if (fd >= 0) close(fd);
    return port;
}

std::string url_encode(const std::string& s) {
    std::string out;
    for (unsigned char c : s) {
        if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
            out += static_cast<char>(c);
        } else {
            char buf[4];
            std::snprintf(buf, sizeof(buf), "%%%02X", c);
            out += buf;
        }
    }
    return out;
}

// Every "expr" of the dashboard's panels (rows included).
void collect_exprs(const json& panels, std::vector<std::string>* out) {
    for (const auto& p : panels) {
        if (p.contains("panels")) collect_exprs(p["panels"], out);
        if (!p.contains("targets")) continue;
        for (const auto& t : p["targets"]) out->push_back(t["expr"].get<std::string>());
    }
}

class PrometheusTest : public ::testing::Test {
protected:
    void SetUp() override {
        ensure_test_env();
        if (!have("prometheus") || !have("promtool")) {
            GTEST_SKIP() << "prometheus/promtool are not installed (Debian package `prometheus`, "
                            "scripts/install-deps.sh)";
        }
        rules_ = source_path("observability/prometheus/deepshard-alerts.yml");
    }
    std::string rules_;
};

TEST_F(PrometheusTest, RulesParseAndTheirUnitTestsPass) {
    auto check = run_command({"promtool", "check", "rules", rules_}, seconds(60));
    EXPECT_EQ(check.exit_code, 0) << check.out << check.err;
    EXPECT_NE(check.out.find("SUCCESS"), std::string::npos) << check.out;
    auto test = run_command({"promtool", "test", "rules", source_path("observability/prometheus/deepshard-alerts.test.yml")},
                            seconds(120));
    EXPECT_EQ(test.exit_code, 0) << test.out << test.err;
    auto config = run_command({"promtool", "check", "config", source_path("observability/prometheus/prometheus-example.yml")},
                              seconds(60));
    EXPECT_EQ(config.exit_code, 0) << config.out << config.err;
}

TEST_F(PrometheusTest, LiveScrapeDashboardQueriesAndShardJobLossAlert) {
    const std::string dir = make_temp_dir("ds_prometheus_");
    LiveCluster cluster;
    ASSERT_EQ(cluster.start_coordinator(source_path("testdata/golden/tiny-bf16"), dir, {}, "pp=1,tp=1", 1), "");
    cluster.start_shard_job();
    ASSERT_TRUE(cluster.wait_health(200, seconds(240))) << cluster.logs();
    const uint16_t http = cluster.http();
    // One request, so the latency histograms have samples.
    auto done = http_request(http, "POST", "/v1/completions",
                             R"({"model": "tiny-bf16", "prompt": [0, 4011, 4000, 17], "max_tokens": 4})", {}, seconds(120));
    ASSERT_EQ(done.status, 200) << done.body;

    // The exposition follows Prometheus' conventions (promtool lints names, units, _total, HELP).
    auto text = http_request(http, "GET", "/metrics", "", {}, seconds(10));
    ASSERT_EQ(text.status, 200);
    std::ofstream(dir + "/metrics.txt") << text.body;
    auto lint = run_command({"/bin/sh", "-c", "promtool check metrics < '" + dir + "/metrics.txt'"}, seconds(60));
    EXPECT_EQ(lint.exit_code, 0) << lint.out << lint.err;
    EXPECT_EQ(lint.out + lint.err, "") << "promtool check metrics complains";

    const uint16_t port = free_port();
    ASSERT_NE(port, 0);
    {
        std::ofstream cfg(dir + "/prometheus.yml");
        cfg << "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            << "rule_files:\n  - " << rules_ << "\n"
            << "scrape_configs:\n  - job_name: deepshard\n    static_configs:\n      - targets: ['127.0.0.1:" << http
            << "']\n";
    }
    BackgroundProcess prom({"prometheus", "--config.file=" + dir + "/prometheus.yml",
                            "--storage.tsdb.path=" + dir + "/data", "--web.listen-address=127.0.0.1:" + std::to_string(port),
                            "--log.level=warn"},
                           dir + "/prometheus.log");
    auto query = [&](const std::string& q) {
        return http_request(port, "GET", "/api/v1/query?query=" + url_encode(q), "", {}, seconds(10));
    };
    auto value_of = [&](const std::string& q) -> double {
        auto r = query(q);
        json j = r.json();
        if (r.status != 200 || !j.is_object() || j["data"]["result"].empty()) return -1;
        return std::stod(j["data"]["result"][0]["value"][1].get<std::string>());
    };
    // Scraped: the target is up and the coordinator's gauge arrived.
    const auto deadline = std::chrono::steady_clock::now() + seconds(30);
    while (std::chrono::steady_clock::now() < deadline &&
           !(value_of("up{job=\"deepshard\"}") == 1 && value_of("deepshard_shard_job_up") == 1)) {
        std::this_thread::sleep_for(milliseconds(200));
    }
    ASSERT_EQ(value_of("up{job=\"deepshard\"}"), 1) << prom.log();
    ASSERT_EQ(value_of("deepshard_shard_job_up"), 1);
    EXPECT_GE(value_of("deepshard_generation_tokens_total"), 4);

    // Every dashboard query runs on this Prometheus and reads metrics the coordinator exports.
    std::ifstream dash_in(source_path("observability/grafana/deepshard.json"));
    const json dash = json::parse(dash_in, nullptr, false);
    ASSERT_FALSE(dash.is_discarded()) << "the dashboard is not valid JSON";
    std::vector<std::string> exprs;
    collect_exprs(dash["panels"], &exprs);
    ASSERT_GE(exprs.size(), 15u);
    const std::regex name_re("deepshard_[a-z_]+");
    std::set<std::string> referenced;
    for (std::string e : exprs) {
        for (auto it = std::sregex_iterator(e.begin(), e.end(), name_re); it != std::sregex_iterator(); ++it) {
            referenced.insert(it->str());
        }
        // Grafana's variables, as Grafana would fill them in.
        e = std::regex_replace(e, std::regex("\\$__rate_interval"), "1m");
        e = std::regex_replace(e, std::regex("\\$instance"), ".*");
        auto r = query(e);
        EXPECT_EQ(r.status, 200) << e << "\n" << r.body;
        EXPECT_EQ(r.json()["status"], "success") << e << "\n" << r.body;
    }
    for (const std::string& n : referenced) {
        if (kSpeculativeMetrics.count(n) != 0 || kDisaggregationMetrics.count(n) != 0) continue;
        const bool exported = text.body.find("\n" + n + " ") != std::string::npos ||
                              text.body.find("\n" + n + "{") != std::string::npos ||
                              text.body.find("# TYPE " + n + " ") != std::string::npos;
        EXPECT_TRUE(exported) << "the dashboard reads " << n << ", which /metrics does not export";
    }
    for (const std::string& n : kSpeculativeMetrics) {
        EXPECT_EQ(referenced.count(n), 1u) << "the dashboard has no MTP panel reading " << n;
    }
    for (const std::string& n : kDisaggregationMetrics) {
        EXPECT_EQ(referenced.count(n), 1u) << "the dashboard has no disaggregation panel reading " << n;
    }

    // Killing the shard job fires the job-loss alert (and starts the sustained-outage one).
    auto alerts = [&] {
        std::map<std::string, std::string> states;
        auto r = http_request(port, "GET", "/api/v1/alerts", "", {}, seconds(10));
        json j = r.json();
        if (!j.is_object()) return states;
        for (const auto& a : j["data"]["alerts"]) states[a["labels"]["alertname"]] = a["state"];
        return states;
    };
    EXPECT_EQ(alerts().count("DeepshardShardJobLost"), 0u) << "firing before the loss";
    cluster.shard()->kill_now();
    const auto t0 = std::chrono::steady_clock::now();
    std::map<std::string, std::string> states;
    while (std::chrono::steady_clock::now() - t0 < seconds(40)) {
        states = alerts();
        if (states["DeepshardShardJobLost"] == "firing" && states.count("DeepshardShardJobDown")) break;
        std::this_thread::sleep_for(milliseconds(250));
    }
    EXPECT_EQ(states["DeepshardShardJobLost"], "firing") << prom.log() << cluster.logs();
    EXPECT_EQ(states["DeepshardShardJobDown"], "pending");  // `for: 1m`: pending until then
    std::printf("DeepshardShardJobLost fired %.1f s after the kill\n",
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
}

}  // namespace
}  // namespace deepshard
