// Pipeline schedules: every builder, lowered, must simulate without deadlock for a sweep
// of shapes, match the textbook bubble and memory, and broken schedules must be caught.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "core/check.h"
#include "parallel/schedule.h"
#include "parallel/schedule_sim.h"

namespace loom {
namespace {

struct Case {
  std::string name;
  int p, m, v;
  Schedule compute;
};

// Every (schedule, p, m[, v]) the builders accept in the sweep; shapes the interleaved
// schedule rejects are not generated.
std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (int p = 1; p <= 8; ++p)
    for (int m = 1; m <= 16; ++m) {
      cases.push_back({"gpipe", p, m, 1, build_gpipe(p, m)});
      cases.push_back({"1f1b", p, m, 1, build_1f1b(p, m)});
      if (m % p != 0) continue;
      for (int v : {2, 3}) cases.push_back({"interleaved", p, m, v, build_interleaved_1f1b(p, m, v)});
    }
  return cases;
}

std::string describe(const Case& c) {
  return fmt::format("{} p={} m={} v={}", c.name, c.p, c.m, c.v);
}

TEST(Schedule, ToStringFormats) {
  EXPECT_EQ(to_string(Action{OpKind::kForward, 2, 0}), "2F0");
  EXPECT_EQ(to_string(Action{OpKind::kBackward, 2, 0}), "2B0");
  EXPECT_EQ(to_string(Action{OpKind::kForward, 1, 3, 1}, 2), "1F3c1");
  EXPECT_EQ(to_string(Action{OpKind::kSendAct, 2, 0, 0, 3}), "2SA0>3");
  EXPECT_EQ(to_string(Action{OpKind::kRecvAct, 3, 0, 0, 2}), "3RA0<2");
  EXPECT_EQ(to_string(Action{OpKind::kSendGrad, 3, 0, 0, 2}), "3SG0>2");
  EXPECT_EQ(to_string(Action{OpKind::kRecvGrad, 2, 0, 0, 3}), "2RG0<3");
  EXPECT_EQ(to_string(Action{OpKind::kSendAct, 1, 4, 1, 2}, 2), "1SA4c1>2");
}

TEST(Schedule, BuildersOnlyEmitCompute) {
  const Schedule s = build_1f1b(4, 8);
  ASSERT_EQ(s.size(), 4u);
  // Rank 0 warms up with p-1 forwards before its first backward.
  EXPECT_EQ(s[0][0], (Action{OpKind::kForward, 0, 0}));
  EXPECT_EQ(s[0][3], (Action{OpKind::kForward, 0, 3}));
  EXPECT_EQ(s[0][4], (Action{OpKind::kBackward, 0, 0}));
  // The last rank alternates from the start.
  EXPECT_EQ(s[3][1], (Action{OpKind::kBackward, 3, 0}));
  for (const auto& c : all_cases())
    for (const auto& list : c.compute) {
      EXPECT_EQ(list.size(), static_cast<size_t>(2 * c.m * c.v)) << describe(c);
      for (const Action& a : list)
        EXPECT_TRUE(a.op == OpKind::kForward || a.op == OpKind::kBackward) << describe(c);
    }
}

TEST(Schedule, LowerInsertsSendsAndReceives) {
  const Schedule s = lower(build_gpipe(2, 1), 2, 1);
  std::vector<std::string> r0, r1;
  for (const Action& a : s[0]) r0.push_back(to_string(a));
  for (const Action& a : s[1]) r1.push_back(to_string(a));
  EXPECT_EQ(r0, (std::vector<std::string>{"0F0", "0SA0>1", "0RG0<1", "0B0"}));
  EXPECT_EQ(r1, (std::vector<std::string>{"1RA0<0", "1F0", "1B0", "1SG0>0"}));
  // Interleaved: the last rank's chunk 0 sends its activation back to rank 0's chunk 1.
  const Schedule i = lower(build_interleaved_1f1b(2, 2, 2), 2, 2);
  EXPECT_NE(std::find(i[1].begin(), i[1].end(), Action{OpKind::kSendAct, 1, 0, 0, 0}), i[1].end());
  EXPECT_NE(std::find(i[0].begin(), i[0].end(), Action{OpKind::kRecvAct, 0, 0, 1, 1}), i[0].end());
}

TEST(Schedule, InterleavedRejectsBadShapes) {
  EXPECT_THROW(build_interleaved_1f1b(4, 6, 2), InputError);
  EXPECT_THROW(build_interleaved_1f1b(4, 8, 1), InputError);
  EXPECT_THROW(build_1f1b(0, 8), InputError);
  try {
    build_interleaved_1f1b(4, 6, 2);
    FAIL() << "no throw";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("6 % 4"), std::string::npos) << e.what();
  }
}

