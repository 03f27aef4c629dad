// PowerSGD across ranks: at full rank the reduction is the sum of every rank's gradient
// within round-off, on a gradient whose sum has low rank it is exact at a higher rank, and
// every rank ends with the same bits (the state it carries is the same too, but the error).
// Then every grad_compression in training, dp alone and with tp or pp: it trains, its
// losses stay finite and near the uncompressed run's, and a second run is bitwise the same.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "../train/test_util.h"
#include "comm/process_grid.h"
#include "mpi_test_main.h"
#include "train/trainer.h"
#include "numeric_util.h"
#include "parallel/compress.h"

namespace loom {
namespace {

using loom::test::relative_error;

std::vector<float> rank_values(size_t n, int rank) {
  std::mt19937 gen(1000 + uint32_t(rank));
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(gen);
  return v;
}

// Every rank's copy equals rank 0's, bit for bit.
void expect_same_on_every_rank(Comm& world, const std::vector<float>& mine) {
  std::vector<float> all(mine.size() * size_t(world.size()));
  world.allgather(mine.data(), all.data(), mine.size());
  for (int q = 1; q < world.size(); ++q)
    for (size_t i = 0; i < mine.size(); ++i)
      ASSERT_EQ(all[q * mine.size() + i], all[i]) << "rank " << q << " element " << i;
}

TEST(PowerSgdAcrossRanks, FullRankIsTheSumOfEveryRanksGradient) {
  auto world = test::mpi().world();
  const int n = 36, m = 20;
  std::vector<float> sum(size_t(n) * m, 0.0f);
  for (int q = 0; q < world->size(); ++q) {
    const std::vector<float> g = rank_values(sum.size(), q);
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += g[i];
  }
  PowerSgd psgd(m, 5);
  std::vector<float> M = rank_values(sum.size(), world->rank());
  psgd.reduce(*world, 0, M.data(), n, m);
  EXPECT_LT(relative_error(M, sum), 1e-5);
  expect_same_on_every_rank(*world, M);
}

TEST(PowerSgdAcrossRanks, ALowRankSumIsExactAtHigherRank) {
  auto world = test::mpi().world();
  const int n = 48, m = 30;
  // Rank q holds (q + 1) u v^T: the sum has rank 1.
  const std::vector<float> u = rank_values(n, 77), v = rank_values(m, 78);
  std::vector<float> M(size_t(n) * m), sum(M.size());
  const float total = float(world->size() * (world->size() + 1) / 2);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < m; ++j) {
      M[size_t(i) * m + j] = float(world->rank() + 1) * u[i] * v[j];
      sum[size_t(i) * m + j] = total * u[i] * v[j];
    }
  PowerSgd psgd(4, 5);
  psgd.reduce(*world, 3, M.data(), n, m);
  EXPECT_LT(relative_error(M, sum), 1e-5);
  expect_same_on_every_rank(*world, M);
  expect_same_on_every_rank(*world, psgd.state().at(3).q);
}

struct TrainedRun {
  std::vector<float> losses, weights;
};

TrainedRun train(const std::string& compression, const GridShape& shape) {
  RunConfig cfg = test::tiny_config(test::scratch_dir("compress"));
  cfg.parallel.dp = shape.dp;
  cfg.parallel.tp = shape.tp;
  cfg.parallel.pp = shape.pp;
  cfg.parallel.stage_layers = "";
  cfg.train.micro_batch = 4 / shape.dp;
  cfg.parallel.grad_compression = compression;
  cfg.parallel.powersgd_rank = 2;
  cfg.parallel.powersgd_start = 3;
  cfg.validate();
  const ProcessGrid grid = ProcessGrid::create(test::mpi().world(), shape);
  Trainer tr(cfg, grid);
  TrainedRun r;
  for (int s = 0; s < 10; ++s) r.losses.push_back(tr.train_step().loss);
  auto w = tr.model().weights();
  r.weights.assign(w.begin(), w.end());
  return r;
}

class CompressedTraining : public ::testing::TestWithParam<std::string> {};

TEST_P(CompressedTraining, TrainsNearTheUncompressedRunAndRepeatsBitwise) {
  const int n = test::mpi().world_size();
  std::vector<GridShape> shapes = {GridShape{.pp = 1, .dp = n, .tp = 1}};
  if (n == 4) {
    shapes.push_back(GridShape{.pp = 1, .dp = 2, .tp = 2});
    shapes.push_back(GridShape{.pp = 2, .dp = 2, .tp = 1});
  }
  for (const GridShape& shape : shapes) {
    SCOPED_TRACE(fmt::format("dp {} tp {} pp {}", shape.dp, shape.tp, shape.pp));
    const TrainedRun none = train("none", shape), a = train(GetParam(), shape),
              b = train(GetParam(), shape);
    for (size_t s = 0; s < none.losses.size(); ++s) {
      ASSERT_TRUE(std::isfinite(a.losses[s])) << "step " << s;
      EXPECT_NEAR(a.losses[s], none.losses[s], 0.02 * none.losses[s]) << "step " << s;
    }
    EXPECT_LT(a.losses.back(), a.losses.front());  // it learns
    EXPECT_FALSE(a.weights == none.weights) << "nothing was compressed";
    EXPECT_EQ(a.losses, b.losses);
    EXPECT_TRUE(a.weights == b.weights) << "a second run differs";
  }
}

INSTANTIATE_TEST_SUITE_P(Options, CompressedTraining,
                         ::testing::Values("bf16", "int8", "powersgd"));

}  // namespace
}  // namespace loom
