// Helpers for tests against live processes: a background process (own process group, killed by
// its PID at the end), a minimal blocking HTTP/1.1 client (chunked bodies decoded), SSE parsing,
// and a throw-away model directory (config + tokenizer, no weights).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace deepshard::testing_util {

class BackgroundProcess {
public:
    // Starts argv (stdout+stderr to `log_path`); env entries "K=V" are added.
    BackgroundProcess(const std::vector<std::string>& argv, const std::string& log_path,
                      const std::vector<std::string>& env = {});
    // Kills the process, its process group and every descendant (by PID), then reaps it.
    ~BackgroundProcess();
    BackgroundProcess(const BackgroundProcess&) = delete;
    BackgroundProcess& operator=(const BackgroundProcess&) = delete;

    pid_t pid() const { return pid_; }
    // Descendants of pid() (from /proc), optionally only those whose comm is `name`.
    std::vector<pid_t> descendants(const std::string& name = "") const;
    bool running();
    // Waits (bounded) for the process to exit; its waitpid status, or nullopt when still running.
    std::optional<int> wait_exit(std::chrono::milliseconds timeout);
    void kill_now();
    std::string log() const;

private:
    pid_t pid_ = -1;
    bool reaped_ = false;
    int wait_status_ = 0;
    std::string log_path_;
};

struct HttpResponse {
    int status = 0;  // 0: no response (connection failed / closed / timed out)
    std::string headers;
    std::string body;
    std::string error;
    nlohmann::json json() const;  // body as JSON (discarded value when not JSON)
};

HttpResponse http_request(uint16_t port, const std::string& method, const std::string& path,
                          const std::string& body = "", const std::vector<std::string>& headers = {},
                          std::chrono::milliseconds timeout = std::chrono::seconds(60));

// A Prometheus text sample's value ("name value" line, name may carry labels), or -1 when absent.
double metric_value(const std::string& text, const std::string& name);

// The `data:` payloads of an SSE body, in order ("[DONE]" included).
std::vector<std::string> sse_events(const std::string& body);

// Waits until `path` exists and parses as JSON (the coordinator's --ports-file).
nlohmann::json wait_for_json_file(const std::string& path, std::chrono::milliseconds timeout);

// A directory with golden `base`'s config.json (vocab_size overridden when > 0) and, when
// `with_tokenizer`, testdata/tokenizer's files. No weights.
std::string make_config_only_model(const std::string& base, bool with_tokenizer, int64_t vocab_size);

// Sets DS_BINARY_DIR (from this test binary's location, BUILD/tests/x) and DS_SOURCE_DIR when
// the environment lacks them, so binary_path()/source_path() work however the test is started.
void ensure_test_env();

// A local TCP connection for hand-written bytes (slow clients). -1 on failure.
int connect_local(uint16_t port);

// A live cluster on localhost: `deepshard plan --layout`, deepshard-coordinator (ports from its
// --ports-file) and an `mpirun` shard job registering with it. Everything it started is stopped by
// PID when it is destroyed (the shard job first).
class LiveCluster {
public:
    LiveCluster() = default;
    LiveCluster(const LiveCluster&) = delete;
    LiveCluster& operator=(const LiveCluster&) = delete;
    ~LiveCluster();

    // Plans `layout` for `model` and starts the coordinator with `extra_args` appended (e.g.
    // --retry, --api-key K; Thrift stays off unless they name --thrift). "" on success, else what
    // went wrong with the logs.
    std::string start_coordinator(const std::string& model, const std::string& dir,
                                  const std::vector<std::string>& extra_args = {},
                                  const std::string& layout = "pp=2,tp=2", int ranks = 4);
    // Starts a shard job (replacing a previous one); its output goes to dir/log_name.
    void start_shard_job(const std::string& log_name = "shard.log");
    // Extra `deepshard plan` flags for the next start_coordinator, replacing the default
    // {"--kv-budget-mb", "64"} (a small KV pool: the job commits it at start).
    void set_plan_args(std::vector<std::string> args) { plan_args_ = std::move(args); }
    const std::string& plan_path() const { return plan_; }
    // Extra deepshard-shard flags for the next start_shard_job (e.g. --kv-blocks 12).
    void set_shard_args(std::vector<std::string> args) { shard_args_ = std::move(args); }
    // The port the next shard job dials for the control link instead of the coordinator's own (a
    // proxy in between, e.g. DelayProxy); 0: the coordinator's.
    void set_job_control_port(uint16_t port) { job_control_port_ = port; }
    void stop_shard_job() { shard_.reset(); }
    // Another shard job of `ranks` ranks running `plan` that dials `control_port` (e.g. a prefill job
    // on the coordinator's prefill_control port), with `args` appended; output to dir/log_name.
    std::unique_ptr<BackgroundProcess> start_job(const std::string& plan, int control_port, int ranks,
                                                 const std::vector<std::string>& args, const std::string& log_name) const;
    // Polls /health (bounded) until it answers `status`; waiting for 200 ends early when the shard
    // job has exited.
    bool wait_health(int status, std::chrono::milliseconds timeout);
    // start_coordinator + start_shard_job + wait_health(200): "" on success, else why with the logs.
    std::string start(const std::string& model, const std::string& dir,
                      const std::vector<std::string>& extra_args = {});

    uint16_t http() const { return static_cast<uint16_t>(port("http")); }
    int port(const std::string& name) const { return ports_.value(name, 0); }
    BackgroundProcess& coordinator() { return *coordinator_; }
    BackgroundProcess* shard() { return shard_.get(); }
    // The ends of both logs.
    std::string logs() const;

private:
    std::string model_, dir_, plan_;
    int ranks_ = 4;
    std::vector<std::string> shard_args_;
    uint16_t job_control_port_ = 0;
    std::vector<std::string> plan_args_ = {"--kv-budget-mb", "64"};
    nlohmann::json ports_ = nlohmann::json::object();
    std::unique_ptr<BackgroundProcess> coordinator_;
    std::unique_ptr<BackgroundProcess> shard_;
};

}  // namespace deepshard::testing_util
