// Serving load generator for a running deepshard-coordinator (HTTP, OpenAI API). For each
// concurrency level, C closed-loop clients each send R streaming /v1/completions requests with a
// fixed prompt length (random token ids) and a fixed output length (ignore_eos), and time every
// SSE event: time to first token (TTFT), inter-token latency (ITL), end-to-end latency. Around
// each level it scrapes /metrics and the coordinator's CPU time (/proc/PID/stat) to split a step
// into shard-job time, transport/queueing and the coordinator's own work.
//
// Usage: serve_bench --port P | --ports-file FILE  [--model NAME] [--api-key KEY]
//          [--concurrency 1,2,4,8,16,32] [--rounds 4] [--prompt-len 64] [--output-len 64]
//          [--vocab 4096] [--pid PID] [--timeout-s 300] [--out-json FILE] [--plot PREFIX]
// --plot writes PREFIX.dat, PREFIX.gp and (when gnuplot is installed) PREFIX.png.
// Checks its results: every request must return 200, exactly --output-len tokens, finish_reason
// "length" and [DONE]; otherwise it reports the failures and exits 1. Plain POSIX sockets, one
// thread per client; every socket wait is bounded by the request's deadline.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

struct Args {
    std::string host = "127.0.0.1";
    int port = 0;
    std::string ports_file;
    std::string model;
    std::string api_key;
    std::vector<int> concurrency{1, 2, 4, 8, 16, 32};
    int rounds = 4;
    int prompt_len = 64;
    int output_len = 64;
    int vocab = 4096;
    int pid = 0;
    int timeout_s = 300;
    std::string out_json;
    std::string plot;
};

[[noreturn]] void die(const std::string& msg) {
    std::fprintf(stderr, "serve_bench: %s\n", msg.c_str());
    std::exit(1);
}

std::vector<int> parse_list(const std::string& s) {
    std::vector<int> out;
    std::stringstream ss(s);
    for (std::string t; std::getline(ss, t, ',');) {
        const int v = std::atoi(t.c_str());
        if (v <= 0) die("--concurrency: '" + t + "' is not a positive integer");
        out.push_back(v);
    }
    return out;
}

Args parse(int argc, char** argv) {
    Args a;
    for (int i = 1; i < argc; ++i) {
        const std::string k = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) die(k + " needs a value");
            return argv[++i];
        };
        auto next_int = [&](int min) {
            const std::string v = next();
            const int n = std::atoi(v.c_str());
            if (n < min) die(k + ": expected an integer >= " + std::to_string(min) + ", got '" + v + "'");
            return n;
        };
        if (k == "--host") {
            a.host = next();
        } else if (k == "--port") {
            a.port = next_int(1);
        } else if (k == "--ports-file") {
            a.ports_file = next();
        } else if (k == "--model") {
            a.model = next();
        } else if (k == "--api-key") {
            a.api_key = next();
        } else if (k == "--concurrency") {
            a.concurrency = parse_list(next());
        } else if (k == "--rounds") {
            a.rounds = next_int(1);
        } else if (k == "--prompt-len") {
            a.prompt_len = next_int(1);
        } else if (k == "--output-len") {
            a.output_len = next_int(1);
        } else if (k == "--vocab") {
            a.vocab = next_int(4);
        } else if (k == "--pid") {
            a.pid = next_int(1);
        } else if (k == "--timeout-s") {
            a.timeout_s = next_int(1);
        } else if (k == "--out-json") {
            a.out_json = next();
        } else if (k == "--plot") {
            a.plot = next();
        } else {
            die("unknown option " + k + " (see the header of bench/serve/serve_bench.cc)");
        }
    }
    if (!a.ports_file.empty()) {
        std::ifstream in(a.ports_file);
        json p = json::parse(in, nullptr, false);
        if (!p.is_object() || !p.contains("http")) die("--ports-file " + a.ports_file + ": no \"http\" port in it");
        if (a.port == 0) a.port = p["http"].get<int>();
        if (a.pid == 0 && p.contains("pid")) a.pid = p["pid"].get<int>();
    }
    if (a.port == 0) die("--port or --ports-file is required");
    return a;
}

// ---- A minimal HTTP/1.1 client with deadlines --------------------------------------------------

