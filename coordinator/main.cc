// deepshard-coordinator: the long-lived service (DESIGN §2-3). Loads config.json and the tokenizer
// (never weights), listens on the control port for the shard job's leader, and serves HTTP
// (OpenAI-compatible) and Thrift. Runs until SIGINT/SIGTERM.
//
// With --ports-file the bound ports are written as JSON once every listener is up (tests bind
// port 0 and read the real ports from there).
#include <algorithm>
//
// Security: the control port admits only a shard job that proves it holds the control secret
// (--control-secret-file; created 0600 when missing; without the flag a fresh one is made in the
// temp directory, logged, named in the ports file and removed at exit). --tls-cert/--tls-key turn on
// TLS for the control port, HTTP and Thrift together. API keys come from --api-key, --api-key-file
// or DS_API_KEYS.
//
// Shutdown (SIGTERM/SIGINT) drains: the listeners close, new requests are refused, accepted ones
// finish (SSE streams end with their last event and [DONE]) for up to --drain-timeout-s, then the
// rest end with a "shutting down" error, and the shard job is told to stop.
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "common/env.h"
#include "common/logging.h"
#include "common/version.h"
#include "common/secret_file.h"
#include "control/auth.h"
#include "control/protocol.h"
#include "coordinator/api_keys.h"
#include "coordinator/engine.h"
#include "coordinator/http_server.h"
#include "coordinator/model_loader.h"
#include "coordinator/thrift_server.h"

