// KvTransfer over real UCX on loopback: in-process exporter/importer pairs, and an exporter in a
// child process (this binary re-executed with a disabled test as its entry point) so that the
// transfer really crosses processes and the exporter can be killed or stopped.
// UCX_TLS defaults to tcp here (set before any UCX call); ctest runs the binary again with
// UCX_TLS=all (UCX's own default).
#include "comm/ucx/kv_transfer.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>

namespace deepshard::comm {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using SteadyClock = std::chrono::steady_clock;

const bool kTlsDefault = [] {
    setenv("UCX_TLS", "tcp", 0);
    return true;
}();

constexpr int64_t kRowBytes = 576 * 4;  // DeepSeek-V3 MLA latent (512 + 64 rope) in fp32

KvKey make_key(uint8_t seed) {
    KvKey k;
    for (size_t i = 0; i < k.size(); ++i) {
        k[i] = static_cast<uint8_t>(seed * 31 + i * 7 + 1);
    }
    return k;
}

std::vector<uint8_t> random_bytes(uint64_t seed, size_t n) {
    std::mt19937_64 rng(seed);
    std::vector<uint8_t> v(n);
    for (size_t i = 0; i < n; i += 8) {
        uint64_t x = rng();
        std::memcpy(v.data() + i, &x, std::min<size_t>(8, n - i));
    }
    return v;
}

// Rows [lb, le) x [pb, pe) of a [layer_begin..][positions][kRowBytes] buffer.
std::vector<uint8_t> slice(const std::vector<uint8_t>& all,
                           int32_t layer_begin,
                           int64_t positions,
                           int32_t lb,
                           int32_t le,
                           int64_t pb,
                           int64_t pe) {
    std::vector<uint8_t> out;
    for (int32_t l = lb; l < le; ++l) {
        const size_t off = static_cast<size_t>(((l - layer_begin) * positions + pb) * kRowBytes);
        out.insert(out.end(), all.begin() + static_cast<ptrdiff_t>(off),
                   all.begin() + static_cast<ptrdiff_t>(off + static_cast<size_t>((pe - pb) * kRowBytes)));
    }
    return out;
}

std::unique_ptr<KvTransfer> start_or_die(KvTransferOptions o) {
    auto t = KvTransfer::start(o);
    EXPECT_TRUE(t.ok()) << t.status().to_string();
    return t.ok() ? std::move(t).value() : nullptr;
}

std::unique_ptr<KvTransfer> exporter(size_t max_bytes = 1ull << 30, milliseconds ttl = milliseconds(60000)) {
    KvTransferOptions o;
    o.listen_host = "127.0.0.1";
    o.max_staged_bytes = max_bytes;
    o.ttl = ttl;
    return start_or_die(o);
}

std::unique_ptr<KvTransfer> importer() { return start_or_die(KvTransferOptions{}); }

SteadyClock::time_point in(milliseconds d) { return SteadyClock::now() + d; }

// The shape every test stages: 8 layers [3, 11) x 300 positions x 2304 B = 5.5 MB.
constexpr int32_t kLb = 3;
constexpr int32_t kLe = 11;
constexpr int64_t kPositions = 300;
constexpr size_t kBytes = static_cast<size_t>((kLe - kLb) * kPositions * kRowBytes);

TEST(KvTransfer, FetchReturnsExactlyTheStagedSubRange) {
    auto exp = exporter();
    auto imp = importer();
    ASSERT_TRUE(exp && imp);
    ASSERT_FALSE(exp->endpoint().empty());
    EXPECT_EQ(imp->endpoint(), "");
    const auto data = random_bytes(1, kBytes);
    ASSERT_TRUE(exp->stage(7, make_key(1), kLb, kLe, kPositions, kRowBytes, data).ok());

    auto sub = imp->fetch(exp->endpoint(), 7, make_key(1), 5, 9, 17, 250, kRowBytes, in(seconds(20)));
    ASSERT_TRUE(sub.ok()) << sub.status().to_string();
    EXPECT_TRUE(*sub == slice(data, kLb, kPositions, 5, 9, 17, 250));
    // Everything, and a single row at the far corner (off-by-one in either bound would show).
    auto all = imp->fetch(exp->endpoint(), 7, make_key(1), kLb, kLe, 0, kPositions, kRowBytes, in(seconds(20)));
    ASSERT_TRUE(all.ok()) << all.status().to_string();
    EXPECT_TRUE(*all == data);
    auto last = imp->fetch(exp->endpoint(), 7, make_key(1), kLe - 1, kLe, kPositions - 1, kPositions, kRowBytes,
                           in(seconds(20)));
    ASSERT_TRUE(last.ok()) << last.status().to_string();
    EXPECT_TRUE(*last == slice(data, kLb, kPositions, kLe - 1, kLe, kPositions - 1, kPositions));

    const size_t want = sub->size() + all->size() + last->size();
    EXPECT_EQ(exp->stats().fetches_served, 3u);
    EXPECT_EQ(exp->stats().bytes_served, want);
    EXPECT_EQ(imp->stats().bytes_fetched, want);
    EXPECT_EQ(exp->stats().staged_bytes, kBytes);
}

TEST(KvTransfer, ErrorsNameTheProblemAndArrivePromptly) {
    auto exp = exporter();
    auto imp = importer();
    ASSERT_TRUE(exp && imp);
    ASSERT_TRUE(exp->stage(7, make_key(1), kLb, kLe, kPositions, kRowBytes, random_bytes(2, kBytes)).ok());
    const std::string ep = exp->endpoint();
    struct Case {
        const char* name;
        uint64_t id;
        uint8_t key;
        int32_t lb, le;
        int64_t pb, pe, row_bytes;
        StatusCode code;
        const char* needle;
    };
    const Case cases[] = {
        {"wrong key", 7, 2, kLb, kLe, 0, 10, kRowBytes, StatusCode::kInvalidArgument, "wrong key"},
        {"unknown id", 8, 1, kLb, kLe, 0, 10, kRowBytes, StatusCode::kNotFound, "unknown transfer 8"},
        {"layers below", 7, 1, kLb - 1, kLe, 0, 10, kRowBytes, StatusCode::kInvalidArgument, "layers [2, 11)"},
        {"layers above", 7, 1, kLb, kLe + 1, 0, 10, kRowBytes, StatusCode::kInvalidArgument, "outside the staged"},
        {"positions", 7, 1, kLb, kLe, 290, 301, kRowBytes, StatusCode::kInvalidArgument, "positions [290, 301)"},
        {"row_bytes", 7, 1, kLb, kLe, 0, 10, kRowBytes / 2, StatusCode::kInvalidArgument, "row_bytes 1152"},
    };
    for (const Case& c : cases) {
        const auto t0 = SteadyClock::now();
        auto r = imp->fetch(ep, c.id, make_key(c.key), c.lb, c.le, c.pb, c.pe, c.row_bytes, in(seconds(30)));
        const auto took = SteadyClock::now() - t0;
        ASSERT_FALSE(r.ok()) << c.name;
        EXPECT_EQ(r.status().code(), c.code) << c.name << ": " << r.status().to_string();
        EXPECT_NE(r.status().message().find(c.needle), std::string::npos) << c.name << ": " << r.status().to_string();
        EXPECT_LT(took, seconds(5)) << c.name << " took until near the deadline";
    }
    EXPECT_EQ(exp->stats().fetches_refused, std::size(cases));
    EXPECT_EQ(exp->stats().fetches_served, 0u);
    // Refused locally, without a round trip.
    EXPECT_EQ(imp->fetch(ep, 7, make_key(1), 5, 5, 0, 1, kRowBytes, in(seconds(5))).status().code(),
              StatusCode::kInvalidArgument);
    EXPECT_EQ(imp->fetch("nohost", 7, make_key(1), 5, 6, 0, 1, kRowBytes, in(seconds(5))).status().code(),
              StatusCode::kInvalidArgument);
    EXPECT_EQ(exp->stats().fetches_refused, std::size(cases));
    // Still served after all that.
    EXPECT_TRUE(imp->fetch(ep, 7, make_key(1), kLb, kLe, 0, 10, kRowBytes, in(seconds(20))).ok());
    // A bad shape or an oversize transfer is refused at staging.
    EXPECT_EQ(exp->stage(9, make_key(1), 0, 1, 2, kRowBytes, std::vector<uint8_t>(10)).code(),
              StatusCode::kInvalidArgument);
}

TEST(KvTransfer, RestageReplacesAndDropForgets) {
    auto exp = exporter();
    auto imp = importer();
    ASSERT_TRUE(exp && imp);
    ASSERT_TRUE(exp->stage(7, make_key(1), 0, 2, 10, kRowBytes, random_bytes(3, 2 * 10 * kRowBytes)).ok());
    const auto second = random_bytes(4, 1 * 20 * kRowBytes);
    ASSERT_TRUE(exp->stage(7, make_key(5), 4, 5, 20, kRowBytes, second).ok());
    EXPECT_EQ(exp->stats().staged_bytes, second.size());
    auto r = imp->fetch(exp->endpoint(), 7, make_key(5), 4, 5, 0, 20, kRowBytes, in(seconds(20)));
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    EXPECT_TRUE(*r == second);
    EXPECT_FALSE(imp->fetch(exp->endpoint(), 7, make_key(1), 0, 1, 0, 10, kRowBytes, in(seconds(20))).ok());
    exp->drop(7);
    EXPECT_EQ(exp->stats().staged_bytes, 0u);
    auto gone = imp->fetch(exp->endpoint(), 7, make_key(5), 4, 5, 0, 20, kRowBytes, in(seconds(20)));
    EXPECT_EQ(gone.status().code(), StatusCode::kNotFound);
    EXPECT_NE(gone.status().message().find("dropped"), std::string::npos) << gone.status().to_string();
}

TEST(KvTransfer, TtlExpiryDropsTheTransfer) {
    auto exp = exporter(1ull << 30, milliseconds(300));
    auto imp = importer();
    ASSERT_TRUE(exp && imp);
    ASSERT_TRUE(exp->stage(7, make_key(1), kLb, kLe, kPositions, kRowBytes, random_bytes(5, kBytes)).ok());
    EXPECT_TRUE(imp->fetch(exp->endpoint(), 7, make_key(1), kLb, kLe, 0, 4, kRowBytes, in(seconds(20))).ok());
    std::this_thread::sleep_for(milliseconds(600));
    const KvTransferStats s = exp->stats();
    EXPECT_EQ(s.expired, 1u);
    EXPECT_EQ(s.staged_bytes, 0u);
    auto r = imp->fetch(exp->endpoint(), 7, make_key(1), kLb, kLe, 0, 4, kRowBytes, in(seconds(20)));
    EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
    EXPECT_NE(r.status().message().find("expired"), std::string::npos) << r.status().to_string();
}

TEST(KvTransfer, StagingBoundEvictsTheOldest) {
    const size_t one = 1 * 100 * kRowBytes;  // 230 KB per transfer, bound = 3 of them
    auto exp = exporter(3 * one);
    auto imp = importer();
    ASSERT_TRUE(exp && imp);
    std::vector<std::vector<uint8_t>> data;
    for (uint64_t id = 0; id < 4; ++id) {
        data.push_back(random_bytes(10 + id, one));
        ASSERT_TRUE(exp->stage(id, make_key(1), 0, 1, 100, kRowBytes, data.back()).ok());
    }
    KvTransferStats s = exp->stats();
    EXPECT_EQ(s.evicted, 1u);
    EXPECT_EQ(s.staged, 4u);
    EXPECT_EQ(s.staged_bytes, 3 * one);
    auto old = imp->fetch(exp->endpoint(), 0, make_key(1), 0, 1, 0, 100, kRowBytes, in(seconds(20)));
    EXPECT_EQ(old.status().code(), StatusCode::kNotFound);
    EXPECT_NE(old.status().message().find("evicted"), std::string::npos) << old.status().to_string();
    for (uint64_t id = 1; id < 4; ++id) {
        auto r = imp->fetch(exp->endpoint(), id, make_key(1), 0, 1, 0, 100, kRowBytes, in(seconds(20)));
        ASSERT_TRUE(r.ok()) << r.status().to_string();
        EXPECT_TRUE(*r == data[id]);
    }
    // One transfer larger than the whole bound is refused and evicts nothing.
    EXPECT_EQ(exp->stage(9, make_key(1), 0, 4, 100, kRowBytes, random_bytes(9, 4 * one)).code(),
              StatusCode::kResourceExhausted);
    EXPECT_EQ(exp->stats().evicted, 1u);
    EXPECT_EQ(exp->stats().staged_bytes, 3 * one);
}

TEST(KvTransfer, ExporterGoneFailsByTheDeadlineAndTheImporterRecovers) {
    auto imp = importer();
    ASSERT_TRUE(imp);
    std::string dead_ep;
    {
        auto exp = exporter();
        ASSERT_TRUE(exp);
        ASSERT_TRUE(exp->stage(7, make_key(1), kLb, kLe, kPositions, kRowBytes, random_bytes(6, kBytes)).ok());
        dead_ep = exp->endpoint();
        ASSERT_TRUE(imp->fetch(dead_ep, 7, make_key(1), kLb, kLe, 0, 8, kRowBytes, in(seconds(20))).ok());
    }  // destroyed: its listener and the cached connection to it are gone
    for (int i = 0; i < 2; ++i) {
        const auto t0 = SteadyClock::now();
        auto r = imp->fetch(dead_ep, 7, make_key(1), kLb, kLe, 0, 8, kRowBytes, in(seconds(3)));
        EXPECT_FALSE(r.ok());
        EXPECT_LT(SteadyClock::now() - t0, milliseconds(3500)) << r.status().to_string();
    }
    auto live = exporter();
    ASSERT_TRUE(live);
    const auto data = random_bytes(7, kBytes);
    ASSERT_TRUE(live->stage(8, make_key(2), kLb, kLe, kPositions, kRowBytes, data).ok());
    auto r = imp->fetch(live->endpoint(), 8, make_key(2), kLb, kLe, 0, kPositions, kRowBytes, in(seconds(20)));
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    EXPECT_TRUE(*r == data);
}

// The first non-loopback IPv4 address of an interface that is up ("" if none).
std::string non_loopback_ipv4() {
    ifaddrs* list = nullptr;
    if (getifaddrs(&list) != 0) {
        return "";
    }
    std::string found;
    for (ifaddrs* a = list; a && found.empty(); a = a->ifa_next) {
        if (a->ifa_addr && a->ifa_addr->sa_family == AF_INET && (a->ifa_flags & IFF_UP) &&
            !(a->ifa_flags & IFF_LOOPBACK)) {
            char buf[INET_ADDRSTRLEN];
            inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(a->ifa_addr)->sin_addr, buf, sizeof(buf));
            found = buf;
        }
    }
    freeifaddrs(list);
    return found;
}

