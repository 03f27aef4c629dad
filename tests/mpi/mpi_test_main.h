// Shared by the MPI test binaries: the process's MPI runtime (tests only; the library
// itself passes the ProcessGrid explicitly).
#pragma once

#include "comm/mpi_comm.h"

namespace loom::test {
MpiRuntime& mpi();
}  // namespace loom::test