namespace deepshard::coordinator {
namespace {

struct Args {
    std::string model;
    std::string name;
    std::string plan;
    std::string http = "127.0.0.1:8000";
    std::string thrift = "127.0.0.1:9090";
    std::string control = "127.0.0.1:7000";
    std::string prefill_control;  // disaggregation: the prefill job's control port ("" = off)
    std::string prefill_plan;
    int64_t pd_min_prompt_tokens = 16;
    std::vector<std::string> api_keys;
    std::string api_key_file;
    std::string control_secret_file;
    std::string tls_cert;
    std::string tls_key;
    std::string ports_file;
    bool retry = false;
    bool no_prefix_cache = false;
    std::string speculative;  // "" (off) or "mtp"
    int draft_tokens = 0;     // 0: the default (1) when speculative
    size_t max_queue = 256;
    size_t max_running = 64;
    int64_t token_budget = 512;
    int64_t prefill_chunk = 256;
    size_t max_body = 4u << 20;
    int64_t header_timeout_ms = 10000;
    int64_t write_timeout_ms = 30000;
    int http_threads = 2;
    size_t http_max_connections = 1024;
    size_t thrift_max_connections = 256;
    int64_t thrift_idle_timeout_ms = 60000;
    int64_t thrift_request_timeout_ms = 30000;
    int64_t resume_grace_ms = 10000;
    int64_t step_timeout_min_ms = 60000;
    int64_t handshake_timeout_ms = 5000;
    size_t max_pending_control = 8;
    double drain_timeout_s = 30;
};

bool is_loopback(const std::string& host_port) {
    return host_port.rfind("127.", 0) == 0 || host_port.rfind("[::1]", 0) == 0 || host_port.rfind("localhost:", 0) == 0;
}

// The control secret: the given file (created 0600 when it does not exist yet), else a fresh file
// in the temp directory that the caller removes at exit (`created`).
StatusOr<std::string> control_secret(const std::string& flag, std::string* path, bool* created) {
    *created = false;
    *path = flag.empty() ? env_str("DS_CONTROL_SECRET_FILE") : flag;
    if (path->empty()) {
        // A random part besides the PID: a coordinator that was killed leaves its file behind, and a
        // later one may get the same PID (O_EXCL refuses to reuse any existing file, as it must).
        std::random_device rd;
        Status made = ok_status();
        for (int attempt = 0; attempt < 8; ++attempt) {
            char tag[17];
            std::snprintf(tag, sizeof(tag), "%08x%08x", rd(), rd());
            *path = (std::filesystem::temp_directory_path() /
                     ("deepshard-control-" + std::to_string(getpid()) + "-" + tag + ".secret")).string();
            made = write_new_secret_file(*path);
            if (made.ok() || !std::filesystem::exists(*path)) break;
        }
        DS_RETURN_IF_ERROR(made);
        *created = true;
        spdlog::info("control secret written to {} (mode 0600); start the shard job with DS_CONTROL_SECRET_FILE={}",
                     *path, *path);
    } else if (!std::filesystem::exists(*path)) {
        DS_RETURN_IF_ERROR(write_new_secret_file(*path));
        spdlog::info("control secret written to {} (mode 0600)", *path);
    }
    return control::read_control_secret_file(*path);
}

Status read_file(const std::string& path, std::string* out) {
    std::ifstream in(path);
    if (!in) return not_found("cannot read " + path);
    std::stringstream ss;
    ss << in.rdbuf();
    *out = ss.str();
    return ok_status();
}

Status run(const Args& a) {
    DS_ASSIGN_OR_RETURN(LoadedModel m, load_model(a.model, a.name));
    DS_ASSIGN_OR_RETURN(ApiKeys keys, ApiKeys::load(a.api_keys, a.api_key_file));
    control::TlsFiles tls;
    tls.cert = a.tls_cert;
    tls.key = a.tls_key;
    DS_RETURN_IF_ERROR(control::check_tls_server_files(tls));
    if (!tls.server_enabled()) {
        for (const std::string* addr : {&a.http, &a.thrift, &a.control}) {
            if (!addr->empty() && !is_loopback(*addr)) {
                spdlog::warn("{} is not a loopback address and TLS is off: traffic there is readable by anyone on the "
                             "network (pass --tls-cert and --tls-key)",
                             *addr);
            }
        }
    }
    std::string secret_path;
    bool secret_created = false;
    DS_ASSIGN_OR_RETURN(std::string secret, control_secret(a.control_secret_file, &secret_path, &secret_created));
    struct RemoveOnExit {
        std::string path;
        ~RemoveOnExit() {
            if (!path.empty()) std::remove(path.c_str());
        }
    } remove_secret{secret_created ? secret_path : ""};

    // Speculative decoding drafts with the checkpoint's MTP module: refuse up front what cannot work.
    if (!a.speculative.empty() && a.speculative != "mtp") {
        return invalid_argument("--speculative " + a.speculative + ": the only method is \"mtp\"");
    }
    if (a.speculative.empty() && a.draft_tokens != 0) {
        return invalid_argument("--draft-tokens needs --speculative mtp");
    }
    const int draft_tokens = a.speculative.empty() ? 0 : (a.draft_tokens == 0 ? 1 : a.draft_tokens);
    if (draft_tokens < 0 || draft_tokens > static_cast<int>(control::kMaxDraftTokens)) {
        return invalid_argument("--draft-tokens " + std::to_string(a.draft_tokens) + ": must be 1.." +
                                std::to_string(control::kMaxDraftTokens));
    }
    if (draft_tokens > 0 && m.config.num_nextn_predict_layers <= 0) {
        return invalid_argument("--speculative mtp: the model in " + a.model +
                                " has no MTP module (config.json num_nextn_predict_layers = 0); make one with "
                                "`deepshard make-model ... --set num_nextn_predict_layers=1` or drop --speculative");
    }

    EngineOptions eo;
    eo.scheduler.draft_tokens = draft_tokens;
    eo.scheduler.max_queue = a.max_queue;
    eo.scheduler.max_running = a.max_running;
    eo.scheduler.token_budget = a.token_budget;
    eo.scheduler.prefill_chunk = a.prefill_chunk;
    eo.scheduler.retry = a.retry;
    eo.scheduler.prefix_cache = !a.no_prefix_cache;
    eo.control.listen = a.control;
    eo.control.secret = std::move(secret);
    eo.control.tls = tls;
    eo.control.resume_grace = std::chrono::milliseconds(a.resume_grace_ms);
    eo.control.handshake_timeout = std::chrono::milliseconds(a.handshake_timeout_ms);
    eo.control.max_pending_connections = a.max_pending_control;
    eo.step_timeout_min = std::chrono::milliseconds(a.step_timeout_min_ms);
    eo.prefill_listen = a.prefill_control;
    eo.pd_min_prompt_tokens = std::max<int64_t>(2, a.pd_min_prompt_tokens);
    if (!a.prefill_plan.empty()) {
        if (a.prefill_control.empty()) return invalid_argument("--prefill-plan needs --prefill-control");
        std::string plan;
        DS_RETURN_IF_ERROR(read_file(a.prefill_plan, &plan));
        if (nlohmann::json::parse(plan, nullptr, false).is_discarded()) {
            return invalid_argument("--prefill-plan " + a.prefill_plan + ": not valid JSON");
        }
        eo.prefill_plan_json = plan;
    }
    if (!a.prefill_control.empty() && draft_tokens > 0) {
        return invalid_argument("--prefill-control (disaggregation) and --speculative mtp cannot be combined yet: the "
                                "MTP module's cache is not exported; drop one of them");
    }
    if (!a.plan.empty()) {
        std::string plan;
        DS_RETURN_IF_ERROR(read_file(a.plan, &plan));
        if (nlohmann::json::parse(plan, nullptr, false).is_discarded()) {
            return invalid_argument("--plan " + a.plan + ": not valid JSON");
        }
        eo.control.plan_json = plan;
        // The shard job would refuse every speculative step with data-parallel attention: say it now.
        const nlohmann::json pj = nlohmann::json::parse(plan, nullptr, false);
        const bool dp = pj.is_object() && pj.contains("attention") && pj["attention"] == "dp" &&
                        pj.contains("ranks_per_stage") && pj["ranks_per_stage"].is_number_integer() &&
                        pj["ranks_per_stage"].get<int64_t>() > 1;
        if (draft_tokens > 0 && dp) {
            return invalid_argument("--speculative mtp is not implemented with data-parallel attention (plan " +
                                    a.plan + "); plan tensor-parallel attention or drop --speculative");
        }
    }

    // Signals are taken by sigwait below; block them before any thread starts.
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
    std::signal(SIGPIPE, SIG_IGN);

    DS_ASSIGN_OR_RETURN(auto engine, Engine::start(eo, m.info, m.tokenizer));
    std::unique_ptr<HttpServer> http;
    std::unique_ptr<ThriftServer> thrift;
    if (!a.http.empty()) {
        HttpOptions ho;
        ho.listen = a.http;
        ho.api_keys = keys;
        ho.tls = tls;
        ho.max_body_bytes = a.max_body;
        ho.header_timeout = std::chrono::milliseconds(a.header_timeout_ms);
        ho.write_timeout = std::chrono::milliseconds(a.write_timeout_ms);
        ho.max_connections = a.http_max_connections;
        ho.threads = a.http_threads;
        DS_ASSIGN_OR_RETURN(http, HttpServer::start(ho, engine.get()));
    }
    if (!a.thrift.empty()) {
        ThriftOptions to;
        to.listen = a.thrift;
        to.api_keys = keys;
        to.tls = tls;
        to.max_connections = a.thrift_max_connections;
        to.idle_timeout = std::chrono::milliseconds(a.thrift_idle_timeout_ms);
        to.request_timeout = std::chrono::milliseconds(a.thrift_request_timeout_ms);
        to.write_timeout = std::chrono::milliseconds(a.write_timeout_ms);
        to.max_message_bytes = a.max_body + (64u << 10);  // a call carries what an HTTP body may, plus its envelope
        DS_ASSIGN_OR_RETURN(thrift, ThriftServer::start(to, engine.get()));
    }
    nlohmann::json ports = {{"control", engine->control_port()},
                            {"prefill_control", engine->prefill_control_port()},
                            {"http", http ? http->port() : 0},
                            {"thrift", thrift ? thrift->port() : 0},
                            {"pid", static_cast<int64_t>(getpid())},
                            {"control_secret_file", secret_path},
                            {"tls", tls.server_enabled()}};
    spdlog::info("deepshard-coordinator serving '{}' (fingerprint {:016x}): control :{} http :{} thrift :{}{}{}{}",
                 m.info.name, m.info.fingerprint, engine->control_port(), http ? http->port() : 0,
                 thrift ? thrift->port() : 0, a.retry ? " (retry on shard loss)" : "", tls.server_enabled() ? ", TLS" : "",
                 keys.enabled() ? ", " + std::to_string(keys.size()) + " API key(s)" : "");
    if (!a.ports_file.empty()) {
        const std::string tmp = a.ports_file + ".tmp";
        {
            std::ofstream out(tmp);
            out << ports.dump() << "\n";
            if (!out) return io_error("cannot write " + tmp);
        }
        if (std::rename(tmp.c_str(), a.ports_file.c_str()) != 0) return io_error("cannot write " + a.ports_file);
    }
    int sig = 0;
    sigwait(&sigs, &sig);
    const auto drain = std::chrono::milliseconds(static_cast<int64_t>(a.drain_timeout_s * 1000));
    spdlog::info("signal {} ({}): shutting down: no new requests; the accepted ones get up to {} s to finish", sig,
                 strsignal(sig), a.drain_timeout_s);
    if (http) http->stop_accepting();
    if (thrift) thrift->stop_accepting();
    const size_t failed = engine->drain(drain);
    // The last SSE events and responses (including the "shutting down" errors) go out before
    // the sockets close.
    if (http && !http->wait_idle(std::chrono::seconds(5))) {
        spdlog::warn("shutdown: some HTTP responses were still being written after 5 s");
    }
    thrift.reset();
    http.reset();
    engine.reset();
    spdlog::info("stopped{}", failed ? " (" + std::to_string(failed) + " request(s) ended with an error)" : "");
    return ok_status();
}

}  // namespace
}  // namespace deepshard::coordinator

