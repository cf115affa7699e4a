// comm_bench: latency and bandwidth of the comm/ backends by message size (run under mpirun -np 2).
//   mpirun -np 2 comm_bench [--backend mpi|ucx|all] [--min 8] [--max 16777216] [--time-ms 200]
// MPI: p2p ping-pong latency, p2p windowed bandwidth, allreduce_sum, alltoallv (`size` bytes to
// every peer). UCX: p2p latency and bandwidth (transport from UCX_TLS). Each cell is the median of
// the timed iterations; every result buffer is checked. Prints a table and one JSON line per row.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "comm/mpi/mpi_comm.h"
#include "comm/mpi/mpi_runtime.h"
#include "common/logging.h"
#if DS_BENCH_WITH_UCX
#include "comm/ucx/ucx_p2p.h"
#endif

using namespace deepshard;
using namespace deepshard::comm;

namespace {

struct Options {
    std::string backend = "all";
    size_t min_bytes = 8;
    size_t max_bytes = size_t{16} << 20;
    int time_ms = 200;
};

[[noreturn]] void die(const Status& s, const char* what) {
    std::fprintf(stderr, "comm_bench: %s: %s\n", what, s.to_string().c_str());
    MpiComm::abort_job(1);
}

void check(const Status& s, const char* what) {
    if (!s.ok()) {
        die(s, what);
    }
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : v[v.size() / 2];
}

// Runs body() repeatedly (synchronized start) for about time_ms after warm-up, at least 5 and at
// most 2000 times; returns the median seconds per call. Rank 0 decides the count.
double time_it(Communicator& world, int time_ms, const std::function<void()>& body) {
    body();  // warm-up (connection setup, registration)
    auto t0 = std::chrono::steady_clock::now();
    body();
    double one = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    int64_t iters = std::clamp<int64_t>(static_cast<int64_t>(time_ms / 1000.0 / std::max(one, 1e-7)), 5, 2000);
    check(world.broadcast(&iters, 8, DataType::kByte, 0), "broadcast iters");
    std::vector<double> samples;
    samples.reserve(static_cast<size_t>(iters));
    check(world.barrier(), "barrier");
    for (int64_t i = 0; i < iters; ++i) {
        auto a = std::chrono::steady_clock::now();
        body();
        samples.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count());
    }
    return median(samples);
}

void print_row(int rank, const std::string& backend, const std::string& op, size_t bytes, double seconds,
               double bus_bytes) {
    if (rank != 0) {
        return;
    }
    const double us = seconds * 1e6;
    const double mbps = bus_bytes / seconds / 1e6;
    std::printf("%-10s %-10s %10zu %12.2f %12.1f\n", backend.c_str(), op.c_str(), bytes, us, mbps);
    std::fprintf(stderr, "{\"bench\":\"comm\",\"backend\":\"%s\",\"op\":\"%s\",\"bytes\":%zu,\"median_us\":%.3f,"
                 "\"MBps\":%.2f}\n", backend.c_str(), op.c_str(), bytes, us, mbps);
    std::fflush(stdout);
}

constexpr int kWindow = 16;

// Ping-pong half round trip, and a window of kWindow sends + 1-byte ack.
void bench_p2p(Communicator& world, PointToPoint& p, const std::string& name, const Options& o) {
    const int me = p.rank();
    const int peer = 1 - me;
    for (size_t bytes = o.min_bytes; bytes <= o.max_bytes; bytes = bytes * 4 > o.max_bytes && bytes < o.max_bytes ? o.max_bytes : bytes * 4) {
        std::vector<uint8_t> sbuf(bytes, static_cast<uint8_t>(me + 1)), rbuf(bytes, 0);
        auto pingpong = [&] {
            if (me == 0) {
                check(p.send(sbuf.data(), bytes, DataType::kByte, peer, Tag{1}), "send");
                check(p.recv(rbuf.data(), bytes, DataType::kByte, peer, Tag{2}), "recv");
            } else {
                check(p.recv(rbuf.data(), bytes, DataType::kByte, peer, Tag{1}), "recv");
                check(p.send(sbuf.data(), bytes, DataType::kByte, peer, Tag{2}), "send");
            }
        };
        double rt = time_it(world, o.time_ms, pingpong);
        if (rbuf[0] != static_cast<uint8_t>(peer + 1) || rbuf[bytes - 1] != static_cast<uint8_t>(peer + 1)) {
            die(internal_error("p2p payload mismatch"), name.c_str());
        }
        print_row(me, name, "p2p_lat", bytes, rt / 2, static_cast<double>(bytes));

        std::vector<std::vector<uint8_t>> win(kWindow, std::vector<uint8_t>(bytes));
        uint8_t ack = 0;
        auto window = [&] {
            std::vector<Request> reqs;
            for (int w = 0; w < kWindow; ++w) {
                auto r = me == 0 ? p.isend(sbuf.data(), bytes, DataType::kByte, peer, Tag{3})
                                 : p.irecv(win[static_cast<size_t>(w)].data(), bytes, DataType::kByte, peer, Tag{3});
                check(r.status(), "window post");
                reqs.push_back(std::move(r).value());
            }
            check(wait_all(reqs), "window wait");
            if (me == 0) {
                check(p.recv(&ack, 1, DataType::kByte, peer, Tag{4}), "ack");
            } else {
                check(p.send(&ack, 1, DataType::kByte, peer, Tag{4}), "ack");
            }
        };
        double wt = time_it(world, o.time_ms, window);
        print_row(me, name, "p2p_bw", bytes, wt / kWindow, static_cast<double>(bytes));
    }
}

