// MpiRuntime: the one guard object that owns MPI_Init_thread / MPI_Finalize for a process.
//
// Ownership: create() initializes MPI unless someone already did (then the guard does not own it
// and its destructor leaves MPI alone). Move-only; keep exactly one alive for the lifetime of every
// MpiComm. Destruction calls MPI_Finalize, except when an operation was abandoned inside MPI (a
// collective that missed its deadline): finalizing would then wait for that operation forever, so
// the guard logs and skips it (the process should be exiting with an error anyway).
// Thread-safety: create and destroy from the main thread.
#pragma once

#include "common/status.h"

namespace deepshard::comm {

class MpiRuntime {
public:
    // Requests MPI_THREAD_MULTIPLE; accepts anything >= MPI_THREAD_FUNNELED. Sets MPI_ERRORS_RETURN
    // on MPI_COMM_WORLD and MPI_COMM_SELF so MPI errors become Status values instead of aborts.
    static StatusOr<MpiRuntime> create(int* argc, char*** argv);

    MpiRuntime(MpiRuntime&& other) noexcept;
    MpiRuntime& operator=(MpiRuntime&& other) noexcept;
    MpiRuntime(const MpiRuntime&) = delete;
    MpiRuntime& operator=(const MpiRuntime&) = delete;
    ~MpiRuntime();

    bool owned() const { return owned_; }
    // MPI_THREAD_* level provided by the library.
    int thread_level() const { return thread_level_; }
    bool thread_multiple() const;

    // Set by MpiComm when an uncancellable operation was left inside MPI (see class comment).
    static void note_abandoned_operation();
    static bool has_abandoned_operation();

private:
    MpiRuntime(bool owned, int thread_level) : owned_(owned), thread_level_(thread_level) {}
    bool owned_ = false;
    int thread_level_ = 0;
};

}  // namespace deepshard::comm