// Binding a specific interface address (as a decode host in a network namespace would bind its
// veth IP): endpoint() names it and nothing answers on another address at that port.
TEST(KvTransfer, ListensOnTheRequestedAddress) {
    const std::string ip = non_loopback_ipv4();
    if (ip.empty()) {
        GTEST_SKIP() << "no non-loopback IPv4 interface";
    }
    KvTransferOptions o;
    o.listen_host = ip;
    auto exp = start_or_die(o);
    auto imp = importer();
    ASSERT_TRUE(exp && imp);
    EXPECT_EQ(exp->endpoint().rfind(ip + ":", 0), 0u) << exp->endpoint();
    const auto data = random_bytes(8, 2 * 10 * kRowBytes);
    ASSERT_TRUE(exp->stage(1, make_key(1), 0, 2, 10, kRowBytes, data).ok());
    auto r = imp->fetch(exp->endpoint(), 1, make_key(1), 0, 2, 0, 10, kRowBytes, in(seconds(20)));
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    EXPECT_TRUE(*r == data);
    const std::string other = "127.0.0.1" + exp->endpoint().substr(exp->endpoint().find(':'));
    EXPECT_FALSE(imp->fetch(other, 1, make_key(1), 0, 2, 0, 10, kRowBytes, in(seconds(3))).ok());
    o.listen_host = "not-an-ip";
    EXPECT_EQ(KvTransfer::start(o).status().code(), StatusCode::kInvalidArgument);
}