TEST(ScheduleSim, EverySweptScheduleRunsAndValidates) {
  int simulated = 0;
  for (const auto& c : all_cases()) {
    for (SimOptions opt : {SimOptions{1, 1}, SimOptions{1, 2}}) {
      const SimResult r = simulate(lower(c.compute, c.p, c.v), c.m, c.v, opt);
      ASSERT_TRUE(r.ok) << describe(c) << "\n" << r.error;
      double busy = 0;
      for (double b : r.busy) busy += b;
      EXPECT_DOUBLE_EQ(busy, c.p * c.m * c.v * (opt.t_fwd + opt.t_bwd)) << describe(c);
      EXPECT_GE(r.bubble_fraction, -1e-12) << describe(c);
      ++simulated;
    }
  }
  EXPECT_GT(simulated, 500);
}

TEST(ScheduleSim, TextbookBubbleForGpipeAnd1f1b) {
  for (int p = 1; p <= 8; ++p)
    for (int m = 1; m <= 16; ++m) {
      const double textbook = double(p - 1) / (m + p - 1);
      for (const auto& [name, s] : {std::pair{"gpipe", build_gpipe(p, m)},
                                    std::pair{"1f1b", build_1f1b(p, m)}}) {
        const SimResult r = simulate(lower(s, p, 1), m, 1, {1, 1});
        ASSERT_TRUE(r.ok) << r.error;
        EXPECT_NEAR(r.bubble_fraction, textbook, 1e-12) << name << " p=" << p << " m=" << m;
        EXPECT_DOUBLE_EQ(r.makespan, 2.0 * (m + p - 1)) << name << " p=" << p << " m=" << m;
      }
    }
}

// Narayanan et al. 2021: the interleaved pipeline fills and drains in (p-1)/v of a
// micro-batch's time, so bubble = b / (m + b) with b = (p-1)/v, for any backward cost.
TEST(ScheduleSim, TextbookBubbleForInterleaved) {
  for (int p = 1; p <= 8; ++p)
    for (int m = p; m <= 16; m += p)
      for (int v : {2, 3})
        for (SimOptions opt : {SimOptions{1, 1}, SimOptions{1, 2}}) {
          const SimResult r = simulate(lower(build_interleaved_1f1b(p, m, v), p, v), m, v, opt);
          ASSERT_TRUE(r.ok) << r.error;
          const double b = double(p - 1) / v;
          EXPECT_NEAR(r.bubble_fraction, b / (m + b), 1e-12)
              << "p=" << p << " m=" << m << " v=" << v << " t_bwd=" << opt.t_bwd;
        }
}

TEST(ScheduleSim, InterleavedBubbleBelow1f1b) {
  for (int p = 2; p <= 8; ++p)
    for (int m = p; m <= 16; m += p)
      for (int v : {2, 3})
        for (SimOptions opt : {SimOptions{1, 1}, SimOptions{1, 2}}) {
          const SimResult plain = simulate(lower(build_1f1b(p, m), p, 1), m, 1, opt);
          const SimResult inter = simulate(lower(build_interleaved_1f1b(p, m, v), p, v), m, v, opt);
          ASSERT_TRUE(plain.ok && inter.ok);
          EXPECT_LT(inter.bubble_fraction, plain.bubble_fraction)
              << "p=" << p << " m=" << m << " v=" << v << " t_bwd=" << opt.t_bwd;
        }
}