int main(int argc, char** argv) {
    using deepshard::coordinator::Args;
    deepshard::init_logging();
    Args a;
    CLI::App app{"deepshard-coordinator: schedules requests onto a shard job; serves HTTP (OpenAI API) and Thrift"};
    app.set_version_flag("--version", DEEPSHARD_VERSION_STRING);
    app.add_option("--model", a.model, "Model directory (config.json, tokenizer.json; weights are never read)")
        ->required();
    app.add_option("--name", a.name, "Model id clients use (default: the directory's name)");
    app.add_option("--plan", a.plan, "Plan JSON the shard job must run (checked at registration)");
    app.add_option("--http", a.http, "HTTP listen address HOST:PORT ('' disables)")->capture_default_str();
    app.add_option("--thrift", a.thrift, "Thrift listen address HOST:PORT ('' disables)")->capture_default_str();
    app.add_option("--control", a.control, "Control port for the shard job's leader")->capture_default_str();
    app.add_option("--api-key", a.api_keys,
                   "Require this key (HTTP: Authorization: Bearer; Thrift: api_key); repeatable. Prefer "
                   "--api-key-file or DS_API_KEYS: a command line is visible to every user");
    app.add_option("--api-key-file", a.api_key_file, "File with API keys, one per line ('#' comments; mode 0600)");
    app.add_option("--control-secret-file", a.control_secret_file,
                   "The shard job's control secret (mode 0600; created if missing; default DS_CONTROL_SECRET_FILE, "
                   "else a fresh file in the temp directory)");
    app.add_option("--tls-cert", a.tls_cert, "PEM certificate chain: TLS on the control port, HTTP and Thrift");
    app.add_option("--tls-key", a.tls_key, "PEM private key of --tls-cert");
    app.add_option("--resume-grace-ms", a.resume_grace_ms,
                   "How long a shard job whose control link broke may reconnect and resume (0: lost at once)")
        ->capture_default_str();
    app.add_option("--step-timeout-min-ms", a.step_timeout_min_ms,
                   "Floor of the step deadline (a step not back by then, or 10x its measured time, loses the job)")
        ->capture_default_str();
    app.add_option("--handshake-timeout-ms", a.handshake_timeout_ms,
                   "Deadline for a control connection to authenticate and register")
        ->capture_default_str();
    app.add_option("--max-pending-control", a.max_pending_control,
                   "Unauthenticated control connections at once (the oldest is dropped beyond)")
        ->capture_default_str();
    app.add_option("--drain-timeout-s", a.drain_timeout_s,
                   "On SIGTERM: how long accepted requests may still run before they end with an error")
        ->capture_default_str();
    app.add_option("--prefill-control", a.prefill_control,
                   "Prefill/decode disaggregation: HOST:PORT where a prefill job registers (deepshard-shard "
                   "--kv-listen); the job on --control is then the decode job");
    app.add_option("--prefill-plan", a.prefill_plan, "The plan the prefill job must run (like --plan)");
    app.add_option("--pd-min-prompt-tokens", a.pd_min_prompt_tokens,
                   "With a prefill job: shorter prompts are prefilled by the decode job itself")
        ->capture_default_str();
    app.add_flag("--retry", a.retry, "On shard-job loss keep requests and rerun them when a job re-registers");
    app.add_flag("--no-prefix-cache", a.no_prefix_cache,
                 "Do not share KV blocks between requests with a common prompt prefix (cold-run baseline)");
    app.add_option("--speculative", a.speculative,
                   "Speculative decoding: \"mtp\" drafts with the model's MTP module (num_nextn_predict_layers > 0) "
                   "and verifies the drafts in one step; outputs are unchanged");
    app.add_option("--draft-tokens", a.draft_tokens, "Tokens drafted per step with --speculative (default 1)");
    app.add_option("--max-queue", a.max_queue, "Waiting requests before new ones get 429 / Overloaded")
        ->capture_default_str();
    app.add_option("--max-running", a.max_running, "Sequences admitted at once")->capture_default_str();
    app.add_option("--token-budget", a.token_budget, "Tokens per step batch")->capture_default_str();
    app.add_option("--prefill-chunk", a.prefill_chunk, "Longest prefill chunk per sequence per step")
        ->capture_default_str();
    app.add_option("--max-body", a.max_body, "Largest HTTP request body in bytes")->capture_default_str();
    app.add_option("--header-timeout-ms", a.header_timeout_ms, "Deadline for a whole HTTP request header")
        ->capture_default_str();
    app.add_option("--http-threads", a.http_threads, "HTTP I/O threads")->capture_default_str();
    app.add_option("--write-timeout-ms", a.write_timeout_ms,
                   "Deadline for each HTTP/Thrift write (a client that stops reading is cut off)")
        ->capture_default_str();
    app.add_option("--http-max-connections", a.http_max_connections, "Open HTTP connections at most")
        ->capture_default_str();
    app.add_option("--thrift-max-connections", a.thrift_max_connections,
                   "Thrift connections served at once (one thread each); more wait in the backlog")
        ->capture_default_str();
    app.add_option("--thrift-idle-timeout-ms", a.thrift_idle_timeout_ms, "Close a Thrift connection idle this long")
        ->capture_default_str();
    app.add_option("--thrift-request-timeout-ms", a.thrift_request_timeout_ms,
                   "Deadline for receiving one whole Thrift call once it started")
        ->capture_default_str();
    app.add_option("--ports-file", a.ports_file, "Write the bound ports as JSON here once listening");
    CLI11_PARSE(app, argc, argv);
    deepshard::Status s = deepshard::coordinator::run(a);
    if (!s.ok()) {
        std::fprintf(stderr, "deepshard-coordinator: %s\n", s.to_string().c_str());
        return 1;
    }
    return 0;
}