TEST(KvTransfer, ManyConcurrentFetchesAreAllCorrect) {
    auto exp = exporter();
    auto imp = importer();
    ASSERT_TRUE(exp && imp);
    const auto a = random_bytes(20, kBytes);
    const auto b = random_bytes(21, kBytes);
    ASSERT_TRUE(exp->stage(1, make_key(1), kLb, kLe, kPositions, kRowBytes, a).ok());
    ASSERT_TRUE(exp->stage(2, make_key(2), kLb, kLe, kPositions, kRowBytes, b).ok());
    auto imp2 = importer();  // a second importer shares the exporter with the first
    ASSERT_TRUE(imp2);
    constexpr int kThreads = 8;
    constexpr int kPerThread = 12;
    std::atomic<int> good{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            std::mt19937 rng(static_cast<unsigned>(100 + t));
            for (int i = 0; i < kPerThread; ++i) {
                const bool first = rng() % 2 == 0;
                const int32_t lb = kLb + static_cast<int32_t>(rng() % (kLe - kLb));
                const int32_t le = lb + 1 + static_cast<int32_t>(rng() % static_cast<unsigned>(kLe - lb));
                const int64_t pb = rng() % kPositions;
                const int64_t pe = pb + 1 + rng() % static_cast<unsigned>(kPositions - pb);
                KvTransfer& who = (t % 2 == 0) ? *imp : *imp2;
                auto r = who.fetch(exp->endpoint(), first ? 1 : 2, make_key(first ? 1 : 2), lb, le, pb, pe, kRowBytes,
                                   in(seconds(60)));
                if (r.ok() && *r == slice(first ? a : b, kLb, kPositions, lb, le, pb, pe)) {
                    ++good;
                } else {
                    ADD_FAILURE() << (r.ok() ? std::string("wrong bytes") : r.status().to_string());
                }
            }
        });
    }
    for (auto& th : threads) {
        th.join();
    }
    EXPECT_EQ(good.load(), kThreads * kPerThread);
    EXPECT_EQ(exp->stats().fetches_served, static_cast<uint64_t>(kThreads * kPerThread));
}