class Conn {
public:
    Conn(const std::string& host, int port, Clock::time_point deadline) : deadline_(deadline) {
        fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (fd_ < 0) return;
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_port = htons(static_cast<uint16_t>(port));
        if (inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
            error_ = "bad host " + host;
            return;
        }
        const int one = 1;
        setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 && errno != EINPROGRESS) {
            error_ = std::string("connect: ") + std::strerror(errno);
            return;
        }
        if (!wait(POLLOUT)) return;
        int err = 0;
        socklen_t len = sizeof(err);
        getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) error_ = std::string("connect: ") + std::strerror(err);
    }
    ~Conn() {
        if (fd_ >= 0) ::close(fd_);
    }
    Conn(const Conn&) = delete;
    Conn& operator=(const Conn&) = delete;

    bool ok() const { return fd_ >= 0 && error_.empty(); }
    const std::string& error() const { return error_; }

    bool send_all(const std::string& data) {
        size_t sent = 0;
        while (sent < data.size()) {
            const ssize_t n = ::send(fd_, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
            if (n > 0) {
                sent += static_cast<size_t>(n);
            } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
                if (!wait(POLLOUT)) return false;
            } else {
                error_ = std::string("send: ") + std::strerror(errno);
                return false;
            }
        }
        return true;
    }

    // Appends what arrives to `out`; false on EOF (eof() true), error or deadline.
    bool recv_some(std::string* out) {
        char buf[16384];
        for (;;) {
            const ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
            if (n > 0) {
                out->append(buf, static_cast<size_t>(n));
                return true;
            }
            if (n == 0) {
                eof_ = true;
                return false;
            }
            if (errno != EAGAIN && errno != EINTR) {
                error_ = std::string("recv: ") + std::strerror(errno);
                return false;
            }
            if (!wait(POLLIN)) return false;
        }
    }
    bool eof() const { return eof_; }

private:
    bool wait(short events) {
        for (;;) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ - Clock::now()).count();
            if (left <= 0) {
                error_ = "deadline exceeded";
                return false;
            }
            pollfd p{fd_, events, 0};
            const int r = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 1000)));
            if (r > 0) return true;
            if (r < 0 && errno != EINTR) {
                error_ = std::string("poll: ") + std::strerror(errno);
                return false;
            }
        }
    }

    int fd_ = -1;
    bool eof_ = false;
    std::string error_;
    Clock::time_point deadline_;
};

std::string request_text(const Args& a, const std::string& method, const std::string& path, const std::string& body) {
    std::string r = method + " " + path + " HTTP/1.1\r\nHost: " + a.host + "\r\nConnection: close\r\n";
    if (!a.api_key.empty()) r += "Authorization: Bearer " + a.api_key + "\r\n";
    if (method == "POST") r += "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
    return r + "\r\n" + body;
}

// A whole (small) response: status and de-chunked body. Status 0 on failure, `err` says why.
int simple_get(const Args& a, const std::string& path, std::string* body, std::string* err) {
    Conn c(a.host, a.port, Clock::now() + std::chrono::seconds(30));
    if (!c.ok() || !c.send_all(request_text(a, "GET", path, ""))) {
        *err = c.error();
        return 0;
    }
    std::string raw;
    while (c.recv_some(&raw)) {
    }
    if (!c.eof()) {
        *err = c.error();
        return 0;
    }
    const size_t hdr = raw.find("\r\n\r\n");
    if (raw.rfind("HTTP/1.1 ", 0) != 0 || hdr == std::string::npos) {
        *err = "no HTTP response";
        return 0;
    }
    std::string headers = raw.substr(0, hdr);
    for (char& ch : headers) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    std::string b = raw.substr(hdr + 4);
    if (headers.find("transfer-encoding: chunked") != std::string::npos) {
        std::string out;
        size_t pos = 0;
        while (pos < b.size()) {
            const size_t eol = b.find("\r\n", pos);
            if (eol == std::string::npos) break;
            const size_t n = std::stoul(b.substr(pos, eol - pos), nullptr, 16);
            if (n == 0) break;
            out += b.substr(eol + 2, n);
            pos = eol + 2 + n + 2;
        }
        b = out;
    }
    *body = b;
    return std::stoi(raw.substr(9, 3));
}

// ---- One streaming request ---------------------------------------------------------------------

