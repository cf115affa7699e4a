// Preparation (files, environment, command lines) and the supervision loop of deepshard-launch.
// The loop is single-threaded: the signals it handles are blocked and taken with sigtimedwait, which
// doubles as its 100 ms tick for polling the children.
#include "launch/launcher.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "common/logging.h"
#include "common/secret_file.h"
#include "launch/process.h"
#include "topology/discovery.h"

namespace deepshard::launch {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

std::string resolve_bin(const std::string& given, const std::string& name) {
    if (!given.empty()) {
        return given;
    }
    std::error_code ec;
    const fs::path self = fs::read_symlink("/proc/self/exe", ec);
    if (!ec && fs::exists(self.parent_path() / name)) {
        return (self.parent_path() / name).string();
    }
    return name;
}

std::string this_hostname() {
    char name[256] = {0};
    if (gethostname(name, sizeof(name) - 1) != 0) {
        return "localhost";
    }
    return name;
}

void fill_ipv4(std::vector<NetInterface>* ifs) {
    ifaddrs* list = nullptr;
    if (getifaddrs(&list) != 0) {
        return;
    }
    for (ifaddrs* a = list; a; a = a->ifa_next) {
        if (!a->ifa_addr || a->ifa_addr->sa_family != AF_INET) {
            continue;
        }
        char buf[INET_ADDRSTRLEN] = {0};
        inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(a->ifa_addr)->sin_addr, buf, sizeof(buf));
        auto it = std::find_if(ifs->begin(), ifs->end(), [&](const NetInterface& n) { return n.name == a->ifa_name; });
        if (it == ifs->end()) {
            NetInterface n;
            n.name = a->ifa_name;
            n.up = (a->ifa_flags & IFF_UP) != 0;
            n.loopback = (a->ifa_flags & IFF_LOOPBACK) != 0;
            ifs->push_back(n);
            it = ifs->end() - 1;
        }
        if (it->ipv4.empty()) {
            it->ipv4 = buf;
        }
    }
    freeifaddrs(list);
}

Status write_file(const std::string& path, const std::string& text) {
    std::ofstream out(path, std::ios::trunc);
    out << text;
    out.close();
    if (!out) {
        return io_error("cannot write " + path);
    }
    return ok_status();
}

std::string join(const std::vector<std::string>& argv) {
    std::string s;
    for (const auto& a : argv) {
        s += (s.empty() ? "" : " ") + shell_quote(a);
    }
    return s;
}

bool has_any(const std::vector<std::string>& args, std::initializer_list<const char*> names) {
    for (const auto& a : args) {
        for (const char* n : names) {
            if (a == n || a.rfind(std::string(n) + "=", 0) == 0) {
                return true;
            }
        }
    }
    return false;
}

// A number of seconds as a command-line value ("30", "2.5").
std::string fmt_seconds(double s) {
    std::ostringstream out;
    out << s;
    return out.str();
}

// True when the extra arguments set MCA parameter `name` themselves (theirs wins; OpenMPI refuses
// a parameter given twice).
bool user_sets_mca(const std::vector<std::string>& args, const std::string& name) {
    for (size_t i = 0; i + 1 < args.size(); ++i) {
        if ((args[i] == "--mca" || args[i] == "-mca" || args[i] == "--gmca") && args[i + 1] == name) {
            return true;
        }
    }
    return false;
}

// "0-2,5" -> "0x27" (CPUs >= 64 are left out of the mask).
std::string cpu_mask_hex(const std::string& cpus) {
    unsigned long long m = 0;
    std::stringstream ss(cpus);
    for (std::string part; std::getline(ss, part, ',');) {
        if (part.empty()) {
            continue;
        }
        const auto dash = part.find('-');
        const int lo = std::stoi(part.substr(0, dash));
        const int hi = dash == std::string::npos ? lo : std::stoi(part.substr(dash + 1));
        for (int c = lo; c <= hi && c < 64; ++c) {
            m |= 1ULL << c;
        }
    }
    char buf[32];
    std::snprintf(buf, sizeof(buf), "0x%llx", m);
    return buf;
}

