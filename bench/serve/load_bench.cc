// Full-scale load against a running deepshard-coordinator (issue 12 item 6), with its pass/fail
// criteria checked and printed. Per round:
//  1. `--non-readers` SSE clients connect with a tiny receive buffer, send a streaming request and
//     never read their socket (half ask for a short answer that fits the socket buffers, half for
//     `--non-reader-tokens`, which does not: the server's writes block);
//  2. `--requests` + `--overflow` healthy clients (half SSE, half plain) send the golden greedy
//     request all at once: with --max-running streams running and a --max-queue bound, the ones
//     beyond the bound must get a clear 429 (overloaded JSON error + Retry-After);
//  3. the coordinator's RSS (/proc/PID/status VmRSS) and its queue/running gauges (/metrics) are
//     sampled throughout.
// Checked: every healthy answer is 200 with exactly the single-process greedy tokens
// (testdata/golden/*/tokens.json) or a clear 429; no other outcome (no 5xx, no dropped connection,
// no deadline hit); at least one 429 per round and the sampled queue never above its bound; the
// server closes every non-reading connection (write or header deadline); the shard job stays
// registered with no loss; RSS peak - baseline <= --rss-peak-mb and RSS after the last round -
// after the first <= --rss-growth-mb (no growth from round to round).
//
// Usage: load_bench --ports-file FILE --reference tokens.json [--model NAME] [--rounds 2]
//          [--requests 1000] [--overflow 200] [--non-readers 200] [--non-reader-tokens 512]
//          [--max-queue 1000] [--max-running 64] [--rss-peak-mb 256] [--rss-growth-mb 16]
//          [--timeout-s 600] [--out-json FILE]
// Plain POSIX sockets, one thread per healthy client; every wait has a deadline.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::seconds;

struct Args {
    int port = 0;
    int pid = 0;
    std::string ports_file, reference, model, out_json;
    int rounds = 2, requests = 1000, overflow = 200, non_readers = 200, non_reader_tokens = 512;
    int max_queue = 1000, max_running = 64, rss_peak_mb = 256, rss_growth_mb = 16, timeout_s = 600;
};

[[noreturn]] void die(const std::string& msg) {
    std::fprintf(stderr, "load_bench: %s\n", msg.c_str());
    std::exit(2);
}

Args parse(int argc, char** argv) {
    Args a;
    const std::map<std::string, int*> ints = {{"--port", &a.port},
                                              {"--pid", &a.pid},
                                              {"--rounds", &a.rounds},
                                              {"--requests", &a.requests},
                                              {"--overflow", &a.overflow},
                                              {"--non-readers", &a.non_readers},
                                              {"--non-reader-tokens", &a.non_reader_tokens},
                                              {"--max-queue", &a.max_queue},
                                              {"--max-running", &a.max_running},
                                              {"--rss-peak-mb", &a.rss_peak_mb},
                                              {"--rss-growth-mb", &a.rss_growth_mb},
                                              {"--timeout-s", &a.timeout_s}};
    const std::map<std::string, std::string*> strs = {{"--ports-file", &a.ports_file},
                                                      {"--reference", &a.reference},
                                                      {"--model", &a.model},
                                                      {"--out-json", &a.out_json}};
    for (int i = 1; i < argc; ++i) {
        const std::string k = argv[i];
        if (i + 1 >= argc)
            die(k + " needs a value");
        const std::string v = argv[++i];
        if (auto it = ints.find(k); it != ints.end()) {
            *it->second = std::atoi(v.c_str());
            if (*it->second < 0)
                die(k + ": expected a non-negative integer, got '" + v + "'");
        } else if (auto is = strs.find(k); is != strs.end()) {
            *is->second = v;
        } else {
            die("unknown option " + k + " (see the header of bench/serve/load_bench.cc)");
        }
    }
    if (!a.ports_file.empty()) {
        std::ifstream in(a.ports_file);
        const json p = json::parse(in, nullptr, false);
        if (!p.is_object() || !p.contains("http"))
            die("--ports-file " + a.ports_file + ": no \"http\" port in it");
        if (a.port == 0)
            a.port = p["http"].get<int>();
        if (a.pid == 0 && p.contains("pid"))
            a.pid = p["pid"].get<int>();
    }
    if (a.port == 0 || a.pid == 0)
        die("need --ports-file (or --port and --pid)");
    if (a.reference.empty())
        die("need --reference (a golden tokens.json)");
    return a;
}