struct RequestResult {
    bool ok = false;
    std::string error;
    double ttft = 0;               // seconds
    double e2e = 0;                // seconds
    std::vector<double> itl;       // seconds, one per token after the first
    int tokens = 0;
    int multi_token_events = 0;    // SSE events that carried more than one token
};

// Decodes chunked transfer framing incrementally.
class Dechunker {
public:
    // Moves complete chunk payloads from `raw` to `out`; false on malformed framing.
    bool feed(std::string* raw, std::string* out) {
        for (;;) {
            if (left_ == 0) {
                const size_t eol = raw->find("\r\n");
                if (eol == std::string::npos) return true;
                if (eol == 0) {  // the CRLF after a chunk's data
                    raw->erase(0, 2);
                    continue;
                }
                char* end = nullptr;
                const unsigned long n = std::strtoul(raw->c_str(), &end, 16);
                if (end == raw->c_str()) return false;
                raw->erase(0, eol + 2);
                if (n == 0) {
                    done_ = true;
                    return true;
                }
                left_ = n;
            }
            const size_t take = std::min(left_, raw->size());
            if (take == 0) return true;
            out->append(*raw, 0, take);
            raw->erase(0, take);
            left_ -= take;
        }
    }
    bool done() const { return done_; }

private:
    size_t left_ = 0;
    bool done_ = false;
};

RequestResult run_request(const Args& a, const std::string& model, uint64_t index) {
    RequestResult r;
    std::mt19937_64 rng(0x5eed0000ULL + index);
    std::uniform_int_distribution<int> id(3, a.vocab - 1);
    std::vector<int> prompt(static_cast<size_t>(a.prompt_len));
    for (int& t : prompt) t = id(rng);
    const json body = {{"model", model},       {"prompt", prompt},     {"max_tokens", a.output_len},
                       {"temperature", 0},     {"ignore_eos", true},   {"stream", true},
                       {"return_token_ids", true}};
    const auto t0 = Clock::now();
    Conn c(a.host, a.port, t0 + std::chrono::seconds(a.timeout_s));
    if (!c.ok() || !c.send_all(request_text(a, "POST", "/v1/completions", body.dump()))) {
        r.error = c.error();
        return r;
    }
    std::string raw, payload;
    bool headers_done = false, chunked = false, saw_done = false;
    std::string finish;
    Dechunker dechunk;
    Clock::time_point last_token{};
    while (!saw_done) {
        if (!c.recv_some(&raw)) break;
        const auto now = Clock::now();
        if (!headers_done) {
            const size_t hdr = raw.find("\r\n\r\n");
            if (hdr == std::string::npos) continue;
            if (raw.rfind("HTTP/1.1 200", 0) != 0) {
                while (c.recv_some(&raw)) {
                }
                r.error = "HTTP error: " + raw.substr(0, 600);
                return r;
            }
            std::string h = raw.substr(0, hdr);
            for (char& ch : h) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
            chunked = h.find("transfer-encoding: chunked") != std::string::npos;
            raw.erase(0, hdr + 4);
            headers_done = true;
        }
        if (chunked) {
            if (!dechunk.feed(&raw, &payload)) {
                r.error = "malformed chunked framing";
                return r;
            }
        } else {
            payload += raw;
            raw.clear();
        }
        // SSE events end with a blank line.
        for (size_t end; (end = payload.find("\n\n")) != std::string::npos;) {
            const std::string ev = payload.substr(0, end);
            payload.erase(0, end + 2);
            if (ev.rfind("data: ", 0) != 0) continue;
            const std::string data = ev.substr(6);
            if (data == "[DONE]") {
                saw_done = true;
                break;
            }
            const json j = json::parse(data, nullptr, false);
            if (j.is_discarded() || j.contains("error")) {
                r.error = "error event: " + data;
                return r;
            }
            int k = 0;
            for (const auto& ch : j.value("choices", json::array())) {
                if (ch.contains("token_ids")) k += static_cast<int>(ch["token_ids"].size());
                if (ch.contains("finish_reason") && ch["finish_reason"].is_string()) finish = ch["finish_reason"].get<std::string>();
            }
            if (k == 0) continue;
            if (r.tokens == 0) {
                r.ttft = std::chrono::duration<double>(now - t0).count();
                // Tokens after the first in the same event arrived with no gap.
                for (int i = 1; i < k; ++i) r.itl.push_back(0);
            } else {
                // k tokens after a gap g: k samples of g/k (one per token, mean preserved).
                const double g = std::chrono::duration<double>(now - last_token).count();
                for (int i = 0; i < k; ++i) r.itl.push_back(g / k);
            }
            if (k > 1) ++r.multi_token_events;
            r.tokens += k;
            last_token = now;
        }
    }
    r.e2e = std::chrono::duration<double>(Clock::now() - t0).count();
    if (!saw_done) {
        r.error = c.eof() ? "the stream ended without [DONE]" : c.error();
    } else if (r.tokens != a.output_len) {
        r.error = "got " + std::to_string(r.tokens) + " tokens, expected " + std::to_string(a.output_len);
    } else if (finish != "length") {
        r.error = "finish_reason '" + finish + "', expected 'length'";
    } else {
        r.ok = true;
    }
    return r;
}