std::vector<int> local_pus(const topology::HostTopology& h) {
    std::vector<int> pus;
    for (const auto& n : h.numa_nodes) {
        pus.insert(pus.end(), n.cpus.begin(), n.cpus.end());
    }
    std::sort(pus.begin(), pus.end());
    if (pus.empty()) {
        for (int i = 0; i < h.pus; ++i) {
            pus.push_back(i);
        }
    }
    return pus;
}

}  // namespace

StatusOr<Prepared> prepare(const LaunchOptions& o) {
    if (o.model.empty() || !fs::exists(fs::path(o.model) / "config.json")) {
        return invalid_argument("--model " + o.model + ": no config.json there");
    }
    if (o.launcher != "mpirun" && o.launcher != "srun") {
        return invalid_argument("--launcher must be mpirun or srun (got '" + o.launcher + "')");
    }
    if (o.bind != "rankfile" && o.bind != "none") {
        return invalid_argument("--bind must be rankfile or none (got '" + o.bind + "')");
    }
    if (o.max_restarts < 0 || o.backoff_s < 0 || o.backoff_max_s < o.backoff_s || o.stop_grace_s <= 0 ||
        o.drain_timeout_s < 0) {
        return invalid_argument(
            "need --max-restarts >= 0, 0 <= --backoff-s <= --backoff-max-s, --stop-grace-s > 0, "
            "--drain-timeout-s >= 0");
    }
    std::ifstream in(o.plan);
    if (!in) {
        return invalid_argument("--plan " + o.plan + ": cannot read it (write one with `deepshard plan`)");
    }
    std::stringstream text;
    text << in.rdbuf();
    Prepared p;
    const std::string host = this_hostname();
    DS_ASSIGN_OR_RETURN(p.plan, parse_plan_ranks(text.str(), o.plan, host));

    // This host, for default CPU binding (other hosts are assumed to be shaped alike) and RDMA.
    topology::DiscoveryOptions dopt;
    dopt.cuda = false;
    auto discovered = topology::discover_host(dopt);
    std::vector<int> pus;
    std::vector<topology::RdmaDevice> rdma;
    if (discovered.ok()) {
        pus = local_pus(*discovered);
        rdma = discovered->rdma;
    } else {
        spdlog::warn("launch: host discovery failed ({}); no default CPU binding", discovered.status().to_string());
    }
    if (rdma.empty() || o.sysfs_root != "/sys") {
        rdma = read_rdma_sysfs(o.sysfs_root);  // no libibverbs here, or a test's fake tree
    }
    const int defaulted = fill_default_cpus(&p.plan, pus);

    NetworkInputs ni;
    ni.iface_override = o.iface;
    ni.single_host = p.plan.single_host();
    ni.rdma = rdma;
    ni.interfaces = read_interfaces_sysfs(o.sysfs_root);
    fill_ipv4(&ni.interfaces);
    ni.default_route_iface = default_route_interface(o.route_file);
    DS_ASSIGN_OR_RETURN(p.net, choose_network(ni));
    p.env = make_launch_env(p.net, p.plan.single_host(), p.plan.gpu);
    if (defaulted > 0) {
        p.env.notes.push_back(std::to_string(defaulted) + " rank(s) had no CPU list valid on this host (" +
                              std::to_string(pus.size()) + " CPUs): an even share each");
    }

    p.run_dir = o.run_dir;
    if (p.run_dir.empty()) {
        std::string tmpl = (fs::temp_directory_path() / "deepshard-launch.XXXXXX").string();
        if (!mkdtemp(tmpl.data())) {
            return io_error("cannot create a run directory under " + fs::temp_directory_path().string());
        }
        p.run_dir = tmpl;
    }
    std::error_code ec;
    fs::create_directories(p.run_dir, ec);
    if (ec) {
        return io_error("--run-dir " + p.run_dir + ": " + ec.message());
    }
    p.run_dir = fs::absolute(p.run_dir).string();
    p.hostfile = o.hostfile.empty() ? p.run_dir + "/hostfile" : o.hostfile;
    if (o.hostfile.empty()) {
        DS_RETURN_IF_ERROR(write_file(p.hostfile, hostfile_text(p.plan)));
    }
    const std::string rf = rankfile_text(p.plan);
    if (o.bind == "rankfile" && !rf.empty()) {
        p.rankfile = p.run_dir + "/rankfile";
        DS_RETURN_IF_ERROR(write_file(p.rankfile, rf));
    } else if (o.bind == "rankfile") {
        p.env.notes.push_back("no CPU list for some rank (and no local topology): ranks are not bound");
    }

    std::string control = o.control;
    if (control.empty()) {
        control = (p.plan.single_host() ? std::string("127.0.0.1") : p.net.iface_ipv4) + ":0";
        if (control[0] == ':') {
            return invalid_argument("interface " + p.net.iface +
                                    " has no IPv4 address for the control port; pass "
                                    "--control HOST:PORT or --iface");
        }
    }
    const auto colon = control.rfind(':');
    if (colon == std::string::npos) {
        return invalid_argument("--control " + control + ": expected HOST:PORT");
    }
    p.control_host = control.substr(0, colon);
    if (p.control_host.empty() || p.control_host == "0.0.0.0") {
        p.control_host = p.net.iface_ipv4.empty() ? host : p.net.iface_ipv4;
    }
    p.ports_file = p.run_dir + "/ports.json";
    // A fresh secret per launch (a previous launch's file in a reused run dir is replaced).
    p.secret_file = p.run_dir + "/control.secret";
    fs::remove(p.secret_file, ec);
    DS_RETURN_IF_ERROR(write_new_secret_file(p.secret_file));
    if (p.plan.single_host()) {
        p.secret_env.emplace_back("DS_CONTROL_SECRET_FILE", p.secret_file);
    } else {
        DS_ASSIGN_OR_RETURN(std::string value, read_secret_file(p.secret_file, "control secret file"));
        p.secret_env.emplace_back("DS_CONTROL_SECRET", value);
    }
    std::string api_key_file = o.api_key_file;
    if (!o.api_key.empty()) {
        if (!api_key_file.empty()) return invalid_argument("pass --api-key or --api-key-file, not both");
        api_key_file = p.run_dir + "/api-keys";
        fs::remove(api_key_file, ec);
        DS_RETURN_IF_ERROR(write_secret_file(api_key_file, o.api_key + "\n"));
    }
    if (o.tls_cert.empty() != o.tls_key.empty()) return invalid_argument("TLS needs both --tls-cert and --tls-key");
    p.coordinator_argv = {resolve_bin(o.coordinator_bin, "deepshard-coordinator"),
                          "--model",
                          o.model,
                          "--plan",
                          o.plan,
                          "--http",
                          o.http,
                          "--thrift",
                          o.thrift,
                          "--control",
                          control,
                          "--ports-file",
                          p.ports_file,
                          "--control-secret-file",
                          p.secret_file};
    if (!api_key_file.empty()) {
        p.coordinator_argv.insert(p.coordinator_argv.end(), {"--api-key-file", api_key_file});
    }
    if (!o.tls_cert.empty()) {
        p.coordinator_argv.insert(p.coordinator_argv.end(), {"--tls-cert", o.tls_cert, "--tls-key", o.tls_key});
    }
    if (o.coordinator_retry) {
        p.coordinator_argv.push_back("--retry");
    }
    // The drain period the stop sequence waits for (finish()); an explicit --coordinator-arg wins.
    if (std::find(o.coordinator_args.begin(), o.coordinator_args.end(), "--drain-timeout-s") ==
        o.coordinator_args.end()) {
        p.coordinator_argv.insert(p.coordinator_argv.end(), {"--drain-timeout-s", fmt_seconds(o.drain_timeout_s)});
    }
    p.coordinator_argv.insert(p.coordinator_argv.end(), o.coordinator_args.begin(), o.coordinator_args.end());

    const std::string env_text = launch_env_text(
        p.env, {"coordinator: " + join(p.coordinator_argv),
                "shard job:   " + join(shard_job_argv(o, p, p.control_host + ":PORT")),
                "(the shard job's environment also holds " + p.secret_env.front().first + ")",
                "(PORT: the control port in " + p.ports_file + ")"});
    DS_RETURN_IF_ERROR(write_file(p.run_dir + "/launch.env", env_text));
    return p;
}

