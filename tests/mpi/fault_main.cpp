// A tiny MPI program for the failure tests (driven by tests/comm/fault_test.cpp):
//   loom_mpi_fault hang RANK SECONDS TIMEOUT  - RANK sleeps before the all-reduce
//   loom_mpi_fault abort RANK                 - RANK calls abort() before the all-reduce
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "comm/mpi_comm.h"
#include "comm/process_grid.h"

int main(int argc, char** argv) {
  if (argc < 3) return 64;
  const std::string mode = argv[1];
  const int victim = std::atoi(argv[2]);
  loom::MpiOptions opt;
  opt.timeout_s = mode == "hang" && argc > 4 ? std::atof(argv[4]) : 60;
  loom::MpiRuntime rt(opt);
  const loom::GridShape shape{.pp = 1, .dp = rt.world_size(), .tp = 1};
  loom::ProcessGrid grid = loom::ProcessGrid::create(rt.world(), shape);
  rt.set_rank_describer([&](int r) { return grid.describe(r); });
  std::vector<float> x(1024, 1.0f);
  for (int step = 0; step < 6; ++step) {
    rt.progress().step = step;
    if (step == 5 && grid.rank() == victim) {
      if (mode == "hang") sleep(unsigned(std::atoi(argv[3])));
      if (mode == "abort") std::abort();
    }
    grid.dp_comm().allreduce(x.data(), x.size(), loom::ReduceOp::kSum);
  }
  return 0;
}