// ---- Coordinator-side accounting -----------------------------------------------------------------

struct Scrape {
    std::map<std::string, double> samples;  // "name value" lines (no labels)
    double cpu_seconds = -1;                // coordinator utime + stime
};

Scrape scrape(const Args& a) {
    Scrape s;
    std::string body, err;
    if (simple_get(a, "/metrics", &body, &err) == 200) {
        std::stringstream ss(body);
        for (std::string line; std::getline(ss, line);) {
            if (line.empty() || line[0] == '#' || line.find('{') != std::string::npos) continue;
            const auto sp = line.rfind(' ');
            if (sp == std::string::npos) continue;
            s.samples[line.substr(0, sp)] = std::atof(line.c_str() + sp + 1);
        }
    }
    if (a.pid > 0) {
        std::ifstream in("/proc/" + std::to_string(a.pid) + "/stat");
        std::string stat;
        std::getline(in, stat);
        const auto close = stat.rfind(')');
        if (close != std::string::npos) {
            std::stringstream rest(stat.substr(close + 2));
            std::vector<std::string> f;
            for (std::string t; rest >> t;) f.push_back(t);
            // Fields after the name: state(0) ... utime(11) stime(12), in clock ticks.
            if (f.size() > 12) {
                s.cpu_seconds = (std::atof(f[11].c_str()) + std::atof(f[12].c_str())) /
                                static_cast<double>(sysconf(_SC_CLK_TCK));
            }
        }
    }
    return s;
}

double delta(const Scrape& b, const Scrape& e, const std::string& name) {
    auto i = b.samples.find(name);
    auto j = e.samples.find(name);
    if (i == b.samples.end() || j == e.samples.end()) return 0;
    return j->second - i->second;
}

double quantile(std::vector<double> v, double q) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    // Nearest rank.
    const size_t k = static_cast<size_t>(std::ceil(q * static_cast<double>(v.size())));
    return v[std::min(v.size() - 1, k == 0 ? 0 : k - 1)];
}