std::vector<std::string> shard_job_argv(const LaunchOptions& o, const Prepared& p, const std::string& control) {
    std::vector<std::string> a;
    const std::string w = std::to_string(p.plan.world_size);
    if (o.launcher == "srun") {
        a = {"srun", "--mpi=" + o.srun_mpi, "--ntasks=" + w, "--nodes=" + std::to_string(p.plan.hosts.size()),
             "--kill-on-bad-exit=1"};
        if (!has_any(o.mpi_args, {"--cpu-bind", "--cpu_bind"})) {
            // srun takes one mask list for every node: usable when the plan binds each host's local
            // ranks alike (the usual case); otherwise leave binding to Slurm's defaults.
            std::map<std::string, std::vector<std::string>> per_host;
            bool same = o.bind == "rankfile";
            for (const auto& r : p.plan.ranks) {
                per_host[r.host].push_back(r.cpus);
                same = same && !r.cpus.empty();
            }
            for (const auto& [h, l] : per_host) {
                same = same && l == per_host.begin()->second;
            }
            std::string masks;
            for (const auto& cpus : same ? per_host.begin()->second : std::vector<std::string>{}) {
                masks += (masks.empty() ? "" : ",") + cpu_mask_hex(cpus);
            }
            a.push_back(same && !masks.empty() ? "--cpu-bind=mask_cpu:" + masks : "--cpu-bind=none");
        }
    } else {
        a = {o.mpirun, "-np", w};
        if (getuid() == 0) {
            a.push_back("--allow-run-as-root");
        }
        if (!has_any(o.mpi_args, {"--hostfile", "-hostfile", "--machinefile", "-machinefile", "-H", "--host"})) {
            a.insert(a.end(), {"--hostfile", p.hostfile});
        }
        if (!has_any(o.mpi_args, {"--rankfile", "-rf", "--bind-to", "--map-by"})) {
            if (!p.rankfile.empty()) {
                a.insert(a.end(), {"--rankfile", p.rankfile, "--mca", "rmaps_rank_file_physical", "1"});
            } else {
                a.insert(a.end(), {"--bind-to", "none"});
            }
        }
        for (const auto& [k, v] : p.env.mca) {
            if (!user_sets_mca(o.mpi_args, k)) {
                a.insert(a.end(), {"--mca", k, v});
            }
        }
        for (const auto& [k, v] : p.env.env) {
            a.insert(a.end(), {"-x", k});
        }
        for (const auto& [k, v] : p.secret_env) {
            a.insert(a.end(), {"-x", k});  // the name only: mpirun forwards the value from its environment
        }
    }
    a.insert(a.end(), o.mpi_args.begin(), o.mpi_args.end());
    a.insert(a.end(), {resolve_bin(o.shard_bin, "deepshard-shard"), "--model", o.model, "--plan", o.plan,
                       "--coordinator", control});
    if (!o.tls_cert.empty()) a.insert(a.end(), {"--control-tls", "--tls-ca", o.tls_cert});
    a.insert(a.end(), o.shard_args.begin(), o.shard_args.end());
    return a;
}