// ---- sockets with deadlines --------------------------------------------------------------------

// A non-blocking connection to 127.0.0.1:port; -1 on failure. rcvbuf > 0 shrinks the receive buffer
// before connecting (so the advertised window stays small).
int connect_to(int port, int rcvbuf, Clock::time_point deadline) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -1;
    if (rcvbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 && errno != EINPROGRESS) {
        ::close(fd);
        return -1;
    }
    for (;;) {
        const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count();
        pollfd p{fd, POLLOUT, 0};
        if (left <= 0 || ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 1000))) < 0) {
            if (errno == EINTR)
                continue;
            ::close(fd);
            return -1;
        }
        if (p.revents == 0)
            continue;
        int err = 0;
        socklen_t len = sizeof(err);
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
            ::close(fd);
            return -1;
        }
        return fd;
    }
}

bool wait_fd(int fd, short events, Clock::time_point deadline) {
    for (;;) {
        const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count();
        if (left <= 0)
            return false;
        pollfd p{fd, events, 0};
        const int r = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 1000)));
        if (r > 0)
            return true;
        if (r < 0 && errno != EINTR)
            return false;
    }
}

bool send_all(int fd, const std::string& data, Clock::time_point deadline) {
    for (size_t sent = 0; sent < data.size();) {
        const ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
        if (n > 0) {
            sent += static_cast<size_t>(n);
        } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            if (!wait_fd(fd, POLLOUT, deadline))
                return false;
        } else {
            return false;
        }
    }
    return true;
}

// Reads until EOF (Connection: close) or the deadline. False on error or deadline.
bool read_all(int fd, std::string* out, Clock::time_point deadline, Clock::time_point* first_data = nullptr) {
    char buf[16384];
    for (;;) {
        const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
        if (n > 0) {
            if (first_data && out->find("data: {") == std::string::npos) {
                out->append(buf, static_cast<size_t>(n));
                if (out->find("data: {") != std::string::npos)
                    *first_data = Clock::now();
            } else {
                out->append(buf, static_cast<size_t>(n));
            }
            continue;
        }
        if (n == 0)
            return true;
        if (errno != EAGAIN && errno != EINTR)
            return false;
        if (!wait_fd(fd, POLLIN, deadline))
            return false;
    }
}

