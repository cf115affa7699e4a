// MPI init/finalize guard. Finalize is skipped when an abandoned collective is still inside MPI,
// because MPI_Finalize would block on it and turn a clear deadline error into a hang.
#include "comm/mpi/mpi_runtime.h"

#include <mpi.h>

#include <atomic>

#include "comm/mpi/mpi_error.h"
#include "common/logging.h"

namespace deepshard::comm {

namespace {
std::atomic<bool> g_abandoned{false};
}

void MpiRuntime::note_abandoned_operation() {
    g_abandoned.store(true);
}

bool MpiRuntime::has_abandoned_operation() {
    return g_abandoned.load();
}

StatusOr<MpiRuntime> MpiRuntime::create(int* argc, char*** argv) {
    int initialized = 0;
    DS_MPI_RETURN_IF_ERROR(MPI_Initialized(&initialized));
    int provided = 0;
    bool owned = false;
    if (initialized) {
        DS_MPI_RETURN_IF_ERROR(MPI_Query_thread(&provided));
    } else {
        int rc = MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided);
        if (rc != MPI_SUCCESS) {
            return mpi_error(rc, "MPI_Init_thread", __FILE__, __LINE__);
        }
        owned = true;
    }
    if (provided < MPI_THREAD_FUNNELED) {
        return Status(StatusCode::kMpi, "MPI provides thread level " + std::to_string(provided) +
                                            " < MPI_THREAD_FUNNELED");
    }
    DS_MPI_RETURN_IF_ERROR(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    DS_MPI_RETURN_IF_ERROR(MPI_Comm_set_errhandler(MPI_COMM_SELF, MPI_ERRORS_RETURN));
    return MpiRuntime(owned, provided);
}

MpiRuntime::MpiRuntime(MpiRuntime&& other) noexcept : owned_(other.owned_), thread_level_(other.thread_level_) {
    other.owned_ = false;
}

MpiRuntime& MpiRuntime::operator=(MpiRuntime&& other) noexcept {
    if (this != &other) {
        owned_ = other.owned_;
        thread_level_ = other.thread_level_;
        other.owned_ = false;
    }
    return *this;
}

bool MpiRuntime::thread_multiple() const {
    return thread_level_ >= MPI_THREAD_MULTIPLE;
}

MpiRuntime::~MpiRuntime() {
    if (!owned_) {
        return;
    }
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) {
        return;
    }
    if (has_abandoned_operation()) {
        spdlog::error("comm: skipping MPI_Finalize: an operation that missed its deadline is still inside MPI");
        return;
    }
    int rc = MPI_Finalize();
    if (rc != MPI_SUCCESS) {
        spdlog::error("comm: MPI_Finalize failed ({})", rc);
    }
}

}  // namespace deepshard::comm