namespace {

class Supervisor {
public:
    Supervisor(const LaunchOptions& o, Prepared p) : o_(o), p_(std::move(p)) {
        sigemptyset(&sigs_);
        for (int s : {SIGINT, SIGTERM, SIGHUP}) {
            sigaddset(&sigs_, s);
        }
    }

    int run() {
        pthread_sigmask(SIG_BLOCK, &sigs_, nullptr);
        std::error_code ec;
        fs::remove(p_.ports_file, ec);
        ChildSpec cs{"coordinator", p_.coordinator_argv, {}, ""};
        auto coordinator = Child::spawn(cs);
        if (!coordinator.ok()) {
            return fail(coordinator.status().to_string());
        }
        coordinator_.emplace(std::move(coordinator).value());
        spdlog::info("launch: coordinator started (pid {})", coordinator_->pid());
        const int control_port = wait_for_ports();
        if (control_port <= 0) {
            return finish(control_port == 0 ? 0 : 1);
        }
        const std::string control = p_.control_host + ":" + std::to_string(control_port);
        std::vector<std::pair<std::string, std::string>> env = p_.env.env;
        env.insert(env.end(), p_.secret_env.begin(), p_.secret_env.end());
        if (o_.launcher == "srun") {
            for (const auto& [k, v] : p_.env.mca) {
                env.emplace_back("OMPI_MCA_" + k, v);
            }
        }
        ChildSpec job{"shard job", shard_job_argv(o_, p_, control), env, ""};
        spdlog::info("launch: shard job: {}", join(job.argv));
        int failures = 0;
        for (;;) {
            auto started = Child::spawn(job);
            if (!started.ok()) {
                return finish(1, started.status().to_string());
            }
            shard_.emplace(std::move(started).value());
            const auto t0 = Clock::now();
            spdlog::info("launch: shard job started (pid {}), control {}", shard_->pid(), control);
            // Wait for: a signal, the coordinator dying, or the job ending.
            std::optional<int> job_status;
            while (!job_status) {
                if (int sig = take_signal(std::chrono::milliseconds(100)); sig > 0) {
                    spdlog::info("launch: signal {} ({}): shutting down", sig, strsignal(sig));
                    return finish(0);
                }
                if (auto cs = coordinator_->poll()) {
                    return finish(1,
                                  "the coordinator exited (" + describe_wait_status(*cs) + "); stopping the shard job");
                }
                job_status = shard_->poll();
            }
            const double ran_s = std::chrono::duration<double>(Clock::now() - t0).count();
            shard_->stop(std::chrono::seconds(2));  // leftovers of the job (orphaned ranks)
            shard_.reset();
            if (ran_s >= o_.stable_after_s) {
                failures = 0;
            }
            ++failures;
            if (failures > o_.max_restarts) {
                return finish(1, "the shard job failed " + std::to_string(failures) + " time(s) in a row (last: " +
                                     describe_wait_status(*job_status) + " after " + fmt_s(ran_s) +
                                     "); --max-restarts " + std::to_string(o_.max_restarts) + " exhausted");
            }
            const double delay =
                std::min(o_.backoff_max_s, o_.backoff_s * std::pow(2.0, static_cast<double>(failures - 1)));
            spdlog::warn("launch: shard job ended ({}) after {}; restart {}/{} in {}",
                         describe_wait_status(*job_status), fmt_s(ran_s), failures, o_.max_restarts, fmt_s(delay));
            const auto until =
                Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(delay));
            while (Clock::now() < until) {
                if (int sig = take_signal(std::chrono::milliseconds(100)); sig > 0) {
                    spdlog::info("launch: signal {} ({}) during backoff: shutting down", sig, strsignal(sig));
                    return finish(0);
                }
                if (auto cs = coordinator_->poll()) {
                    return finish(1, "the coordinator exited (" + describe_wait_status(*cs) + ")");
                }
            }
        }
    }

private:
    static std::string fmt_s(double s) {
        char buf[32];
        std::snprintf(buf, sizeof(buf), "%.1f s", s);
        return buf;
    }