std::string post_text(const std::string& body, bool close) {
    return std::string("POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n") +
           (close ? "Connection: close\r\n" : "") +
           "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

// Status and de-chunked body of a complete HTTP/1.1 response; status 0 when malformed.
int parse_response(const std::string& raw, std::string* headers, std::string* body) {
    const size_t hdr = raw.find("\r\n\r\n");
    if (raw.rfind("HTTP/1.1 ", 0) != 0 || hdr == std::string::npos)
        return 0;
    *headers = raw.substr(0, hdr);
    for (char& ch : *headers) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    std::string b = raw.substr(hdr + 4);
    if (headers->find("transfer-encoding: chunked") != std::string::npos) {
        std::string out;
        size_t pos = 0;
        for (;;) {
            const size_t eol = b.find("\r\n", pos);
            if (eol == std::string::npos)
                return 0;  // truncated: no last chunk
            const size_t n = std::strtoul(b.substr(pos, eol - pos).c_str(), nullptr, 16);
            if (n == 0)
                break;
            if (eol + 2 + n > b.size())
                return 0;
            out += b.substr(eol + 2, n);
            pos = eol + 2 + n + 2;
        }
        b = std::move(out);
    }
    *body = std::move(b);
    return std::atoi(raw.c_str() + 9);
}

int simple_get(int port, const std::string& path, std::string* body) {
    const auto deadline = Clock::now() + seconds(30);
    const int fd = connect_to(port, 0, deadline);
    if (fd < 0)
        return 0;
    std::string raw, headers;
    const bool ok =
        send_all(fd, "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", deadline) &&
        read_all(fd, &raw, deadline);
    ::close(fd);
    return ok ? parse_response(raw, &headers, body) : 0;
}

double metric(const std::string& text, const std::string& name) {
    std::stringstream ss(text);
    for (std::string line; std::getline(ss, line);) {
        if (line.rfind(name + " ", 0) == 0)
            return std::atof(line.c_str() + name.size() + 1);
    }
    return -1;
}

int64_t rss_kb(int pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    for (std::string line; std::getline(in, line);) {
        if (line.rfind("VmRSS:", 0) == 0)
            return std::atoll(line.c_str() + 6);
    }
    return -1;
}

// ---- one healthy request -----------------------------------------------------------------------

struct Outcome {
    int status = 0;     // 200, 429, other, 0 = no response
    std::string error;  // "" when the outcome is acceptable (200 with the golden tokens, or a clear 429)
    double e2e = 0, ttft = -1;
};

Outcome run_healthy(const Args& a, const std::string& body, bool stream, const std::vector<int>& golden) {
    Outcome o;
    const auto t0 = Clock::now();
    const auto deadline = t0 + seconds(a.timeout_s);
    const int fd = connect_to(a.port, 0, deadline);
    if (fd < 0) {
        o.error = "connect failed";
        return o;
    }
    std::string raw, headers, b;
    Clock::time_point first{};
    const bool ok =
        send_all(fd, post_text(body, true), deadline) && read_all(fd, &raw, deadline, stream ? &first : nullptr);
    ::close(fd);
    o.e2e = std::chrono::duration<double>(Clock::now() - t0).count();
    if (first != Clock::time_point{})
        o.ttft = std::chrono::duration<double>(first - t0).count();
    if (!ok) {
        o.error = Clock::now() >= deadline ? "deadline exceeded" : "connection error";
        return o;
    }
    o.status = parse_response(raw, &headers, &b);
    if (o.status == 429) {
        const json j = json::parse(b, nullptr, false);
        const bool clear = !j.is_discarded() && j.contains("error") && j["error"].value("code", "") == "overloaded" &&
                           headers.find("retry-after:") != std::string::npos;
        if (!clear)
            o.error = "429 without the overloaded error or Retry-After: " + b.substr(0, 300);
        return o;
    }
    if (o.status != 200) {
        o.error = "HTTP " + std::to_string(o.status) + ": " + b.substr(0, 300);
        return o;
    }
    std::vector<int> tokens;
    if (!stream) {
        const json j = json::parse(b, nullptr, false);
        if (j.is_discarded() || !j.contains("choices")) {
            o.error = "not a completion: " + b.substr(0, 300);
            return o;
        }
        tokens = j["choices"][0]["token_ids"].get<std::vector<int>>();
    } else {
        bool done = false;
        std::stringstream ss(b);
        for (std::string line; std::getline(ss, line);) {
            if (line.rfind("data: ", 0) != 0)
                continue;
            const std::string d = line.substr(6);
            if (d == "[DONE]") {
                done = true;
                continue;
            }
            const json j = json::parse(d, nullptr, false);
            if (j.is_discarded() || j.contains("error")) {
                o.error = "bad event: " + d.substr(0, 300);
                return o;
            }
            for (const auto& c : j["choices"]) {
                if (c.contains("token_ids")) {
                    for (int t : c["token_ids"]) tokens.push_back(t);
                }
            }
        }
        if (!done) {
            o.error = "stream ended without [DONE]";
            return o;
        }
    }
    if (tokens != golden)
        o.error = "tokens differ from the single-process greedy reference";
    return o;
}

double quantile(std::vector<double> v, double q) {
    if (v.empty())
        return 0;
    std::sort(v.begin(), v.end());
    const size_t k = static_cast<size_t>(std::ceil(q * static_cast<double>(v.size())));
    return v[std::min(v.size() - 1, k == 0 ? 0 : k - 1)];
}

// ---- one round ---------------------------------------------------------------------------------

struct Sampler {
    std::atomic<bool> stop{false};
    std::atomic<int64_t> rss_peak{0};
    std::atomic<int> queued_peak{0}, running_peak{0};
    std::thread thread;

    void start(const Args& a) {
        thread = std::thread([this, &a] {
            int tick = 0;
            while (!stop) {
                rss_peak = std::max<int64_t>(rss_peak, rss_kb(a.pid));
                if (tick++ % 5 == 0) {  // /metrics every 250 ms: it costs the server a request
                    std::string m;
                    if (simple_get(a.port, "/metrics", &m) == 200) {
                        queued_peak =
                            std::max(queued_peak.load(), static_cast<int>(metric(m, "deepshard_queued_requests")));
                        running_peak =
                            std::max(running_peak.load(), static_cast<int>(metric(m, "deepshard_running_sequences")));
                    }
                }
                std::this_thread::sleep_for(milliseconds(50));
            }
        });
    }
    void finish() {
        stop = true;
        thread.join();
    }
};

json run_round(const Args& a,
               int round,
               const std::string& model,
               const std::vector<int>& prompt,
               const std::vector<int>& golden,
               std::vector<std::string>* failures) {
    auto fail = [&](const std::string& what) { failures->push_back("round " + std::to_string(round) + ": " + what); };
    std::string m0;
    simple_get(a.port, "/metrics", &m0);
    Sampler sampler;
    sampler.start(a);
    const auto t0 = Clock::now();

    // 1. The non-readers, first: they sit at the head of the queue and hold running slots.
    std::vector<int> silent;
    for (int i = 0; i < a.non_readers; ++i) {
        const int max_tokens = i % 2 == 0 ? static_cast<int>(golden.size()) : a.non_reader_tokens;
        const json body = {{"model", model},   {"prompt", prompt},   {"max_tokens", max_tokens},
                           {"temperature", 0}, {"ignore_eos", true}, {"stream", true}};
        const auto deadline = Clock::now() + seconds(30);
        const int fd = connect_to(a.port, 2048, deadline);
        if (fd < 0 || !send_all(fd, post_text(body.dump(), false), deadline)) {
            fail("non-reader " + std::to_string(i) + " could not connect/send");
            if (fd >= 0)
                ::close(fd);
            continue;
        }
        silent.push_back(fd);
    }

    // 2. The burst of healthy clients.
    const int total = a.requests + a.overflow;
    std::vector<Outcome> out(static_cast<size_t>(total));
    std::vector<std::thread> threads;
    threads.reserve(static_cast<size_t>(total));
    for (int i = 0; i < total; ++i) {
        const bool stream = i % 2 == 1;
        const json body = {{"model", model},   {"prompt", prompt},   {"max_tokens", static_cast<int>(golden.size())},
                           {"temperature", 0}, {"ignore_eos", true}, {"stream", stream}};
        threads.emplace_back(
            [&, i, stream, b = body.dump()] { out[static_cast<size_t>(i)] = run_healthy(a, b, stream, golden); });
    }
    for (auto& t : threads) t.join();
    const double burst_s = std::chrono::duration<double>(Clock::now() - t0).count();

    // 3. Every non-reading connection must be closed by the server (its write deadline, or the
    // keep-alive header deadline once a short answer fit the socket buffers). Reading now only
    // drains what the server already wrote.
    int closed = 0;
    const auto close_deadline = Clock::now() + seconds(180);
    std::vector<bool> is_closed(silent.size(), false);
    while (closed < static_cast<int>(silent.size()) && Clock::now() < close_deadline) {
        for (size_t i = 0; i < silent.size(); ++i) {
            if (is_closed[i])
                continue;
            char buf[65536];
            for (;;) {
                const ssize_t n = ::recv(silent[i], buf, sizeof(buf), MSG_DONTWAIT);
                if (n > 0)
                    continue;
                if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
                    is_closed[i] = true;
                    ++closed;
                }
                break;
            }
        }
        std::this_thread::sleep_for(milliseconds(200));
    }
    for (int fd : silent) ::close(fd);
    if (closed != static_cast<int>(silent.size())) {
        fail(std::to_string(silent.size() - static_cast<size_t>(closed)) +
             " non-reading connection(s) still open 180 s after the burst");
    }

    // 4. Nothing left running or queued (bounded wait), then the "after" sample.
    std::string m1;
    const auto idle_deadline = Clock::now() + seconds(120);
    while (Clock::now() < idle_deadline) {
        simple_get(a.port, "/metrics", &m1);
        if (metric(m1, "deepshard_running_sequences") == 0 && metric(m1, "deepshard_queued_requests") == 0)
            break;
        std::this_thread::sleep_for(milliseconds(200));
    }
    sampler.finish();
    const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
    if (metric(m1, "deepshard_running_sequences") != 0 || metric(m1, "deepshard_queued_requests") != 0) {
        fail("requests still running or queued 120 s after the load");
    }

    int ok = 0, rejected = 0;
    std::map<std::string, int> errors;
    std::vector<double> e2e, ttft;
    for (const Outcome& o : out) {
        if (!o.error.empty()) {
            ++errors[o.error];
            continue;
        }
        if (o.status == 429) {
            ++rejected;
            continue;
        }
        ++ok;
        e2e.push_back(o.e2e);
        if (o.ttft >= 0)
            ttft.push_back(o.ttft);
    }
    for (const auto& [e, n] : errors) fail(std::to_string(n) + " healthy request(s): " + e);
    if (rejected == 0)
        fail("no 429: the queue bound was never reached (offer more with --overflow)");
    if (sampler.queued_peak > a.max_queue) {
        fail("sampled queue " + std::to_string(sampler.queued_peak.load()) + " above --max-queue " +
             std::to_string(a.max_queue));
    }
    if (sampler.running_peak > a.max_running) {
        fail("sampled running " + std::to_string(sampler.running_peak.load()) + " above --max-running");
    }
    const double rejected_delta =
        metric(m1, "deepshard_requests_rejected_total") - metric(m0, "deepshard_requests_rejected_total");
    if (rejected_delta != rejected) {
        fail("the server counted " + std::to_string(rejected_delta) + " rejections, clients saw " +
             std::to_string(rejected));
    }
    if (metric(m1, "deepshard_shard_job_up") != 1 ||
        metric(m1, "deepshard_shard_losses_total") != metric(m0, "deepshard_shard_losses_total")) {
        fail("the shard job was lost or is not registered");
    }
    const json r = {{"round", round},
                    {"offered", total},
                    {"non_readers", a.non_readers},
                    {"accepted_ok", ok},
                    {"rejected_429", rejected},
                    {"failed", total - ok - rejected},
                    {"non_readers_closed_by_server", closed},
                    {"queued_peak", sampler.queued_peak.load()},
                    {"running_peak", sampler.running_peak.load()},
                    {"burst_s", burst_s},
                    {"elapsed_s", elapsed},
                    {"e2e_ms", {{"p50", quantile(e2e, .5) * 1e3}, {"p99", quantile(e2e, .99) * 1e3}}},
                    {"sse_ttft_ms", {{"p50", quantile(ttft, .5) * 1e3}, {"p99", quantile(ttft, .99) * 1e3}}},
                    {"generated_tokens",
                     metric(m1, "deepshard_generation_tokens_total") - metric(m0, "deepshard_generation_tokens_total")},
                    {"rss_peak_kb", sampler.rss_peak.load()},
                    {"rss_after_kb", rss_kb(a.pid)}};
    std::printf(
        "round %d: offered %d + %d non-readers: %d ok, %d x 429, %d failed; non-readers closed by the server "
        "%d/%zu; peak queued %d, running %d; e2e p50 %.0f ms p99 %.0f ms, SSE TTFT p50 %.0f ms p99 %.0f ms; "
        "burst %.1f s, round %.1f s; RSS peak %.1f MB, after %.1f MB\n",
        round, total, a.non_readers, ok, rejected, total - ok - rejected, closed, silent.size(),
        sampler.queued_peak.load(), sampler.running_peak.load(), r["e2e_ms"]["p50"].get<double>(),
        r["e2e_ms"]["p99"].get<double>(), r["sse_ttft_ms"]["p50"].get<double>(), r["sse_ttft_ms"]["p99"].get<double>(),
        burst_s, elapsed, sampler.rss_peak / 1024.0, r["rss_after_kb"].get<int64_t>() / 1024.0);
    std::fflush(stdout);
    return r;
}

}  // namespace