json run_level(const Args& a, const std::string& model, int conc, uint64_t* next_index, int* failures) {
    const Scrape before = scrape(a);
    std::vector<std::vector<RequestResult>> per_client(static_cast<size_t>(conc));
    const uint64_t base = *next_index;
    *next_index += static_cast<uint64_t>(conc) * static_cast<uint64_t>(a.rounds);
    const auto t0 = Clock::now();
    std::vector<std::thread> threads;
    for (int c = 0; c < conc; ++c) {
        threads.emplace_back([&, c] {
            for (int r = 0; r < a.rounds; ++r) {
                per_client[static_cast<size_t>(c)].push_back(
                    run_request(a, model, base + static_cast<uint64_t>(r) * static_cast<uint64_t>(conc) +
                                              static_cast<uint64_t>(c)));
            }
        });
    }
    for (auto& t : threads) t.join();
    const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
    const Scrape after = scrape(a);

    std::vector<double> ttft, itl, e2e;
    int ok = 0, tokens = 0, multi = 0;
    std::vector<std::string> errors;
    for (const auto& client : per_client) {
        for (const auto& r : client) {
            if (!r.ok) {
                if (errors.size() < 5) errors.push_back(r.error);
                ++*failures;
                continue;
            }
            ++ok;
            tokens += r.tokens;
            multi += r.multi_token_events;
            ttft.push_back(r.ttft);
            e2e.push_back(r.e2e);
            itl.insert(itl.end(), r.itl.begin(), r.itl.end());
        }
    }
    const double steps = delta(before, after, "deepshard_steps_total");
    auto per_step = [&](const std::string& hist) {
        const double n = delta(before, after, hist + "_count");
        return n > 0 ? delta(before, after, hist + "_sum") / n : 0.0;
    };
    const double step_s = per_step("deepshard_step_seconds");
    const double shard_s = per_step("deepshard_shard_step_seconds");
    const double overhead_s = per_step("deepshard_coordinator_overhead_seconds");
    const double cpu = after.cpu_seconds >= 0 && before.cpu_seconds >= 0 ? after.cpu_seconds - before.cpu_seconds : -1;
    const double gen = delta(before, after, "deepshard_generation_tokens_total");
    json j = {{"bench", "serve"},
              {"concurrency", conc},
              {"requests", ok},
              {"failed", static_cast<int>(per_client.size()) * a.rounds - ok},
              {"prompt_len", a.prompt_len},
              {"output_len", a.output_len},
              {"wall_s", wall},
              {"requests_per_s", ok / wall},
              {"output_tokens_per_s", tokens / wall},
              {"ttft_ms", {{"p50", quantile(ttft, .5) * 1e3}, {"p90", quantile(ttft, .9) * 1e3},
                           {"p99", quantile(ttft, .99) * 1e3}}},
              {"itl_ms", {{"p50", quantile(itl, .5) * 1e3}, {"p90", quantile(itl, .9) * 1e3},
                          {"p99", quantile(itl, .99) * 1e3}}},
              {"e2e_ms", {{"p50", quantile(e2e, .5) * 1e3}, {"p99", quantile(e2e, .99) * 1e3}}},
              {"multi_token_events", multi},
              {"coordinator",
               {{"steps", steps},
                {"tokens_per_step", steps > 0 ? gen / steps : 0},
                {"step_round_trip_ms", step_s * 1e3},
                {"shard_step_ms", shard_s * 1e3},
                {"transport_and_wait_ms", (step_s - shard_s) * 1e3},
                {"engine_loop_us_per_step", overhead_s * 1e6},
                {"process_cpu_ms_per_step", cpu >= 0 && steps > 0 ? cpu / steps * 1e3 : -1},
                {"process_cpu_us_per_token", cpu >= 0 && gen > 0 ? cpu / gen * 1e6 : -1},
                {"process_cpu_share", cpu >= 0 ? cpu / wall : -1}}}};
    if (!errors.empty()) j["errors"] = errors;
    return j;
}

void write_plot(const std::string& prefix, const json& levels) {
    {
        std::ofstream dat(prefix + ".dat");
        dat << "# concurrency req/s tok/s ttft_p50 ttft_p90 ttft_p99 itl_p50 itl_p90 itl_p99 (ms)\n";
        for (const auto& l : levels) {
            dat << l["concurrency"] << ' ' << l["requests_per_s"] << ' ' << l["output_tokens_per_s"] << ' '
                << l["ttft_ms"]["p50"] << ' ' << l["ttft_ms"]["p90"] << ' ' << l["ttft_ms"]["p99"] << ' '
                << l["itl_ms"]["p50"] << ' ' << l["itl_ms"]["p90"] << ' ' << l["itl_ms"]["p99"] << '\n';
        }
    }
    const std::string base = prefix.substr(prefix.rfind('/') + 1);
    {
        std::ofstream gp(prefix + ".gp");
        gp << "# gnuplot " << base << ".gp (run from its directory) -> " << base << ".png\n"
           << "set terminal png size 900,900\n"
           << "set output '" << base << ".png'\n"
           << "set multiplot layout 2,1 title 'deepshard serving sweep (streaming /v1/completions)'\n"
           << "set logscale x 2\nset grid\nset key top left\nset xlabel 'concurrent clients'\n"
           << "set ylabel 'output tokens/s'\nset y2label 'requests/s'\nset ytics nomirror\nset y2tics\n"
           << "plot '" << base << ".dat' using 1:3 with linespoints lw 2 title 'output tokens/s', \\\n"
           << "     '' using 1:2 axes x1y2 with linespoints lw 2 title 'requests/s (right)'\n"
           << "unset y2label\nunset y2tics\nset ytics mirror\nset logscale y\nset ylabel 'ms'\n"
           << "plot '" << base << ".dat' using 1:4 with linespoints lw 2 title 'TTFT p50', \\\n"
           << "     '' using 1:6 with linespoints lw 2 dt 2 title 'TTFT p99', \\\n"
           << "     '' using 1:7 with linespoints lw 2 title 'ITL p50', \\\n"
           << "     '' using 1:9 with linespoints lw 2 dt 2 title 'ITL p99'\n"
           << "unset multiplot\n";
    }
    const std::string dir = prefix.find('/') == std::string::npos ? "." : prefix.substr(0, prefix.rfind('/'));
    const std::string cmd = "cd '" + dir + "' && gnuplot '" + base + ".gp'";
    if (std::system("command -v gnuplot > /dev/null 2>&1") != 0) {
        std::fprintf(stderr, "serve_bench: gnuplot not found; wrote %s.gp and %s.dat only\n", prefix.c_str(),
                     prefix.c_str());
    } else if (std::system(cmd.c_str()) != 0) {
        std::fprintf(stderr, "serve_bench: '%s' failed\n", cmd.c_str());
    } else {
        std::printf("plot: %s.png\n", prefix.c_str());
    }
}

}  // namespace