// ---- exporter in a child process ---------------------------------------------------------------

constexpr uint64_t kChildSeed = 77;

// Entry point of the child: runs only when re-executed with DS_KV_CHILD_FD (a pipe to the parent).
TEST(KvTransferChild, DISABLED_Exporter) {
    const char* fd_env = std::getenv("DS_KV_CHILD_FD");
    if (!fd_env) {
        GTEST_SKIP() << "only run as the child of the cross-process tests";
    }
    auto exp = exporter();
    ASSERT_TRUE(exp);
    ASSERT_TRUE(exp->stage(42, make_key(9), kLb, kLe, kPositions, kRowBytes, random_bytes(kChildSeed, kBytes)).ok());
    const std::string line = exp->endpoint() + "\n";
    ASSERT_EQ(write(std::atoi(fd_env), line.data(), line.size()), static_cast<ssize_t>(line.size()));
    std::this_thread::sleep_for(seconds(120));  // until killed (PDEATHSIG covers a dead parent)
}

struct Child {
    pid_t pid = -1;
    std::string endpoint;
};

Child spawn_exporter() {
    int fds[2];
    if (pipe(fds) != 0) {
        return {};
    }
    // Everything the child needs is prepared before fork: only async-signal-safe calls after it.
    std::vector<std::string> env_store;
    for (char** e = environ; *e; ++e) {
        env_store.emplace_back(*e);
    }
    env_store.push_back("DS_KV_CHILD_FD=" + std::to_string(fds[1]));
    std::vector<char*> envp;
    for (auto& s : env_store) {
        envp.push_back(s.data());
    }
    envp.push_back(nullptr);
    std::string self = "/proc/self/exe";
    std::string filter = "--gtest_filter=KvTransferChild.DISABLED_Exporter";
    std::string also = "--gtest_also_run_disabled_tests";
    char* argv[] = {self.data(), filter.data(), also.data(), nullptr};
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(fds[0]);
        execve(argv[0], argv, envp.data());
        _exit(127);
    }
    close(fds[1]);
    Child c;
    c.pid = pid;
    std::string got;
    const auto until = SteadyClock::now() + seconds(30);
    while (got.find('\n') == std::string::npos && SteadyClock::now() < until) {
        pollfd p{fds[0], POLLIN, 0};
        if (poll(&p, 1, 200) > 0) {
            char buf[128];
            ssize_t n = read(fds[0], buf, sizeof(buf));
            if (n <= 0) {
                break;
            }
            got.append(buf, static_cast<size_t>(n));
        }
    }
    close(fds[0]);
    if (got.find('\n') != std::string::npos) {
        c.endpoint = got.substr(0, got.find('\n'));
    }
    return c;
}

