// Shared by the MPI test binaries: the process's MPI runtime (tests only; the library
// itself passes the ProcessGrid explicitly).
#pragma once

#include "comm/mpi_comm.h"

#include <unistd.h>

#include <filesystem>
#include <string>

#include "comm/process_grid.h"

namespace loom::test {
MpiRuntime& mpi();

// A fresh directory every rank of this job shares (rank 0 makes it; all wait).
inline std::filesystem::path shared_dir(const ProcessGrid& grid, const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("loom_" + name + "_" + std::to_string(::getppid()));
  if (grid.rank() == 0) {
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
  }
  grid.world().barrier();
  return dir;
}
}  // namespace loom::test
