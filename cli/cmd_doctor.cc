// `deepshard doctor`: pre-flight checks before starting a cluster, one line each:
//   PASS|WARN|FAIL|SKIP  <check>  <what was found>
// A FAIL means the job would not start or would hang (a port taken, a broken checkpoint, no mpirun,
// MPI unable to start ranks); WARN means it would run slower or less robustly (small memlock limit
// or /dev/shm); SKIP means the hardware is absent (no GPU, no RDMA device). Exit status 1 on any FAIL.
// Every external command runs under `timeout`, so the doctor itself never hangs.
#include <dlfcn.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <array>
#include <map>
#include <cstdio>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "model/checkpoint.h"
#include "topology/discovery.h"

namespace deepshard::cli {

namespace {

struct DoctorArgs {
    std::string model;
    std::vector<int> ports{8000, 9090, 7000};
    std::string hostfile;
    int mpi_np = 2;
    int timeout_s = 30;
    bool no_mpi = false;
    bool print_fingerprint = false;  // rank mode: print "<host> <fingerprint|error>" and exit
};

class Report {
public:
    void add(const char* level, const std::string& check, const std::string& detail) {
        std::printf("%-4s  %-16s %s\n", level, check.c_str(), detail.c_str());
        std::fflush(stdout);
        if (std::string(level) == "FAIL") {
            ++failures_;
        }
    }
    int failures() const { return failures_; }

private:
    int failures_ = 0;
};

// Runs a shell command under `timeout`, returning its exit status and combined output.
int run_shell(const std::string& cmd, int timeout_s, std::string* out) {
    const std::string full = "timeout -k 5 " + std::to_string(timeout_s) + " " + cmd + " 2>&1";
    FILE* p = popen(full.c_str(), "r");
    if (p == nullptr) {
        *out = "cannot run: " + cmd;
        return -1;
    }
    std::array<char, 4096> buf{};
    out->clear();
    size_t n = 0;
    while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) {
        out->append(buf.data(), n);
    }
    const int rc = pclose(p);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128 + WTERMSIG(rc);
}

std::string first_line(const std::string& s) {
    const size_t nl = s.find('\n');
    return nl == std::string::npos ? s : s.substr(0, nl);
}

std::string human_bytes(double b) {
    char buf[64];
    if (b >= (1ull << 30)) {
        std::snprintf(buf, sizeof(buf), "%.1f GiB", b / (1ull << 30));
    } else {
        std::snprintf(buf, sizeof(buf), "%.1f MiB", b / (1ull << 20));
    }
    return buf;
}

void check_host(Report& r, const topology::HostTopology& t) {
    r.add("PASS", "host", t.hostname + ": " + std::to_string(t.sockets) + " socket(s), " + std::to_string(t.cores) +
                              " cores, " + std::to_string(t.numa_nodes.size()) + " NUMA node(s), " +
                              human_bytes(static_cast<double>(t.memory_bytes)));
}

void check_memlock(Report& r) {
    rlimit lim{};
    getrlimit(RLIMIT_MEMLOCK, &lim);
    if (lim.rlim_cur == RLIM_INFINITY) {
        r.add("PASS", "memlock", "unlimited");
        return;
    }
    // RDMA (UCX, NCCL's IB transport) registers large buffers; 64 KiB / 8 MiB defaults make
    // registration fail at run time. Operators raise it with `ulimit -l unlimited` (limits.conf).
    const std::string have = human_bytes(static_cast<double>(lim.rlim_cur));
    r.add("WARN", "memlock", have + " (RDMA memory registration needs `ulimit -l unlimited`)");
}

void check_shm(Report& r) {
    struct statvfs vfs{};
    if (statvfs("/dev/shm", &vfs) != 0) {
        r.add("FAIL", "/dev/shm", "not mounted (MPI, UCX and NCCL shared-memory transports need it)");
        return;
    }
    const double total = static_cast<double>(vfs.f_blocks) * vfs.f_frsize;
    const double avail = static_cast<double>(vfs.f_bavail) * vfs.f_frsize;
    const std::string detail = human_bytes(avail) + " free of " + human_bytes(total);
    // NCCL needs ~tens of MiB per peer; containers default to 64 MiB, which breaks multi-GPU runs.
    r.add(avail >= 1024.0 * (1 << 20) ? "PASS" : "WARN", "/dev/shm", detail);
}

void check_ports(Report& r, const std::vector<int>& ports) {
    std::vector<int> busy;
    for (int port : ports) {
        const int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) {
            continue;
        }
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(static_cast<uint16_t>(port));
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
            busy.push_back(port);
        }
        close(fd);
    }
    std::ostringstream list;
    for (size_t i = 0; i < ports.size(); ++i) {
        list << (i ? "," : "") << ports[i];
    }
    if (busy.empty()) {
        r.add("PASS", "ports", "127.0.0.1:" + list.str() + " free");
        return;
    }
    std::ostringstream b;
    for (size_t i = 0; i < busy.size(); ++i) {
        b << (i ? "," : "") << busy[i];
    }
    r.add("FAIL", "ports", "in use on 127.0.0.1: " + b.str() + " (pick others with --http/--thrift/--control)");
}

