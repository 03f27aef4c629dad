// Runs a lowered Schedule without MPI to prove it free of deadlock and to measure its
// bubble and in-flight activation memory. Sends are buffered (never block); a receive
// completes once its matching send has been issued; communication takes no time.
#pragma once

#include <string>
#include <vector>

#include "parallel/schedule.h"

namespace loom {

struct SimOptions {
  SimOptions() = default;
  SimOptions(double fwd, double bwd) : t_fwd(fwd), t_bwd(bwd) {}
  double t_fwd = 1;  // cost of one forward of one chunk
  double t_bwd = 2;  // backward costs about twice the forward (two GEMMs per forward GEMM)
  // Per virtual stage (chunk * p + rank) costs, measured or from a cost model; when set
  // (size p*v) they replace t_fwd / t_bwd, so unbalanced stages are simulated as they run.
  std::vector<double> stage_fwd, stage_bwd;
};

// One compute action as it ran.
struct SimInterval {
  double start = 0, end = 0;
  Action action;
};

struct SimResult {
  bool ok = false;
  std::string error;                          // deadlock grid or validation failure
  double makespan = 0;
  std::vector<double> busy;                   // compute time per rank
  double bubble_fraction = 0;                 // 1 - sum(busy) / (p * makespan)
  std::vector<int> peak_inflight;             // max activations held per rank (all chunks)
  std::vector<std::vector<SimInterval>> ran;  // compute intervals per rank, in order
};

// Simulates a lowered schedule of p = s.size() ranks, m micro-batches, v chunks per rank.
SimResult simulate(const Schedule& s, int m, int v, const SimOptions& opt = {});

// One row per rank, one column per time unit: "F0", "B3" ("F3c1" when v > 1), "." idle.
std::string timeline(const Schedule& s, const SimResult& r, int v = 1);

}  // namespace loom