void bench_collectives(Communicator& w, const Options& o) {
    const size_t n = static_cast<size_t>(w.size());
    for (size_t bytes = o.min_bytes; bytes <= o.max_bytes; bytes = bytes * 4 > o.max_bytes && bytes < o.max_bytes ? o.max_bytes : bytes * 4) {
        const size_t count = std::max<size_t>(1, bytes / 4);
        std::vector<float> a(count);
        auto allreduce = [&] {
            std::fill(a.begin(), a.end(), 1.0f);
            check(w.allreduce_sum(a.data(), a.data(), count), "allreduce");
        };
        double t = time_it(w, o.time_ms, allreduce);
        if (a[0] != static_cast<float>(n) || a[count - 1] != static_cast<float>(n)) {
            die(internal_error("allreduce result mismatch"), "allreduce");
        }
        // Bus bandwidth as nccl-tests: 2 (n-1)/n * bytes / time.
        print_row(w.rank(), "mpi", "allreduce", count * 4, t, 2.0 * static_cast<double>(n - 1) / n * count * 4);

        std::vector<uint8_t> s(bytes * n, static_cast<uint8_t>(w.rank() + 1)), r(bytes * n, 0);
        std::vector<size_t> counts(n, bytes), displs(n);
        for (size_t i = 0; i < n; ++i) {
            displs[i] = i * bytes;
        }
        auto a2a = [&] { check(w.alltoallv(s.data(), counts, displs, r.data(), counts, displs, DataType::kByte), "a2a"); };
        t = time_it(w, o.time_ms, a2a);
        for (size_t i = 0; i < n; ++i) {
            if (r[i * bytes] != static_cast<uint8_t>(i + 1)) {
                die(internal_error("alltoallv result mismatch"), "alltoallv");
            }
        }
        // Bytes that cross to other ranks per rank.
        print_row(w.rank(), "mpi", "alltoallv", bytes, t, static_cast<double>(bytes) * static_cast<double>(n - 1));
    }
}

}  // namespace

int main(int argc, char** argv) {
    init_logging();
    Options o;
    for (int i = 1; i + 1 < argc; i += 2) {
        std::string k = argv[i];
        if (k == "--backend") {
            o.backend = argv[i + 1];
        } else if (k == "--min") {
            o.min_bytes = std::strtoull(argv[i + 1], nullptr, 10);
        } else if (k == "--max") {
            o.max_bytes = std::strtoull(argv[i + 1], nullptr, 10);
        } else if (k == "--time-ms") {
            o.time_ms = std::atoi(argv[i + 1]);
        }
    }
    auto rt = MpiRuntime::create(&argc, &argv);
    check(rt.status(), "MPI init");
    auto world_or = MpiComm::world();
    check(world_or.status(), "world");
    MpiComm& world = *world_or;
    if (world.size() != 2) {
        std::fprintf(stderr, "comm_bench: run with exactly 2 ranks (mpirun -np 2)\n");
        MpiComm::abort_job(2);
    }
    if (world.rank() == 0) {
        const char* tls = std::getenv("UCX_TLS");
        std::printf("# comm_bench: 2 ranks, UCX_TLS=%s, median of timed iterations, window %d for bw\n",
                    tls ? tls : "(unset)", kWindow);
        std::printf("%-10s %-10s %10s %12s %12s\n", "backend", "op", "bytes", "median_us", "MB/s");
    }
    if (o.backend == "mpi" || o.backend == "all") {
        bench_p2p(world, world, "mpi", o);
        bench_collectives(world, o);
    }
#if DS_BENCH_WITH_UCX
    if (o.backend == "ucx" || o.backend == "all") {
        auto ucx = UcxP2p::create(world);
        check(ucx.status(), "UcxP2p::create");
        bench_p2p(world, **ucx, "ucx", o);
        check(world.barrier(), "barrier");
    }
#endif
    return 0;
}