void reap(pid_t pid) {
    kill(pid, SIGKILL);
    int st = 0;
    waitpid(pid, &st, 0);
}

TEST(KvTransferCrossProcess, FetchFromAChildThenKillIt) {
    Child c = spawn_exporter();
    ASSERT_GT(c.pid, 0);
    ASSERT_FALSE(c.endpoint.empty()) << "child exporter did not report its endpoint";
    auto imp = importer();
    ASSERT_TRUE(imp);
    const auto data = random_bytes(kChildSeed, kBytes);
    auto r = imp->fetch(c.endpoint, 42, make_key(9), 4, 10, 33, 299, kRowBytes, in(seconds(20)));
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    EXPECT_TRUE(*r == slice(data, kLb, kPositions, 4, 10, 33, 299));
    EXPECT_EQ(imp->fetch(c.endpoint, 42, make_key(8), 4, 10, 0, 1, kRowBytes, in(seconds(20))).status().code(),
              StatusCode::kInvalidArgument);

    reap(c.pid);
    const auto t0 = SteadyClock::now();
    auto dead = imp->fetch(c.endpoint, 42, make_key(9), 4, 10, 0, 1, kRowBytes, in(seconds(3)));
    EXPECT_FALSE(dead.ok());
    EXPECT_LT(SteadyClock::now() - t0, milliseconds(3500)) << dead.status().to_string();

    // The same importer still works against a live exporter.
    auto live = exporter();
    ASSERT_TRUE(live);
    ASSERT_TRUE(live->stage(1, make_key(1), kLb, kLe, kPositions, kRowBytes, data).ok());
    auto ok = imp->fetch(live->endpoint(), 1, make_key(1), kLb, kLe, 0, kPositions, kRowBytes, in(seconds(20)));
    ASSERT_TRUE(ok.ok()) << ok.status().to_string();
    EXPECT_TRUE(*ok == data);
}