TEST(ScheduleSim, PeakInflight) {
  for (int p = 1; p <= 8; ++p)
    for (int m = 1; m <= 16; ++m) {
      const SimResult f = simulate(lower(build_1f1b(p, m), p, 1), m, 1);
      const SimResult g = simulate(lower(build_gpipe(p, m), p, 1), m, 1);
      ASSERT_TRUE(f.ok && g.ok);
      for (int r = 0; r < p; ++r) {
        EXPECT_EQ(f.peak_inflight[r], std::min(m, p - r)) << "p=" << p << " m=" << m << " r=" << r;
        EXPECT_EQ(g.peak_inflight[r], m) << "p=" << p << " m=" << m << " r=" << r;
      }
    }
}

TEST(ScheduleSim, SwappedReceivesDeadlock) {
  Schedule s = lower(build_1f1b(4, 8), 4, 1);
  // Rank 3 waits for micro-batch 1's activation before 0's; rank 2 sends 0 only after
  // it gets 0's gradient back from rank 3, which never comes.
  auto& r3 = s[3];
  auto ra0 = std::find(r3.begin(), r3.end(), Action{OpKind::kRecvAct, 3, 0, 0, 2});
  auto ra1 = std::find(r3.begin(), r3.end(), Action{OpKind::kRecvAct, 3, 1, 0, 2});
  ASSERT_TRUE(ra0 != r3.end() && ra1 != r3.end());
  std::iter_swap(ra0, ra1);
  // Make rank 2 hold micro-batch 1 until micro-batch 0's gradient arrives.
  auto& r2 = s[2];
  auto sa1 = std::find(r2.begin(), r2.end(), Action{OpKind::kSendAct, 2, 1, 0, 3});
  auto rg0 = std::find(r2.begin(), r2.end(), Action{OpKind::kRecvGrad, 2, 0, 0, 3});
  ASSERT_TRUE(sa1 != r2.end() && rg0 != r2.end());
  const Action moved = *sa1;
  r2.erase(sa1);
  rg0 = std::find(r2.begin(), r2.end(), Action{OpKind::kRecvGrad, 2, 0, 0, 3});
  r2.insert(rg0 + 1, moved);
  const SimResult r = simulate(s, 8, 1);
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.error.find("deadlock"), std::string::npos) << r.error;
  EXPECT_NE(r.error.find("3RA1<2 <-- ERROR HERE"), std::string::npos) << r.error;
  EXPECT_NE(r.error.find("2RG0<3 <-- ERROR HERE"), std::string::npos) << r.error;
}

TEST(ScheduleSim, DroppedSendDeadlocks) {
  Schedule s = lower(build_gpipe(3, 2), 3, 1);
  auto& r0 = s[0];
  r0.erase(std::find(r0.begin(), r0.end(), Action{OpKind::kSendAct, 0, 1, 0, 1}));
  const SimResult r = simulate(s, 2, 1);
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.error.find("1RA1<0 <-- ERROR HERE"), std::string::npos) << r.error;
}

TEST(ScheduleSim, ValidationErrors) {
  // A backward before its forward on the same rank.
  Schedule s = lower(build_gpipe(1, 2), 1, 1);
  std::swap(s[0][0], s[0][2]);
  SimResult r = simulate(s, 2, 1);
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.error.find("before its forward"), std::string::npos) << r.error;
  // A send nobody receives.
  s = lower(build_gpipe(2, 2), 2, 1);
  s[1].erase(std::find(s[1].begin(), s[1].end(), Action{OpKind::kRecvAct, 1, 1, 0, 0}));
  r = simulate(s, 2, 1);
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.error.find("never received"), std::string::npos) << r.error;
  // A missing micro-batch.
  r = simulate(lower(build_gpipe(2, 1), 2, 1), 2, 1);
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.error.find("micro-batch 1"), std::string::npos) << r.error;
}

TEST(ScheduleSim, TimelineGrid) {
  const Schedule s = lower(build_1f1b(2, 2), 2, 1);
  const SimResult r = simulate(s, 2, 1, {1, 1});
  ASSERT_TRUE(r.ok) << r.error;
  EXPECT_EQ(timeline(s, r), "rank 0: F0 F1 .  B0 .  B1\n"
                            "rank 1: .  F0 B0 F1 B1 . \n");
}

}  // namespace
}  // namespace loom