int main(int argc, char** argv) {
    const Args a = parse(argc, argv);
    // One socket per client: lift the soft descriptor limit to the hard one.
    rlimit nofile{};
    if (getrlimit(RLIMIT_NOFILE, &nofile) == 0) {
        nofile.rlim_cur = nofile.rlim_max;
        setrlimit(RLIMIT_NOFILE, &nofile);
        const rlim_t need = static_cast<rlim_t>(a.requests + a.overflow + a.non_readers + 64);
        if (nofile.rlim_cur < need)
            die("RLIMIT_NOFILE " + std::to_string(nofile.rlim_cur) + " < " + std::to_string(need));
    }
    std::ifstream in(a.reference);
    const json ref = json::parse(in, nullptr, false);
    if (ref.is_discarded() || !ref.contains("prompt_for_generation") || !ref.contains("greedy_generated")) {
        die("--reference " + a.reference + ": needs prompt_for_generation and greedy_generated");
    }
    const auto prompt = ref["prompt_for_generation"].get<std::vector<int>>();
    const auto golden = ref["greedy_generated"].get<std::vector<int>>();
    std::string body;
    if (simple_get(a.port, "/health", &body) != 200)
        die("the coordinator is not healthy: " + body);
    std::string model = a.model;
    if (model.empty()) {
        if (simple_get(a.port, "/v1/models", &body) != 200)
            die("GET /v1/models failed");
        model = json::parse(body)["data"][0]["id"].get<std::string>();
    }
    // Warm-up (first-touch costs on every rank), then the baseline.
    {
        const json wb = {{"model", model},   {"prompt", prompt},   {"max_tokens", static_cast<int>(golden.size())},
                         {"temperature", 0}, {"ignore_eos", true}, {"stream", false}};
        const Outcome w = run_healthy(a, wb.dump(), false, golden);
        if (!w.error.empty())
            die("warm-up request failed: " + w.error);
    }
    const int64_t rss_before = rss_kb(a.pid);
    std::printf(
        "load_bench: coordinator pid %d, model '%s', %d round(s): %d+%d healthy requests (golden prompt, %zu "
        "greedy tokens) and %d non-readers each; bounds: --max-running %d --max-queue %d; RSS before %.1f MB\n",
        a.pid, model.c_str(), a.rounds, a.requests, a.overflow, golden.size(), a.non_readers, a.max_running,
        a.max_queue, rss_before / 1024.0);
    std::vector<std::string> failures;
    json rounds = json::array();
    int64_t peak = rss_before;
    for (int r = 1; r <= a.rounds; ++r) {
        rounds.push_back(run_round(a, r, model, prompt, golden, &failures));
        peak = std::max<int64_t>(peak, rounds.back()["rss_peak_kb"].get<int64_t>());
    }
    std::string health;
    if (simple_get(a.port, "/health", &health) != 200)
        failures.push_back("/health is not 200 after the load: " + health);
    const int64_t after_first = rounds.front()["rss_after_kb"].get<int64_t>();
    const int64_t after_last = rounds.back()["rss_after_kb"].get<int64_t>();
    const bool peak_ok = peak - rss_before <= int64_t{a.rss_peak_mb} * 1024;
    const bool growth_ok = after_last - after_first <= int64_t{a.rss_growth_mb} * 1024;
    if (!peak_ok)
        failures.push_back("RSS peak - before above --rss-peak-mb");
    if (!growth_ok)
        failures.push_back("RSS grew from the first round to the last above --rss-growth-mb");
    const json result = {{"bench", "load"},
                         {"rss_before_kb", rss_before},
                         {"rss_peak_kb", peak},
                         {"rss_after_first_kb", after_first},
                         {"rss_after_last_kb", after_last},
                         {"rss_peak_bound_mb", a.rss_peak_mb},
                         {"rss_growth_bound_mb", a.rss_growth_mb},
                         {"rounds", rounds},
                         {"failures", failures},
                         {"pass", failures.empty()}};
    std::printf(
        "RSS: before %.1f MB, peak %.1f MB (+%.1f, bound +%d: %s), after round 1 %.1f MB, after round %d "
        "%.1f MB (growth %+.1f, bound %d: %s)\n",
        rss_before / 1024.0, peak / 1024.0, (peak - rss_before) / 1024.0, a.rss_peak_mb, peak_ok ? "PASS" : "FAIL",
        after_first / 1024.0, a.rounds, after_last / 1024.0, (after_last - after_first) / 1024.0, a.rss_growth_mb,
        growth_ok ? "PASS" : "FAIL");
    std::printf("JSON %s\n", result.dump().c_str());
    if (!a.out_json.empty()) {
        std::ofstream o(a.out_json);
        o << result.dump(2) << "\n";
    }
    for (const auto& f : failures) std::printf("FAIL: %s\n", f.c_str());
    std::printf("%s\n", failures.empty() ? "PASS: every criterion held" : "FAIL");
    return failures.empty() ? 0 : 1;
}