// A stopped exporter keeps its sockets open: only the deadline can end the fetch. Its reply, sent
// after SIGCONT, arrives after the caller has gone and must not disturb later fetches.
TEST(KvTransferCrossProcess, StalledExporterHitsTheDeadline) {
    Child c = spawn_exporter();
    ASSERT_GT(c.pid, 0);
    ASSERT_FALSE(c.endpoint.empty());
    auto imp = importer();
    ASSERT_TRUE(imp);
    const auto data = random_bytes(kChildSeed, kBytes);
    ASSERT_TRUE(imp->fetch(c.endpoint, 42, make_key(9), kLb, kLe, 0, 1, kRowBytes, in(seconds(20))).ok());

    kill(c.pid, SIGSTOP);
    const auto t0 = SteadyClock::now();
    auto r = imp->fetch(c.endpoint, 42, make_key(9), kLb, kLe, 0, kPositions, kRowBytes, in(milliseconds(700)));
    const auto took = SteadyClock::now() - t0;
    EXPECT_EQ(r.status().code(), StatusCode::kDeadlineExceeded) << r.status().to_string();
    EXPECT_GE(took, milliseconds(650));
    EXPECT_LT(took, milliseconds(1500));
    kill(c.pid, SIGCONT);

    for (int i = 0; i < 3; ++i) {
        auto again = imp->fetch(c.endpoint, 42, make_key(9), kLb, kLe, 0, kPositions, kRowBytes, in(seconds(20)));
        ASSERT_TRUE(again.ok()) << again.status().to_string();
        EXPECT_TRUE(*again == data);
    }
    reap(c.pid);
}

}  // namespace
}  // namespace deepshard::comm
