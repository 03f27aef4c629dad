// Shared by the MPI test binaries: the process's MPI runtime (tests only; the library
// itself passes the ProcessGrid explicitly).
#pragma once

#include "comm/mpi_comm.h"

#include <filesystem>
#include <string>

#include "comm/process_grid.h"

namespace loom::test {
MpiRuntime& mpi();

// A fresh directory every rank of this job shares (rank 0 makes it; all wait). Rank 0
// removes it when the test ends, after every rank has finished the test.
std::filesystem::path shared_dir(const ProcessGrid& grid, const std::string& name);
}  // namespace loom::test