int main(int argc, char** argv) {
    const Args a = parse(argc, argv);
    std::string body, err;
    if (simple_get(a, "/health", &body, &err) != 200) die("the coordinator is not healthy: " + err + body);
    std::string model = a.model;
    if (model.empty()) {
        if (simple_get(a, "/v1/models", &body, &err) != 200) die("GET /v1/models failed: " + err + body);
        const json m = json::parse(body, nullptr, false);
        if (m.is_discarded() || m["data"].empty()) die("GET /v1/models: unexpected body " + body);
        model = m["data"][0]["id"].get<std::string>();
    }
    std::printf("serve_bench: %s:%d model '%s', prompt %d, output %d tokens, %d round(s) per client\n",
                a.host.c_str(), a.port, model.c_str(), a.prompt_len, a.output_len, a.rounds);
    uint64_t index = 1u << 20;
    {
        // Warm-up (not recorded): first-touch costs on every rank.
        RequestResult w = run_request(a, model, 0);
        if (!w.ok) die("warm-up request failed: " + w.error);
    }
    std::printf("%5s %8s %9s %9s %9s %9s %8s %8s %8s %9s %9s %9s %9s\n", "conc", "req/s", "tok/s", "ttft50", "ttft90",
                "ttft99", "itl50", "itl90", "itl99", "step_ms", "shard_ms", "loop_us", "cpu_ms/st");
    json levels = json::array();
    int failures = 0;
    for (int c : a.concurrency) {
        json l = run_level(a, model, c, &index, &failures);
        const auto& co = l["coordinator"];
        std::printf("%5d %8.2f %9.1f %9.1f %9.1f %9.1f %8.1f %8.1f %8.1f %9.2f %9.2f %9.1f %9.3f\n", c,
                    l["requests_per_s"].get<double>(), l["output_tokens_per_s"].get<double>(),
                    l["ttft_ms"]["p50"].get<double>(), l["ttft_ms"]["p90"].get<double>(),
                    l["ttft_ms"]["p99"].get<double>(), l["itl_ms"]["p50"].get<double>(),
                    l["itl_ms"]["p90"].get<double>(), l["itl_ms"]["p99"].get<double>(),
                    co["step_round_trip_ms"].get<double>(), co["shard_step_ms"].get<double>(),
                    co["engine_loop_us_per_step"].get<double>(), co["process_cpu_ms_per_step"].get<double>());
        std::printf("JSON %s\n", l.dump().c_str());
        std::fflush(stdout);
        levels.push_back(l);
    }
    if (!a.out_json.empty()) {
        std::ofstream out(a.out_json);
        out << levels.dump(2) << "\n";
        if (!out) die("cannot write " + a.out_json);
        std::printf("results: %s\n", a.out_json.c_str());
    }
    if (!a.plot.empty()) write_plot(a.plot, levels);
    if (failures > 0) {
        for (const auto& l : levels) {
            if (l.contains("errors")) std::fprintf(stderr, "concurrency %d: %s\n", l["concurrency"].get<int>(),
                                                   l["errors"].dump().c_str());
        }
        die(std::to_string(failures) + " request(s) failed");
    }
    return 0;
}
