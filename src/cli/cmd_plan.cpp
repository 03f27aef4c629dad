// loom plan --simulate --pp P --microbatches M [--schedule gpipe|1f1b|interleaved]
//           [--virtual-stages V]
// Builds a pipeline schedule, lowers it to sends and receives, runs it in the simulator
// (no MPI) and prints the timeline, the bubble beside the textbook value, and the peak
// number of in-flight activations per stage.
#include <fmt/core.h>

#include <cmath>
#include <memory>
#include <string>

#include "cli/command.h"
#include "core/check.h"
#include "core/memory.h"
#include "parallel/schedule.h"
#include "parallel/schedule_sim.h"

namespace loom::cli {
namespace {

struct PlanOpts {
  bool simulate = false;
  int pp = 1;
  int microbatches = 1;
  std::string schedule = "1f1b";
  int virtual_stages = 2;
  double t_fwd = 1, t_bwd = 2;
};

constexpr double kMaxTimelineCells = 1e6;
// Bytes the schedule, its lowering and the simulation hold per (stage, micro-batch, chunk):
// a forward and a backward, their sends and receives, and the simulated intervals. Measured
// peak RSS: 665 bytes at --pp 1000 --microbatches 2000 (1f1b and interleaved alike).
constexpr double kBytesPerStageMicrobatch = 768;

// Refuses (exit 2) a simulation that would not fit in memory, naming the need, the limit and
// the most micro-batches that would fit at this --pp, instead of being OOM-killed.
void require_plan_fits(int p, int m, int v) {
  const double need = kBytesPerStageMicrobatch * double(p) * double(m) * double(v);
  const MemoryLimit limit = available_memory(1);
  if (need <= limit.bytes) return;
  const double most = std::floor(limit.bytes / (kBytesPerStageMicrobatch * double(p) * v));
  throw InputError(fmt::format(
      "plan: simulating --pp {} --microbatches {}{} needs about {} but {} is available ({}); "
      "{}",
      p, m, v > 1 ? fmt::format(" --virtual-stages {}", v) : "", format_bytes(need),
      format_bytes(limit.bytes), limit.why,
      most >= 1 ? fmt::format("at --pp {} at most --microbatches {:.0f} fits", p, most)
                : "lower --pp"));
}

int run_plan(const PlanOpts& o) {
  LOOM_REQUIRE(o.simulate, "plan: only --simulate is implemented; pass --simulate");
  LOOM_REQUIRE(o.pp >= 1 && o.microbatches >= 1, "plan: need --pp >= 1 and --microbatches >= 1, "
               "got --pp {} --microbatches {}", o.pp, o.microbatches);
  const int p = o.pp, m = o.microbatches;
  const bool inter = o.schedule == "interleaved";
  const int v = inter ? o.virtual_stages : 1;
  require_plan_fits(p, m, v);
  Schedule compute;
  if (o.schedule == "gpipe") compute = build_gpipe(p, m);
  else if (o.schedule == "1f1b") compute = build_1f1b(p, m);
  else if (inter) compute = build_interleaved_1f1b(p, m, v);
  else LOOM_REQUIRE(false, "plan: unknown --schedule '{}' (gpipe, 1f1b, interleaved)", o.schedule);

  const Schedule lowered = lower(compute, p, v);
  SimOptions sim;
  sim.t_fwd = o.t_fwd;
  sim.t_bwd = o.t_bwd;
  const SimResult r = simulate(lowered, m, v, sim);
  LOOM_CHECK(r.ok, "schedule {} failed in simulation:\n{}", o.schedule, r.error);

  // Textbook bubble (Narayanan et al. 2021): b / (m + b) with b = (p-1)/v pipeline fills.
  const double b = double(p - 1) / v;
  fmt::print("schedule {} pp={} microbatches={}{} (t_fwd={} t_bwd={})\n", o.schedule, p, m,
             inter ? fmt::format(" virtual-stages={}", v) : "", o.t_fwd, o.t_bwd);
  // A timeline is for reading: past a few screens it is omitted, and never allocated.
  const double cells = double(p) * std::ceil(r.makespan);
  if (cells <= kMaxTimelineCells) {
    fmt::print("{}", timeline(lowered, r, v));
  } else {
    fmt::print("timeline omitted: {} ranks x {:.0f} time units is more than {:.0f} cells\n", p,
               std::ceil(r.makespan), kMaxTimelineCells);
  }
  fmt::print("makespan {:g}  bubble {:.4f}  textbook {:.4f}\n", r.makespan, r.bubble_fraction,
             b / (m + b));
  fmt::print("peak in-flight activations per stage:");
  for (int rank = 0; rank < p; ++rank) fmt::print(" {}", r.peak_inflight[rank]);
  fmt::print("\n");
  return 0;
}

}  // namespace

RunFn setup_plan(CLI::App& sub) {
  auto o = std::make_shared<PlanOpts>();
  sub.add_flag("--simulate", o->simulate, "run the schedule in the simulator (no MPI)");
  sub.add_option("--pp", o->pp, "pipeline stages")->check(in_range(1, 1 << 20));
  sub.add_option("--microbatches", o->microbatches, "micro-batches per step")
      ->check(in_range(1, 1 << 30));
  sub.add_option("--schedule", o->schedule, "gpipe, 1f1b or interleaved")->capture_default_str();
  sub.add_option("--virtual-stages", o->virtual_stages, "model chunks per rank (interleaved)")
      ->capture_default_str()
      ->check(in_range(1, 1 << 10));
  sub.add_option("--t-fwd", o->t_fwd, "simulated cost of a forward")
      ->capture_default_str()
      ->check(in_range(1e-3, 1e3));
  sub.add_option("--t-bwd", o->t_bwd, "simulated cost of a backward")
      ->capture_default_str()
      ->check(in_range(1e-3, 1e3));
  return [o] { return run_plan(*o); };
}

}  // namespace loom::cli
