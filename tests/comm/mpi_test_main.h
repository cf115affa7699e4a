// Shared main for multi-rank comm tests: MpiRuntime + a world MpiComm, gtest output from rank 0
// (other ranks print only their failures, prefixed with the rank).
#pragma once

#include "comm/mpi/mpi_comm.h"

namespace deepshard::comm::testing {

// The world communicator of this test process (valid during RUN_ALL_TESTS).
MpiComm& world();

}  // namespace deepshard::comm::testing
