// GELU, residual, scale and sum of squares.
#include "kernel_test_util.h"
#include "kernels/kernels.h"
#include "kernels/ref/kernels_ref.h"

namespace loom::kernels {
namespace {

using namespace testing;

// More than two 4096-element blocks plus a ragged tail; values over [-12, 12] reach both
// saturated ends of GELU, plus exact zeros.
std::vector<float> gelu_input(size_t n, uint64_t seed) {
  auto x = random_vec(n, seed, -12.0f, 12.0f);
  for (size_t i = 0; i < n; i += 97) x[i] = 0.0f;
  for (size_t i = 1; i < n; i += 89) x[i] *= 0.01f;  // near zero
  return x;
}
constexpr size_t kN = 2 * 4096 + 13;

TEST(Gelu, ForwardMatchesTanhFormula) {
  auto x = gelu_input(kN, 1);
  std::vector<double> want(kN);
  double max_rel = 0.0;
  for (size_t i = 0; i < kN; ++i) want[i] = ref::gelu<double>(x[i]);
  std::vector<float> first;
  for (int threads : kThreadCounts) {
    ScopedThreads scoped(threads);
    Guarded out(kN, std::nanf(""));
    gelu_forward(out.data(), x.data(), kN);
    EXPECT_LT(max_norm_err(out, want), kTol);
    for (size_t i = 0; i < kN; ++i)
      if (std::abs(want[i]) > 1e-3)
        max_rel = std::max(max_rel, std::abs(out[i] - want[i]) / std::abs(want[i]));
    if (first.empty()) first = out.values();
    EXPECT_TRUE(bitwise_equal(first, out.values())) << "threads=" << threads;
  }
  EXPECT_LT(max_rel, 1e-6);  // a few ulp, relative
}

TEST(Gelu, ForwardWorksInPlace) {
  auto x = gelu_input(1000, 2);
  std::vector<float> want(x.size());
  gelu_forward(want.data(), x.data(), x.size());
  gelu_forward(x.data(), x.data(), x.size());
  EXPECT_TRUE(bitwise_equal(x, want));
}

TEST(Gelu, BackwardMatchesReferenceAndOverwrites) {
  auto x = gelu_input(kN, 3), dout = random_vec(kN, 4);
  std::vector<double> want(kN);
  for (size_t i = 0; i < kN; ++i) want[i] = ref::gelu_grad<double>(x[i]) * dout[i];
  for (int threads : kThreadCounts) {
    ScopedThreads scoped(threads);
    Guarded dinp(kN, std::nanf(""));
    gelu_backward(dinp.data(), x.data(), dout.data(), kN);
    EXPECT_LT(max_norm_err(dinp, want), kTol) << "threads=" << threads;
  }
}

TEST(Gelu, GradientMatchesFiniteDifferences) {
  auto x = to_double(gelu_input(301, 5));
  std::vector<float> R = random_vec(x.size(), 6);
  auto Rd = to_double(R);
  auto loss = [&] {
    double s = 0.0;
    for (size_t i = 0; i < x.size(); ++i) s += ref::gelu<double>(x[i]) * Rd[i];
    return s;
  };
  auto num = numeric_grad(x, loss);
  std::vector<double> analytic(x.size());
  for (size_t i = 0; i < x.size(); ++i) analytic[i] = ref::gelu_grad<double>(x[i]) * Rd[i];
  EXPECT_LT(max_norm_err(analytic, num), kFdTol);
  std::vector<float> xf(x.begin(), x.end()), dinp(x.size());
  gelu_backward(dinp.data(), xf.data(), R.data(), x.size());
  EXPECT_LT(max_norm_err(dinp, num), kTol);
}

TEST(Residual, AddsExactly) {
  auto a = random_vec(kN, 7), b = random_vec(kN, 8);
  for (int threads : kThreadCounts) {
    ScopedThreads scoped(threads);
    Guarded out(kN, std::nanf(""));
    residual_forward(out.data(), a.data(), b.data(), kN);
    EXPECT_TRUE(out.guards_intact());
    for (size_t i = 0; i < kN; ++i) ASSERT_EQ(out[i], a[i] + b[i]) << i;
  }
}

TEST(Scale, MultipliesInPlaceExactly) {
  auto x = random_vec(kN, 9);
  Guarded y(x);
  scale(y.data(), kN, -0.37f);
  EXPECT_TRUE(y.guards_intact());
  for (size_t i = 0; i < kN; ++i) ASSERT_EQ(y[i], x[i] * -0.37f) << i;
}

TEST(SumSquares, MatchesDoubleAndIgnoresThreadCount) {
  const size_t n = 5 * 4096 + 77;
  auto x = random_vec(n, 10, -3.0f, 3.0f);
  long double want = 0.0L;
  for (float v : x) want += static_cast<long double>(v) * v;
  double first = -1.0;
  for (int threads : kThreadCounts) {
    ScopedThreads scoped(threads);
    double got = sum_squares(x.data(), n);
    EXPECT_NEAR(got, double(want), 1e-12 * double(want));
    if (first < 0) first = got;
    EXPECT_EQ(std::bit_cast<uint64_t>(first), std::bit_cast<uint64_t>(got))
        << "threads=" << threads;
  }
  EXPECT_EQ(sum_squares(x.data(), 0), 0.0);
}

}  // namespace
}  // namespace loom::kernels
