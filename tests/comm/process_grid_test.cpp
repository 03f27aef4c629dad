#include <gtest/gtest.h>

#include "comm/process_grid.h"
#include "core/check.h"

namespace loom {
namespace {

TEST(ProcessGrid, RankAndCoordinatesAreInverse) {
  const GridShape s{.pp = 2, .dp = 3, .tp = 4};
  for (int r = 0; r < s.world(); ++r) EXPECT_EQ(rank_of(s, coord_of(s, r)), r);
  // tp fastest, then dp, then pp: rank = tp + tp_size*(dp + dp_size*pp).
  EXPECT_EQ(coord_of(s, 5), (GridCoord{.pp = 0, .dp = 1, .tp = 1}));
  EXPECT_EQ(rank_of(s, GridCoord{.pp = 1, .dp = 2, .tp = 3}), 23);
  const GridShape m{.pp = 2, .dp = 2, .tp = 2};
  EXPECT_EQ(coord_of(m, 5), (GridCoord{.pp = 1, .dp = 0, .tp = 1}));
}

TEST(ProcessGrid, RejectsSizesThatDoNotMultiplyNamingEveryFactor) {
  try {
    validate_grid(GridShape{.pp = 2, .dp = 3, .tp = 2}, 8);
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("pp=2"), std::string::npos) << msg;
    EXPECT_NE(msg.find("dp=3"), std::string::npos) << msg;
    EXPECT_NE(msg.find("tp=2"), std::string::npos) << msg;
    EXPECT_NE(msg.find("world size 8"), std::string::npos) << msg;
  }
  EXPECT_THROW(validate_grid(GridShape{.pp = 0, .dp = 1, .tp = 1}, 0), InputError);
  EXPECT_NO_THROW(validate_grid(GridShape{.pp = 2, .dp = 2, .tp = 2}, 8));
}

TEST(ProcessGrid, SingleRankCollectivesAreIdentity) {
  const ProcessGrid g = ProcessGrid::single();
  EXPECT_EQ(g.world().size(), 1);
  float x[3] = {1, 2, 3}, y[3] = {};
  g.dp_comm().allreduce(x, 3, ReduceOp::kSum);
  g.dp_comm().allgather(x, y, 3);
  EXPECT_EQ(y[2], 3.0f);
  EXPECT_EQ(g.describe(), "rank 0 (pp 0, dp 0, tp 0)");
}

}  // namespace
}  // namespace loom
