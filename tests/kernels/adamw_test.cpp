// AdamW against a double-precision evaluation of the formula, and bit for bit against an
// fp32 emulation of PyTorch 1.13's operation order.
#include "core/check.h"
#include "kernel_test_util.h"
#include "kernels/kernels.h"
#include "kernels/ref/kernels_ref.h"

namespace loom::kernels {
namespace {

using namespace testing;

// Hyperparameters as a config (and Python) spells them.
struct Hyper {
  double lr, beta1, beta2, eps, wd, grad_scale;
};
constexpr Hyper kGpt2{6e-4, 0.9, 0.95, 1e-8, 0.1, 1.0};
constexpr Hyper kScaled{1e-3, 0.8, 0.999, 1e-6, 0.0, 0.5};
constexpr size_t kN = 2 * 4096 + 21;  // two blocks and a ragged tail
constexpr int kSteps = 5;

struct State {
  std::vector<float> p, m, v;
};

State initial_state(uint64_t seed) {
  return {random_vec(kN, seed, -0.1f, 0.1f), std::vector<float>(kN, 0.0f),
          std::vector<float>(kN, 0.0f)};
}

std::vector<float> grads_for_step(int t) {
  auto g = random_vec(kN, 100 + t, -0.02f, 0.02f);
  g[3] = 0.0f;  // a zero gradient: the update is then decay only
  return g;
}

void run_kernel(State& s, const Hyper& h, int steps) {
  for (int t = 1; t <= steps; ++t) {
    auto g = grads_for_step(t);
    adamw_update(s.p.data(), g.data(), s.m.data(), s.v.data(), kN, float(h.lr), float(h.beta1),
                 float(h.beta2), float(h.eps), float(h.wd), t, float(h.grad_scale));
  }
}

TEST(AdamW, MatchesDoublePrecisionFormula) {
  for (const Hyper& h : {kGpt2, kScaled}) {
    State s = initial_state(1);
    std::vector<double> p = to_double(s.p), m(kN, 0.0), v(kN, 0.0);
    for (int t = 1; t <= kSteps; ++t) {
      auto g = to_double(grads_for_step(t));
      ref::adamw(p.data(), g.data(), m.data(), v.data(), kN, h.lr, h.beta1, h.beta2, h.eps, h.wd, t,
                 h.grad_scale);
    }
    run_kernel(s, h, kSteps);
    // Parameters move by ~lr per step: compare the change against the reference change.
    State s0 = initial_state(1);
    std::vector<double> got_delta(kN), want_delta(kN);
    for (size_t i = 0; i < kN; ++i)
      got_delta[i] = double(s.p[i]) - s0.p[i], want_delta[i] = p[i] - s0.p[i];
    double scale_delta = 0.0;
    for (double d : want_delta) scale_delta = std::max(scale_delta, std::abs(d));
    for (auto* vec : {&got_delta, &want_delta})
      for (double& d : *vec) d /= scale_delta;
    EXPECT_LT(max_norm_err(got_delta, want_delta), 1e-4) << "lr=" << h.lr;
    EXPECT_LT(max_norm_err(s.p, p), 1e-6);
    // The moments are small: compare relative to their own scale.
    double mmax = 0.0, vmax = 0.0, merr = 0.0, verr = 0.0;
    for (size_t i = 0; i < kN; ++i) {
      mmax = std::max(mmax, std::abs(m[i])), vmax = std::max(vmax, std::abs(v[i]));
      merr = std::max(merr, std::abs(s.m[i] - m[i])),
      verr = std::max(verr, std::abs(s.v[i] - v[i]));
    }
    EXPECT_LT(merr / mmax, kTol);
    EXPECT_LT(verr / vmax, kTol);
  }
}

// Each torch op rounds to fp32 once; `add_(alpha=)` and `addcmul_` are fused multiply-adds
// in torch's AVX2 kernels. Products and quotients of two floats computed in double and
// rounded once to float are the correctly rounded fp32 results.
float f32(double x) { return static_cast<float>(x); }

void torch_order_step(State& s, const std::vector<float>& g, const Hyper& h, int t) {
  const float decay = f32(1.0 - h.lr * h.wd);
  const float one_minus_b1 = f32(1.0 - h.beta1), one_minus_b2 = f32(1.0 - h.beta2);
  const float b1 = f32(h.beta1), b2 = f32(h.beta2), eps = f32(h.eps);
  const double bc1 = 1.0 - std::pow(h.beta1, double(t)), bc2 = 1.0 - std::pow(h.beta2, double(t));
  const float neg_step = f32(-(h.lr / bc1)), bc2_sqrt = f32(std::sqrt(bc2));
  for (size_t i = 0; i < kN; ++i) {
    const float gi = f32(double(g[i]) * f32(h.grad_scale));
    const float p = f32(double(s.p[i]) * decay);                           // param.mul_
    const float m = std::fma(gi, one_minus_b1, f32(double(s.m[i]) * b1));  // mul_, add_
    const float gb = f32(double(gi) * one_minus_b2);
    const float v = std::fma(gb, gi, f32(double(s.v[i]) * b2));  // mul_, addcmul_
    const float denom = f32(double(f32(double(std::sqrt(v)) / bc2_sqrt)) + eps);
    const float upd = f32(double(f32(double(neg_step) * m)) / denom);
    s.p[i] = f32(double(p) + upd);  // addcdiv_
    s.m[i] = m;
    s.v[i] = v;
  }
}

TEST(AdamW, MatchesTorchOperationOrderBitwise) {
  for (const Hyper& h : {kGpt2, kScaled})
    for (int threads : kThreadCounts) {
      ScopedThreads scoped(threads);
      State want = initial_state(2), got = initial_state(2);
      for (int t = 1; t <= kSteps; ++t) torch_order_step(want, grads_for_step(t), h, t);
      run_kernel(got, h, kSteps);
      EXPECT_TRUE(bitwise_equal(got.p, want.p)) << "lr=" << h.lr << " threads=" << threads;
      EXPECT_TRUE(bitwise_equal(got.m, want.m));
      EXPECT_TRUE(bitwise_equal(got.v, want.v));
    }
}

TEST(AdamW, RejectsStepZero) {
  State s = initial_state(3);
  auto g = grads_for_step(1);
  EXPECT_THROW(adamw_update(s.p.data(), g.data(), s.m.data(), s.v.data(), kN, 1e-3f, 0.9f, 0.95f,
                            1e-8f, 0.1f, 0, 1.0f),
               Error);
}

}  // namespace
}  // namespace loom::kernels
