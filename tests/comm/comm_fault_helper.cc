// Child program of comm_fault_test (run under mpirun): rank 1 misbehaves inside a collective and
// the survivors must report a clear error within their deadline, then abort the job.
//   comm_fault_helper MODE TIMEOUT_MS      MODE: ok | hang | kill | exit
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "comm/mpi/mpi_comm.h"
#include "comm/mpi/mpi_runtime.h"
#include "common/logging.h"

using namespace deepshard;

int main(int argc, char** argv) {
    init_logging();
    if (argc < 3) {
        std::fprintf(stderr, "usage: %s ok|hang|kill|exit TIMEOUT_MS\n", argv[0]);
        return 2;
    }
    const std::string mode = argv[1];
    const int timeout_ms = std::atoi(argv[2]);
    auto rt = comm::MpiRuntime::create(&argc, &argv);
    if (!rt.ok()) {
        std::fprintf(stderr, "init: %s\n", rt.status().to_string().c_str());
        return 2;
    }
    auto w = comm::MpiComm::world();
    if (!w.ok()) {
        std::fprintf(stderr, "world: %s\n", w.status().to_string().c_str());
        return 2;
    }
    w->set_timeout(comm::Millis(timeout_ms));
    const int rank = w->rank();

    // Prove the job works before the fault.
    std::vector<float> buf(1 << 18, 1.0f);
    Status s = w->allreduce_sum(buf.data(), buf.data(), buf.size());
    if (!s.ok()) {
        std::fprintf(stderr, "deepshard comm fault: rank %d: warm-up failed: %s\n", rank, s.to_string().c_str());
        comm::MpiComm::abort_job(3);
    }

    if (rank == 1 && mode == "hang") {
        // Never joins the collective (a hung peer); outlives the others' deadline.
        std::this_thread::sleep_for(std::chrono::milliseconds(timeout_ms * 20));
        return 0;
    }
    auto req = w->iallreduce_sum(buf.data(), buf.data(), buf.size());
    if (rank == 1 && mode == "kill") {
        std::raise(SIGKILL);  // dies mid-collective
    }
    if (rank == 1 && mode == "exit") {
        std::_Exit(7);  // exits mid-collective without MPI_Finalize
    }
    s = req.ok() ? req->wait() : req.status();
    if (!s.ok()) {
        std::fprintf(stderr, "deepshard comm fault: rank %d: %s\n", rank, s.to_string().c_str());
        std::fflush(stderr);
        comm::MpiComm::abort_job(3);
    }
    std::printf("rank %d ok %g\n", rank, static_cast<double>(buf[0]));
    return 0;
}
