// MPI return codes -> Status (kMpi), recording the expression, file and line.
#pragma once

#include <mpi.h>

#include <string>

#include "common/status.h"

namespace deepshard::comm {

// Message of an MPI error code (MPI_Error_string).
std::string mpi_error_string(int rc);
// kMpi Status "expr failed: <MPI message> (file:line)".
Status mpi_error(int rc, const char* expr, const char* file, int line);

}  // namespace deepshard::comm

#define DS_MPI_RETURN_IF_ERROR(expr)                                                 \
    do {                                                                             \
        int _ds_mpi_rc = (expr);                                                     \
        if (_ds_mpi_rc != MPI_SUCCESS) {                                             \
            return ::deepshard::comm::mpi_error(_ds_mpi_rc, #expr, __FILE__, __LINE__); \
        }                                                                            \
    } while (0)
