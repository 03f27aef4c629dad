// The math of compressed gradient reduction: int8 blocks within their bound, error feedback
// that delays what quantization loses instead of losing it, and PowerSGD exact where the
// gradient's rank allows (one process; tests/mpi checks the reduction across ranks).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "numeric_util.h"
#include "parallel/compress.h"

namespace {

using loom::test::relative_error;

std::vector<float> random_values(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(gen);
  return v;
}

TEST(Int8, EachValueIsWithinHalfItsBlocksStep) {
  std::vector<float> x = random_values(1000, 1, 3.0f);
  std::fill(x.begin() + 256, x.begin() + 512, 0.0f);  // an all-zero block
  x[700] = 1e6f;                                       // an outlier: its block's step grows
  std::vector<int8_t> q(x.size());
  std::vector<float> scales(loom::int8_blocks(x.size())), back(x.size());
  ASSERT_EQ(scales.size(), 4u);
  loom::quantize_int8(x.data(), x.size(), q.data(), scales.data());
  loom::dequantize_int8(q.data(), scales.data(), x.size(), back.data());
  EXPECT_EQ(scales[1], 0.0f);
  for (size_t i = 0; i < x.size(); ++i) {
    const float s = scales[i / loom::kInt8Block];
    EXPECT_LE(std::fabs(x[i] - back[i]), 0.5f * s * (1 + 1e-5f)) << i;
  }
  EXPECT_EQ(back[700], 1e6f);  // the block's maximum is exact
}

// Over K steps the updates applied (dequantized) sum to the gradients' sum minus the last
// residual, which stays within one step of the quantization: bounded, not growing.
TEST(Int8, ErrorFeedbackTracksTheUncompressedSum) {
  const size_t n = 777;
  std::vector<float> residual(n, 0.0f), applied(n, 0.0f), exact(n, 0.0f), back(n);
  std::vector<int8_t> q(n);
  std::vector<float> scales(loom::int8_blocks(n));
  float worst_early = 0, worst_late = 0;
  for (int k = 0; k < 200; ++k) {
    const std::vector<float> g = random_values(n, 100 + k);
    loom::quantize_int8_feedback(g.data(), residual.data(), n, q.data(), scales.data());
    loom::dequantize_int8(q.data(), scales.data(), n, back.data());
    float worst = 0;
    for (size_t i = 0; i < n; ++i) {
      applied[i] += back[i];
      exact[i] += g[i];
      EXPECT_NEAR(applied[i] + residual[i], exact[i], 1e-3f) << "step " << k << " value " << i;
      worst = std::max(worst, std::fabs(residual[i]));
    }
    (k < 20 ? worst_early : worst_late) = std::max(k < 20 ? worst_early : worst_late, worst);
  }
  // Normal(0, 1) values: a block's max is about 3, its step about 0.024, half of it 0.012.
  EXPECT_LT(worst_early, 0.05f);
  EXPECT_LT(worst_late, 0.05f);
}

TEST(PowerSgd, OrthogonalizeGivesOrthonormalColumns) {
  const int n = 30, r = 4;
  std::vector<float> P = random_values(size_t(n) * r, 7);
  loom::orthogonalize(P.data(), n, r);
  for (int a = 0; a < r; ++a)
    for (int b = 0; b < r; ++b) {
      double dot = 0;
      for (int i = 0; i < n; ++i) dot += double(P[i * r + a]) * P[i * r + b];
      EXPECT_NEAR(dot, a == b ? 1.0 : 0.0, 1e-5) << a << "," << b;
    }
}

TEST(PowerSgd, AtFullRankTheReductionIsExact) {
  const int n = 40, m = 24;
  auto dp = loom::make_single_comm("dp");
  loom::PowerSgd psgd(m, 42);
  const std::vector<float> g = random_values(size_t(n) * m, 3);
  std::vector<float> M = g;
  psgd.reduce(*dp, 0, M.data(), n, m);
  EXPECT_LT(relative_error(M, g), 1e-5);
  for (float e : psgd.state().at(0).error) EXPECT_LT(std::fabs(e), 1e-4f);
}

TEST(PowerSgd, ALowRankGradientIsExactAtHigherRank) {
  const int n = 64, m = 48, true_rank = 2;
  const std::vector<float> u = random_values(size_t(n) * true_rank, 4),
                           v = random_values(size_t(m) * true_rank, 5);
  std::vector<float> g(size_t(n) * m, 0.0f);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < m; ++j)
      for (int k = 0; k < true_rank; ++k) g[size_t(i) * m + j] += u[i * true_rank + k] * v[j * true_rank + k];
  auto dp = loom::make_single_comm("dp");
  loom::PowerSgd psgd(4, 42);
  std::vector<float> M = g;
  psgd.reduce(*dp, 7, M.data(), n, m);
  EXPECT_LT(relative_error(M, g), 1e-5);
}

// Rank 1 of a full-rank gradient loses most of it in one step; error feedback hands the
// loss to the next steps, so the applied updates of the same gradient K times approach
// K times it: what is missing is the last error, bounded, not growing with K.
TEST(PowerSgd, ErrorFeedbackCarriesWhatTheApproximationLeftOut) {
  const int n = 20, m = 12;
  auto dp = loom::make_single_comm("dp");
  loom::PowerSgd psgd(1, 9);
  const std::vector<float> g = random_values(size_t(n) * m, 11);
  std::vector<float> applied(g.size(), 0.0f), exact(g.size(), 0.0f);
  std::vector<double> missing, relative;
  for (int k = 0; k < 60; ++k) {
    std::vector<float> M = g;
    psgd.reduce(*dp, 0, M.data(), n, m);
    for (size_t i = 0; i < g.size(); ++i) {
      applied[i] += M[i];
      exact[i] += g[i];
    }
    relative.push_back(relative_error(applied, exact));
    missing.push_back(relative.back() * (k + 1));  // the error, in units of |g|
  }
  EXPECT_LT(relative[59], 0.5 * relative[19]);  // closing in as 1/K
  EXPECT_LT(relative[59], 0.15);
  EXPECT_LT(missing[59], 2 * missing[19]);       // the carried error does not grow
}

}  // namespace