void check_mpi(Report& r, const DoctorArgs& a) {
    std::string out;
    if (run_shell("mpirun --version", a.timeout_s, &out) != 0) {
        r.add("FAIL", "mpi", "mpirun not found or not working: " + first_line(out));
        return;
    }
    r.add("PASS", "mpi", first_line(out));
    if (a.no_mpi) {
        return;
    }
    // Starting real ranks catches what --version cannot: no ssh/rsh to the hosts, root refusal,
    // a firewall on the out-of-band channel.
    std::string cmd = "mpirun --allow-run-as-root --oversubscribe -np " + std::to_string(a.mpi_np);
    if (!a.hostfile.empty()) {
        cmd += " --hostfile '" + a.hostfile + "' --map-by node";
    }
    // With a model, every rank also fingerprints the checkpoint on its own host (this same binary,
    // rank mode), so a node with a stale or partial copy is caught before the job loads it.
    if (!a.model.empty()) {
        char self[4096] = {0};
        const ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
        if (n <= 0) {
            r.add("FAIL", "mpi-ranks", "cannot find the deepshard binary (/proc/self/exe)");
            return;
        }
        cmd += " '" + std::string(self, static_cast<size_t>(n)) + "' doctor --print-fingerprint --model '" + a.model + "'";
    } else {
        cmd += " hostname";
    }
    const int rc = run_shell(cmd, a.timeout_s, &out);
    if (rc != 0) {
        r.add("FAIL", "mpi-ranks", "`" + cmd + "` exited " + std::to_string(rc) + ": " + first_line(out));
        return;
    }
    std::set<std::string> hosts;
    std::map<std::string, std::set<std::string>> by_fingerprint;  // fingerprint -> hosts
    std::istringstream in(out);
    for (std::string line; std::getline(in, line);) {
        if (line.empty()) continue;
        if (a.model.empty()) {
            hosts.insert(line);
            continue;
        }
        const size_t sp = line.find(' ');
        if (line.rfind("fingerprint ", 0) != 0 || sp == std::string::npos) continue;  // MPI chatter
        std::istringstream fields(line.substr(12));
        std::string host, fp;
        fields >> host;
        std::getline(fields, fp);
        fp.erase(0, fp.find_first_not_of(' '));
        hosts.insert(host);
        by_fingerprint[fp].insert(host);
    }
    r.add("PASS", "mpi-ranks",
          std::to_string(a.mpi_np) + " ranks started on " + std::to_string(hosts.size()) + " host(s)");
    if (a.model.empty()) return;
    if (by_fingerprint.size() == 1 && by_fingerprint.begin()->first.rfind("error", 0) != 0) {
        r.add("PASS", "checkpoint-hosts",
              "same fingerprint " + by_fingerprint.begin()->first + " on " + std::to_string(hosts.size()) + " host(s)");
        return;
    }
    std::string detail;
    for (const auto& [fp, hs] : by_fingerprint) {
        std::string list;
        for (const auto& h : hs) list += (list.empty() ? "" : ",") + h;
        detail += (detail.empty() ? "" : "; ") + list + ": " + fp;
    }
    r.add("FAIL", "checkpoint-hosts",
          by_fingerprint.empty() ? "no rank reported a fingerprint: " + first_line(out)
                                 : "the checkpoint differs between hosts (" + detail + ")");
}

// Rank mode of the cross-host check: one line, "fingerprint <host> <hex>" or "fingerprint <host> error: ...".
int print_fingerprint(const std::string& dir) {
    char host[256] = {0};
    gethostname(host, sizeof(host) - 1);
    auto ck = model::Checkpoint::open(dir);
    Status v = ck.ok() ? (*ck)->validate() : ck.status();
    if (!v.ok()) {
        std::string msg = v.to_string();
        for (char& c : msg) c = c == '\n' ? ' ' : c;
        std::printf("fingerprint %s error: %s\n", host, msg.c_str());
        return 0;
    }
    std::printf("fingerprint %s %016llx\n", host, static_cast<unsigned long long>((*ck)->fingerprint()));
    return 0;
}

