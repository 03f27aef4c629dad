// Pipeline executor pieces that need no MPI: schedule names, the in-order matching every
// built schedule must satisfy, the error grid, and the executor itself on one rank
// (pp=1; interleaved chunks then pass activations to their own rank).
#include <gtest/gtest.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "affine_stage.h"
#include "comm/comm.h"
#include "core/check.h"
#include "parallel/pipeline.h"
#include "parallel/schedule.h"
#include "parallel/schedule_sim.h"

namespace loom {
namespace {

std::string error_of(const std::string& name, int p, int m, int v) {
  try {
    build_schedule(name, p, m, v);
  } catch (const InputError& e) {
    return e.what();
  }
  return "no error";
}

TEST(PipelineSchedule, NamesBuildAndLower) {
  EXPECT_EQ(build_schedule("gpipe", 4, 8, 1), lower(build_gpipe(4, 8), 4, 1));
  EXPECT_EQ(build_schedule("1f1b", 4, 8, 1), lower(build_1f1b(4, 8), 4, 1));
  EXPECT_EQ(build_schedule("interleaved", 4, 8, 2), lower(build_interleaved_1f1b(4, 8, 2), 4, 2));
}

TEST(PipelineSchedule, RejectsBadNamesAndShapes) {
  EXPECT_NE(error_of("gpipe", 4, 8, 2).find("'gpipe'"), std::string::npos);
  EXPECT_NE(error_of("1f1b", 4, 8, 2).find("interleaved"), std::string::npos);
  EXPECT_NE(error_of("interleaved", 4, 8, 1).find("virtual stages"), std::string::npos);
  EXPECT_NE(error_of("interleaved", 4, 6, 2).find("6 % 4"), std::string::npos);
  const std::string unknown = error_of("zero-bubble", 4, 8, 1);
  EXPECT_NE(unknown.find("'zero-bubble'"), std::string::npos) << unknown;
  EXPECT_NE(unknown.find("gpipe, 1f1b, interleaved"), std::string::npos) << unknown;
}

// MPI matches the messages between two ranks in the order they were posted; every schedule
// the builders make must post sends and receives in the same order on both sides.
TEST(PipelineSchedule, SendsAndReceivesMatchInOrder) {
  int checked = 0;
  for (int p = 1; p <= 8; ++p)
    for (int m = 1; m <= 16; ++m) {
      EXPECT_EQ(p2p_order_mismatch(build_schedule("gpipe", p, m, 1), 1), "");
      EXPECT_EQ(p2p_order_mismatch(build_schedule("1f1b", p, m, 1), 1), "");
      checked += 2;
      if (m % p != 0) continue;
      for (int v : {2, 3, 4}) {
        EXPECT_EQ(p2p_order_mismatch(build_schedule("interleaved", p, m, v), v), "")
            << "p=" << p << " m=" << m << " v=" << v;
        ++checked;
      }
    }
  EXPECT_GT(checked, 300);
}

TEST(PipelineSchedule, SwappedReceivesBreakInOrderMatching) {
  Schedule s = build_schedule("gpipe", 2, 2, 1);
  auto& r1 = s[1];
  auto ra0 = std::find(r1.begin(), r1.end(), Action{OpKind::kRecvAct, 1, 0, 0, 0});
  auto ra1 = std::find(r1.begin(), r1.end(), Action{OpKind::kRecvAct, 1, 1, 0, 0});
  ASSERT_TRUE(ra0 != r1.end() && ra1 != r1.end());
  std::iter_swap(ra0, ra1);
  const std::string msg = p2p_order_mismatch(s, 1);
  EXPECT_NE(msg.find("from rank 0 to rank 1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("position 0"), std::string::npos) << msg;
}

TEST(PipelineErrorGrid, MarksTheFailingAction) {
  const Schedule s = build_schedule("1f1b", 2, 2, 1);
  const std::string grid = pipeline_error_grid(s, 1, 1, 2);
  // Rank 1's list is 1RA0<0 1F0 1B0 1SG0>0 ...: action 2 is 1B0, in the second column.
  std::string row;
  for (size_t start = 0, end; start < grid.size(); start = end + 1) {
    end = grid.find('\n', start);
    const std::string line = grid.substr(start, end - start);
    if (line.find("ERROR HERE") != std::string::npos) row = line;
  }
  ASSERT_FALSE(row.empty()) << grid;
  EXPECT_NE(row.find("1B0 <-- ERROR HERE"), std::string::npos) << grid;
  EXPECT_LT(row.find(to_string(s[0][2])), row.find("1B0")) << grid;
  EXPECT_EQ(row.substr(0, 8), "       2") << grid;
  EXPECT_NE(grid.find("rank 1 failed at action 2"), std::string::npos) << grid;
  // Past the end: the final wait for sends.
  const std::string end = pipeline_error_grid(s, 1, 0, s[0].size());
  EXPECT_NE(end.find("waiting for its sends"), std::string::npos) << end;
  EXPECT_NE(end.find("rank 0  <-- ERROR HERE"), std::string::npos) << end;
}

struct OneRankCase {
  std::string name;
  int m, v;
};

TEST(PipelineExecutorOneRank, RunsEveryScheduleExactly) {
  auto comm = make_single_comm("pp");
  for (const OneRankCase& c : {OneRankCase{"gpipe", 3, 1}, OneRankCase{"1f1b", 4, 1},
                               OneRankCase{"interleaved", 2, 2},
                               OneRankCase{"interleaved", 3, 3}}) {
    SCOPED_TRACE(c.name + " m=" + std::to_string(c.m) + " v=" + std::to_string(c.v));
    Trace trace(0, Trace::Clock::now());
    CommProgress progress;
    PipelineExecutor exec(*comm, build_schedule(c.name, 1, c.m, c.v), c.m, c.v, 5, &trace,
                          &progress);
    test::AffineStage stage(1, 0, c.m, c.v, 5);
    const PipelineStats stats = exec.run(stage, 7);
    stage.check();
    EXPECT_GE(stats.seconds, stats.compute_s);
    EXPECT_EQ(progress.step, 7);
    EXPECT_EQ(progress.micro_batch, c.m - 1);  // every schedule ends with micro-batch m-1
    int computes = 0, sends = 0;
    for (const TraceEvent& e : trace.events()) {
      if (e.cat == "compute") {
        ++computes;
        EXPECT_EQ(e.lane, kLaneCompute);
        EXPECT_EQ(e.step, 7);
      }
      if (e.name == "SEND act->0" || e.name == "SEND grad->0") {
        ++sends;
        EXPECT_EQ(e.bytes, 5 * 4);
      }
    }
    EXPECT_EQ(computes, 2 * c.m * c.v);
    EXPECT_EQ(sends, 2 * c.m * (c.v - 1));
    // GPipe holds every micro-batch, 1F1B on its last rank one; interleaved chunks hold
    // at least together what the simulator measures for the whole rank.
    const SimResult sim = simulate(exec.schedule(), c.m, c.v);
    ASSERT_TRUE(sim.ok) << sim.error;
    int sum = 0;
    for (int chunk = 0; chunk < c.v; ++chunk) sum += exec.peak_inflight(chunk);
    if (c.name == "gpipe") {
      EXPECT_EQ(exec.peak_inflight(0), c.m);
    } else if (c.name == "1f1b") {
      EXPECT_EQ(exec.peak_inflight(0), 1);
    }
    EXPECT_GE(sum, sim.peak_inflight[0]);
  }
}

class ThrowingStage final : public PipelineStage {
 public:
  void forward(int, int mb, const float*, float*) override {
    if (mb == 1) throw std::runtime_error("stage exploded at mb 1");
  }
  void backward(int, int, const float*, float*) override {}
};

TEST(PipelineExecutorOneRank, ErrorPrintsGridAndRethrows) {
  auto comm = make_single_comm("pp");
  PipelineExecutor exec(*comm, build_schedule("gpipe", 1, 3, 1), 3, 1, 4);
  ThrowingStage stage;
  testing::internal::CaptureStderr();
  EXPECT_THROW(exec.run(stage, 0), std::runtime_error);
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("0F1 <-- ERROR HERE"), std::string::npos) << err;
  EXPECT_NE(err.find("stage exploded at mb 1"), std::string::npos) << err;
}

TEST(PipelineExecutorOneRank, RejectsScheduleOfWrongSize) {
  auto comm = make_single_comm("pp");
  EXPECT_THROW(PipelineExecutor(*comm, build_schedule("gpipe", 2, 2, 1), 2, 1, 4), Error);
  EXPECT_THROW(PipelineExecutor(*comm, build_schedule("gpipe", 1, 2, 1), 2, 1, 0), Error);
}

}  // namespace
}  // namespace loom