    int take_signal(std::chrono::milliseconds wait) {
        timespec ts{static_cast<time_t>(wait.count() / 1000), static_cast<long>((wait.count() % 1000) * 1000000)};
        siginfo_t info{};
        const int sig = sigtimedwait(&sigs_, &info, &ts);
        return sig > 0 ? sig : 0;
    }

    // The control port from the ports file; 0 when a signal arrived first, -1 on failure.
    int wait_for_ports() {
        const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                                 std::chrono::duration<double>(o_.coordinator_timeout_s));
        while (Clock::now() < deadline) {
            std::ifstream in(p_.ports_file);
            if (in) {
                const nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
                if (j.is_object() && j.contains("control") && j["control"].is_number_integer()) {
                    spdlog::info("launch: coordinator listening: {}", j.dump());
                    return j["control"].get<int>();
                }
            }
            if (auto cs = coordinator_->poll()) {
                spdlog::error("launch: the coordinator exited during start-up ({})", describe_wait_status(*cs));
                return -1;
            }
            if (int sig = take_signal(std::chrono::milliseconds(100)); sig > 0) {
                spdlog::info("launch: signal {} during start-up: shutting down", sig);
                return 0;
            }
        }
        spdlog::error("launch: the coordinator wrote no ports file ({}) within {} s", p_.ports_file,
                      o_.coordinator_timeout_s);
        return -1;
    }

    int fail(const std::string& why) {
        spdlog::error("launch: {}", why);
        return 1;
    }

    // Stops the coordinator, then the shard job. The coordinator goes first because its SIGTERM
    // is a drain: it stops accepting, lets accepted requests finish on the still-running job (SSE
    // streams end with [DONE]) for up to --drain-timeout-s, fails the rest with a "shutting down"
    // error, and then tells the job's leader to shut down. Stopping the job first would instead
    // fail every request in flight as "shard job lost". Its grace is therefore the drain period
    // plus the usual stop grace; the job, already told to leave, normally exits on its own.
    int finish(int code, const std::string& why = "") {
        if (!why.empty()) {
            spdlog::error("launch: {}", why);
        }
        const auto grace = std::chrono::milliseconds(static_cast<int64_t>(o_.stop_grace_s * 1000));
        const auto drain = std::chrono::milliseconds(static_cast<int64_t>(o_.drain_timeout_s * 1000));
        bool clean = true;
        if (coordinator_) {
            spdlog::info("launch: stopping the coordinator (it drains for up to {} s)", o_.drain_timeout_s);
            clean = coordinator_->stop(drain + grace) && clean;
            coordinator_.reset();
        }
        if (shard_) {
            clean = shard_->stop(grace) && clean;
            shard_.reset();
        }
        spdlog::info("launch: stopped{}", clean ? "" : " (some processes needed SIGKILL)");
        return code;
    }

    LaunchOptions o_;
    Prepared p_;
    sigset_t sigs_;
    std::optional<Child> coordinator_;
    std::optional<Child> shard_;
};

}  // namespace