void check_ucx(Report& r, int timeout_s) {
    std::string out;
    if (run_shell("ucx_info -d", timeout_s, &out) != 0) {
        r.add("WARN", "ucx", "ucx_info not available (install ucx-utils): transports unknown");
        return;
    }
    std::set<std::string> tls;
    std::istringstream in(out);
    for (std::string line; std::getline(in, line);) {
        const size_t p = line.find("Transport:");
        if (p != std::string::npos) {
            std::string t = line.substr(p + 10);
            t.erase(0, t.find_first_not_of(' '));
            tls.insert(t);
        }
    }
    std::string list;
    for (const auto& t : tls) {
        list += (list.empty() ? "" : " ") + t;
    }
    const bool net = tls.count("tcp") || tls.count("rc_mlx5") || tls.count("rc_verbs") || tls.count("dc_mlx5");
    r.add(net ? "PASS" : "FAIL", "ucx", "transports: " + (list.empty() ? std::string("none") : list));
}

void check_gpus(Report& r, const topology::HostTopology& t) {
    if (t.gpus.empty()) {
        r.add("SKIP", "gpu", "no GPU (" + t.gpu_source + "); CUDA and NCCL checks skipped");
        return;
    }
    r.add("PASS", "gpu", std::to_string(t.gpus.size()) + " x " + t.gpus.front().name + " (" + t.gpus.front().arch + ")");
    void* nccl = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (nccl == nullptr) {
        r.add("FAIL", "nccl", "libnccl.so.2 cannot be loaded: " + std::string(dlerror()));
        return;
    }
    dlclose(nccl);
    r.add("PASS", "nccl", "libnccl.so.2 loads");
}

void check_rdma(Report& r, const topology::HostTopology& t) {
    if (t.rdma.empty()) {
        r.add("SKIP", "rdma", "no RDMA device (" + t.rdma_source + "); TCP will carry inter-host traffic");
        return;
    }
    for (const auto& d : t.rdma) {
        std::string ports;
        bool active = false;
        for (const auto& p : d.ports) {
            ports += (ports.empty() ? "" : ", ") + std::to_string(p.port) + ":" + p.state + "/" + p.link_layer;
            if (p.link_layer == "Ethernet") {
                ports += " gid " + std::to_string(p.roce_gid_index);
            }
            active = active || p.state == "ACTIVE";
        }
        r.add(active ? "PASS" : "FAIL", "rdma", d.name + " ports " + ports + (active ? "" : " (no ACTIVE port)"));
    }
}

void check_model(Report& r, const std::string& dir) {
    auto ck = model::Checkpoint::open(dir);
    if (!ck.ok()) {
        r.add("FAIL", "checkpoint", ck.status().to_string());
        return;
    }
    const Status v = (*ck)->validate();
    if (!v.ok()) {
        r.add("FAIL", "checkpoint", v.to_string());
        return;
    }
    char fp[32];
    std::snprintf(fp, sizeof(fp), "%016llx", static_cast<unsigned long long>((*ck)->fingerprint()));
    // The ranks of the mpi-ranks check compare it across hosts (checkpoint-hosts).
    r.add("PASS", "checkpoint", dir + " valid, fingerprint " + fp);
}

int run_doctor(const DoctorArgs& a) {
    Report r;
    auto topo = topology::discover_host();
    if (topo.ok()) {
        check_host(r, *topo);
    } else {
        r.add("FAIL", "host", topo.status().to_string());
    }
    check_memlock(r);
    check_shm(r);
    check_ports(r, a.ports);
    check_mpi(r, a);
    check_ucx(r, a.timeout_s);
    if (topo.ok()) {
        check_gpus(r, *topo);
        check_rdma(r, *topo);
    }
    if (!a.model.empty()) {
        check_model(r, a.model);
    }
    std::printf("%s: %d failed check(s)\n", r.failures() ? "doctor: NOT READY" : "doctor: ready", r.failures());
    return r.failures() ? 1 : 0;
}

}  // namespace

void register_doctor(CLI::App& app, int* exit_code) {
    auto args = std::make_shared<DoctorArgs>();
    auto* cmd = app.add_subcommand("doctor", "Pre-flight checks: MPI, UCX, GPUs/NCCL, RDMA, memlock, /dev/shm, ports, checkpoint");
    cmd->add_option("--model", args->model, "checkpoint to validate and fingerprint");
    cmd->add_option("--ports", args->ports, "TCP ports the services will bind on 127.0.0.1")->delimiter(',');
    cmd->add_option("--hostfile", args->hostfile, "start the MPI test ranks on these hosts");
    cmd->add_option("--np", args->mpi_np, "ranks for the MPI start-up check")->check(CLI::Range(1, 4096));
    cmd->add_option("--timeout", args->timeout_s, "deadline in seconds for each external command")
        ->check(CLI::Range(1, 3600));
    cmd->add_flag("--no-mpi-ranks", args->no_mpi, "only check that mpirun exists, start no ranks");
    cmd->add_flag("--print-fingerprint", args->print_fingerprint,
                  "rank mode of the cross-host check: print this host's checkpoint fingerprint")
        ->group("");  // internal
    cmd->callback([args, exit_code] {
        *exit_code = args->print_fingerprint ? print_fingerprint(args->model) : run_doctor(*args);
    });
}

}  // namespace deepshard::cli
