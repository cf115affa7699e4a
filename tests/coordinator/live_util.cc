#include "tests/coordinator/live_util.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <map>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "tests/util/subprocess.h"

namespace deepshard::testing_util {

namespace fs = std::filesystem;

BackgroundProcess::BackgroundProcess(const std::vector<std::string>& argv, const std::string& log_path,
                                     const std::vector<std::string>& env)
    : log_path_(log_path) {
    pid_ = fork();
    if (pid_ == 0) {
        setpgid(0, 0);
        int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0) dup2(devnull, 0);
        exec_in_child(argv, env);
    }
    if (pid_ > 0) setpgid(pid_, pid_);
}

BackgroundProcess::~BackgroundProcess() {
    kill_now();
}

bool BackgroundProcess::running() {
    if (pid_ <= 0 || reaped_) return false;
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
        reaped_ = true;
        wait_status_ = status;
        return false;
    }
    return true;
}

std::optional<int> BackgroundProcess::wait_exit(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (running()) {
        if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return wait_status_;
}

std::vector<pid_t> BackgroundProcess::descendants(const std::string& name) const {
    std::map<pid_t, std::pair<pid_t, std::string>> procs;  // pid -> (ppid, comm)
    std::error_code ec;
    for (const auto& e : fs::directory_iterator("/proc", ec)) {
        const std::string n = e.path().filename().string();
        if (n.empty() || !std::isdigit(static_cast<unsigned char>(n[0]))) continue;
        std::ifstream in(e.path() / "stat");
        std::string stat;
        std::getline(in, stat);
        const auto open_paren = stat.find('(');
        const auto close_paren = stat.rfind(')');
        if (open_paren == std::string::npos || close_paren == std::string::npos) continue;
        std::stringstream rest(stat.substr(close_paren + 2));
        char state = 0;
        pid_t ppid = 0;
        rest >> state >> ppid;
        procs[static_cast<pid_t>(std::stol(n))] = {ppid, stat.substr(open_paren + 1, close_paren - open_paren - 1)};
    }
    std::vector<pid_t> out;
    std::vector<pid_t> frontier = {pid_};
    while (!frontier.empty()) {
        const pid_t p = frontier.back();
        frontier.pop_back();
        for (const auto& [child, info] : procs) {
            if (info.first != p) continue;
            frontier.push_back(child);
            if (name.empty() || info.second == name) out.push_back(child);
        }
    }
    return out;
}

void BackgroundProcess::kill_now() {
    if (pid_ <= 0) return;
    const std::vector<pid_t> kids = reaped_ ? std::vector<pid_t>{} : descendants();
    // The whole group (mpirun's ranks usually stay in it), then every descendant by PID.
    if (!reaped_) ::kill(-pid_, SIGKILL);
    for (pid_t k : kids) ::kill(k, SIGKILL);
    if (!reaped_) {
        int status = 0;
        waitpid(pid_, &status, 0);
        reaped_ = true;
    }
}

std::string BackgroundProcess::log() const {
    std::ifstream in(log_path_);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

nlohmann::json HttpResponse::json() const {
    return nlohmann::json::parse(body, nullptr, false);
}

void ensure_test_env() {
    std::error_code ec;
    const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
    if (!std::getenv("DS_BINARY_DIR") && !ec) {
        setenv("DS_BINARY_DIR", exe.parent_path().parent_path().c_str(), 1);
    }
    if (!std::getenv("DS_SOURCE_DIR")) {
        std::ifstream cache(std::string(std::getenv("DS_BINARY_DIR") ? std::getenv("DS_BINARY_DIR") : ".") +
                            "/CMakeCache.txt");
        for (std::string line; std::getline(cache, line);) {
            if (line.rfind("deepshard_SOURCE_DIR:STATIC=", 0) == 0) {
                setenv("DS_SOURCE_DIR", line.substr(line.find('=') + 1).c_str(), 1);
            }
        }
    }
}

int connect_local(uint16_t port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

namespace {

std::string decode_chunked(const std::string& raw) {
    std::string out;
    size_t pos = 0;
    while (pos < raw.size()) {
        const size_t eol = raw.find("\r\n", pos);
        if (eol == std::string::npos) break;
        const size_t n = std::stoul(raw.substr(pos, eol - pos), nullptr, 16);
        if (n == 0) break;
        out += raw.substr(eol + 2, n);
        pos = eol + 2 + n + 2;
    }
    return out;
}

}  // namespace

HttpResponse http_request(uint16_t port, const std::string& method, const std::string& path, const std::string& body,
                          const std::vector<std::string>& headers, std::chrono::milliseconds timeout) {
    HttpResponse r;
    int fd = connect_local(port);
    if (fd < 0) {
        r.error = "connect failed";
        return r;
    }
    timeval tv{};
    tv.tv_sec = static_cast<long>(timeout.count() / 1000);
    tv.tv_usec = static_cast<long>((timeout.count() % 1000) * 1000);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    std::string req = method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n";
    for (const auto& h : headers) req += h + "\r\n";
    if (!body.empty() || method == "POST") {
        req += "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
    }
    req += "\r\n" + body;
    size_t sent = 0;
    while (sent < req.size()) {
        ssize_t n = send(fd, req.data() + sent, req.size() - sent, MSG_NOSIGNAL);
        if (n <= 0) break;  // the server may answer (413) and close before reading everything
        sent += static_cast<size_t>(n);
    }
    std::string raw;
    char buf[65536];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n <= 0) {
            if (n < 0 && raw.empty()) r.error = std::string("recv: ") + std::strerror(errno);
            break;
        }
        raw.append(buf, static_cast<size_t>(n));
    }
    close(fd);
    const size_t hdr_end = raw.find("\r\n\r\n");
    if (raw.rfind("HTTP/1.1 ", 0) != 0 || hdr_end == std::string::npos) {
        if (r.error.empty()) r.error = "no HTTP response";
        return r;
    }
    r.status = std::stoi(raw.substr(9, 3));
    r.headers = raw.substr(0, hdr_end);
    r.body = raw.substr(hdr_end + 4);
    std::string lower = r.headers;
    for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (lower.find("transfer-encoding: chunked") != std::string::npos) r.body = decode_chunked(r.body);
    return r;
}

double metric_value(const std::string& text, const std::string& name) {
    const std::string key = "\n" + name + " ";
    const auto at = ("\n" + text).find(key);
    if (at == std::string::npos) return -1;
    return std::stod(text.substr(at + key.size() - 1));
}

std::vector<std::string> sse_events(const std::string& body) {
    std::vector<std::string> out;
    std::stringstream ss(body);
    for (std::string line; std::getline(ss, line);) {
        if (line.rfind("data: ", 0) == 0) out.push_back(line.substr(6));
    }
    return out;
}

nlohmann::json wait_for_json_file(const std::string& path, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
        std::ifstream in(path);
        if (in) {
            auto j = nlohmann::json::parse(in, nullptr, false);
            if (!j.is_discarded()) return j;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return nlohmann::json();
}

std::string make_config_only_model(const std::string& base, bool with_tokenizer, int64_t vocab_size) {
    const std::string dir = make_temp_dir("ds_coord_model_") + "/test-model";
    fs::create_directories(dir);
    std::ifstream in(source_path("testdata/golden/" + base + "/config.json"));
    auto cfg = nlohmann::json::parse(in);
    if (vocab_size > 0) cfg["vocab_size"] = vocab_size;
    std::ofstream(dir + "/config.json") << cfg.dump(2);
    if (with_tokenizer) {
        for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) {
            fs::copy_file(source_path(std::string("testdata/tokenizer/") + f), dir + "/" + f);
        }
    }
    return dir;
}

namespace {
std::string tail_of(const std::string& s, size_t n = 2000) { return s.size() <= n ? s : "..." + s.substr(s.size() - n); }
}  // namespace

LiveCluster::~LiveCluster() {
    shard_.reset();
    coordinator_.reset();
    // The coordinator, killed without a chance to clean up, leaves the secret file it generated.
    const std::string secret = ports_.value("control_secret_file", std::string());
    if (!secret.empty()) {
        std::error_code ec;
        fs::remove(secret, ec);
    }
}

std::string LiveCluster::start_coordinator(const std::string& model, const std::string& dir,
                                           const std::vector<std::string>& extra_args, const std::string& layout,
                                           int ranks) {
    model_ = model;
    dir_ = dir;
    ranks_ = ranks;
    plan_ = dir + "/plan.json";
    std::vector<std::string> plan_cmd = {binary_path("deepshard"), "plan", "--model", model, "--layout", layout,
                                         // exact: served answers are compared with the float32 golden sets
                                         "--numerics", "exact", "--out", plan_};
    plan_cmd.insert(plan_cmd.end(), plan_args_.begin(), plan_args_.end());
    auto planned = run_command(plan_cmd, std::chrono::seconds(60));
    if (planned.exit_code != 0) return "deepshard plan: " + planned.out + planned.err;
    std::vector<std::string> cmd = {binary_path("deepshard-coordinator"), "--model", model,  "--plan",
                                    plan_, "--http", "127.0.0.1:0", "--control", "127.0.0.1:0", "--ports-file",
                                    dir + "/ports.json"};
    cmd.insert(cmd.end(), extra_args.begin(), extra_args.end());
    // No Thrift unless asked for: its default port would collide between parallel tests.
    if (std::find(extra_args.begin(), extra_args.end(), "--thrift") == extra_args.end()) {
        cmd.insert(cmd.end(), {"--thrift", ""});
    }
    coordinator_ = std::make_unique<BackgroundProcess>(cmd, dir + "/coordinator.log");
    ports_ = wait_for_json_file(dir + "/ports.json", std::chrono::seconds(60));
    if (!ports_.is_object()) {
        ports_ = nlohmann::json::object();
        return "the coordinator did not start: " + tail_of(coordinator_->log());
    }
    return "";
}

void LiveCluster::start_shard_job(const std::string& log_name) {
    shard_.reset();
    shard_ = start_job(plan_, job_control_port_ ? job_control_port_ : port("control"), ranks_, shard_args_, log_name);
}

std::unique_ptr<BackgroundProcess> LiveCluster::start_job(const std::string& plan, int control_port, int ranks,
                                                          const std::vector<std::string>& args,
                                                          const std::string& log_name) const {
    std::vector<std::string> cmd = mpirun_prefix(ranks);
    for (const std::string& a : {binary_path("deepshard-shard"), std::string("--model"), model_, std::string("--plan"),
                                 plan, std::string("--coordinator"), "127.0.0.1:" + std::to_string(control_port)}) {
        cmd.push_back(a);
    }
    cmd.insert(cmd.end(), args.begin(), args.end());
    // The job proves it belongs to this coordinator with the control secret it wrote (its path is in
    // the ports file); the path goes in the environment, mpirun hands it to rank 0.
    cmd.insert(cmd.begin() + 1, {"-x", "DS_CONTROL_SECRET_FILE"});
    return std::make_unique<BackgroundProcess>(
        cmd, dir_ + "/" + log_name,
        std::vector<std::string>{"OMPI_ALLOW_RUN_AS_ROOT=1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1",
                                 "DS_CONTROL_SECRET_FILE=" + ports_.value("control_secret_file", std::string())});
}

bool LiveCluster::wait_health(int status, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
        if (http_request(http(), "GET", "/health", "", {}, std::chrono::seconds(5)).status == status) return true;
        if (status == 200 && shard_ && !shard_->running()) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
}

std::string LiveCluster::start(const std::string& model, const std::string& dir,
                               const std::vector<std::string>& extra_args) {
    std::string err = start_coordinator(model, dir, extra_args);
    if (!err.empty()) return err;
    start_shard_job();
    if (!wait_health(200, std::chrono::seconds(240))) return "the shard job did not register:\n" + logs();
    return "";
}

std::string LiveCluster::logs() const {
    return "coordinator:\n" + (coordinator_ ? tail_of(coordinator_->log()) : std::string()) + "\nshard job:\n" +
           (shard_ ? tail_of(shard_->log()) : std::string());
}

}  // namespace deepshard::testing_util