int run_launcher(const LaunchOptions& o) {
    auto prepared = prepare(o);
    if (!prepared.ok()) {
        spdlog::error("launch: {}", prepared.status().to_string());
        return 1;
    }
    const Prepared& p = *prepared;
    spdlog::info("launch: {} rank(s) on {} host(s); files in {}", p.plan.world_size, p.plan.hosts.size(), p.run_dir);
    for (const auto& n : p.env.notes) {
        spdlog::info("launch: {}", n);
    }
    if (o.dry_run) {
        std::ifstream in(p.run_dir + "/launch.env");
        std::stringstream ss;
        ss << in.rdbuf();
        std::printf("%s", ss.str().c_str());
        std::printf("# hostfile %s:\n", p.hostfile.c_str());
        std::printf("%s", hostfile_text(p.plan).c_str());
        if (!p.rankfile.empty()) {
            std::printf("# rankfile %s:\n%s", p.rankfile.c_str(), rankfile_text(p.plan).c_str());
        }
        std::fflush(stdout);
        return 0;
    }
    Supervisor s(o, p);
    const int rc = s.run();
    // A run folder the launcher made itself (no --run-dir) is its own scratch: gone with it, on a
    // requested shutdown as on a failure. One the user named stays for them to read.
    if (o.run_dir.empty()) {
        std::error_code ec;
        fs::remove_all(p.run_dir, ec);
        if (ec) {
            spdlog::warn("launch: cannot remove the run folder {}: {}", p.run_dir, ec.message());
        }
    }
    return rc;
}

}  // namespace deepshard::launch
