// PowerSGD across ranks: at full rank the reduction is the sum of every rank's gradient
// within round-off, on a gradient whose sum has low rank it is exact at a higher rank, and
// every rank ends with the same bits (the state it carries is the same too, but the error).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "mpi_test_main.h"
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

}  // namespace
}  // namespace loom
