// main() for the multi-rank comm tests (run by ctest under mpirun, see tests/comm/CMakeLists.txt).
#include "tests/comm/mpi_test_main.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <optional>

#include "comm/mpi/mpi_runtime.h"
#include "common/logging.h"

namespace deepshard::comm::testing {

namespace {
std::optional<MpiComm> g_world;

// Ranks other than 0 print failed assertions only.
class FailurePrinter : public ::testing::EmptyTestEventListener {
public:
    explicit FailurePrinter(int rank) : rank_(rank) {}
    void OnTestPartResult(const ::testing::TestPartResult& r) override {
        if (r.failed()) {
            std::fprintf(stderr, "[rank %d] %s:%d: failure\n%s\n", rank_, r.file_name() ? r.file_name() : "?",
                         r.line_number(), r.summary());
        }
    }

private:
    int rank_;
};
}  // namespace

MpiComm& world() {
    return *g_world;
}

}  // namespace deepshard::comm::testing

int main(int argc, char** argv) {
    using namespace deepshard;
    init_logging();
    ::testing::InitGoogleTest(&argc, argv);
    auto runtime = comm::MpiRuntime::create(&argc, &argv);
    if (!runtime.ok()) {
        std::fprintf(stderr, "MPI init failed: %s\n", runtime.status().to_string().c_str());
        return 2;
    }
    auto w = comm::MpiComm::world();
    if (!w.ok()) {
        std::fprintf(stderr, "MpiComm::world failed: %s\n", w.status().to_string().c_str());
        return 2;
    }
    comm::testing::g_world.emplace(std::move(w).value());
    int rank = comm::testing::g_world->rank();
    if (rank != 0) {
        auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
        delete listeners.Release(listeners.default_result_printer());
        listeners.Append(new comm::testing::FailurePrinter(rank));
    }
    int rc = RUN_ALL_TESTS();
    comm::testing::g_world.reset();
    return rc;
}
