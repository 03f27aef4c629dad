// Pipeline executor over MPI: for pp = world size, every schedule (GPipe, 1F1B, interleaved
// with 2 chunks per rank) and m in {1, 2, 4, 8}, a fake affine stage (tests/parallel/
// affine_stage.h) must see every forward and backward exactly once with the exact
// activations and gradients that the composition of the stages gives.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "../parallel/affine_stage.h"
#include "mpi_test_main.h"
#include "parallel/pipeline.h"

namespace loom {
namespace {

constexpr int kActFloats = 5;

struct Case {
  std::string name;
  int m, v;
};

std::vector<Case> cases(int p) {
  std::vector<Case> out;
  for (int m : {1, 2, 4, 8}) {
    out.push_back({"gpipe", m, 1});
    out.push_back({"1f1b", m, 1});
    if (m % p == 0) out.push_back({"interleaved", m, 2});
  }
  return out;
}

// Counts trace events named `name` on lane `lane`.
int count_events(const Trace& trace, const std::string& name, int lane) {
  int n = 0;
  for (const TraceEvent& e : trace.events()) n += e.name == name && e.lane == lane;
  return n;
}

TEST(PipelineExecutorMpi, EveryScheduleComputesExactGradients) {
  auto world = test::mpi().world();
  const int p = world->size(), rank = world->rank();
  for (const Case& c : cases(p)) {
    SCOPED_TRACE(c.name + " pp=" + std::to_string(p) + " m=" + std::to_string(c.m) +
                 " v=" + std::to_string(c.v));
    Trace trace(rank, Trace::Clock::now());
    PipelineExecutor exec(*world, build_schedule(c.name, p, c.m, c.v), c.m, c.v, kActFloats,
                          &trace, &test::mpi().progress());
    for (int64_t step = 0; step < 2; ++step) {  // buffers are reused from step to step
      test::AffineStage stage(p, rank, c.m, c.v, kActFloats);
      const PipelineStats stats = exec.run(stage, step);
      stage.check();
      EXPECT_GE(stats.seconds, stats.compute_s);
      EXPECT_EQ(test::mpi().progress().step, step);
    }
    // Per step: one compute event per forward and backward; every virtual stage but the
    // first waits for each activation it receives (one per micro-batch and chunk).
    int computes = 0, waits_act = 0;
    for (const TraceEvent& e : trace.events()) {
      computes += e.cat == "compute";
      waits_act += e.name.rfind("WAIT act<-", 0) == 0;
    }
    EXPECT_EQ(computes, 2 * 2 * c.m * c.v);
    // (With pp=1 the chunks pass activations by copy, with nothing to wait for.)
    const int receiving_chunks = p == 1 ? 0 : c.v - (rank == 0 ? 1 : 0);
    EXPECT_EQ(waits_act, 2 * c.m * receiving_chunks);
    if (rank > 0) {
      EXPECT_EQ(count_events(trace, "SEND grad->" + std::to_string(rank - 1), kLaneP2p),
                2 * c.m * c.v);
    }
    if (c.name == "gpipe") {
      EXPECT_EQ(exec.peak_inflight(0), c.m);
    } else if (c.name == "1f1b") {
      EXPECT_EQ(exec.peak_inflight(0), std::min(c.m, p - rank));
    }
  }
}

}  // namespace
}  // namespace loom
