// LayerNorm forward/backward against the naive reference and finite differences.
#include "kernel_test_util.h"
#include "kernels/kernels.h"
#include "kernels/ref/kernels_ref.h"

namespace loom::kernels {
namespace {

using namespace testing;

struct LnSizes {
  int N, C;
};
// C = 24 and 37 exercise the lane tails; 768 is GPT-2's width.
constexpr LnSizes kSizes[] = {{13, 24}, {7, 37}, {5, 768}};

// Rows with different offsets and scales, so mean and rstd matter.
std::vector<float> ln_input(int N, int C, uint64_t seed) {
  auto x = random_vec(size_t(N) * C, seed);
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c) x[size_t(n) * C + c] = x[size_t(n) * C + c] * (1.0f + n) + 0.3f * n;
  return x;
}

TEST(LayerNorm, ForwardMatchesReference) {
  for (const auto& s : kSizes) {
    auto inp = ln_input(s.N, s.C, 1);
    auto w = random_vec(s.C, 2, 0.5f, 1.5f), b = random_vec(s.C, 3);
    std::vector<double> want(size_t(s.N) * s.C), want_mean(s.N), want_rstd(s.N);
    auto inp_d = to_double(inp), w_d = to_double(w), b_d = to_double(b);
    ref::layernorm_forward(want.data(), want_mean.data(), want_rstd.data(), inp_d.data(),
                           w_d.data(), b_d.data(), s.N, s.C);
    std::vector<float> first;
    for (int threads : kThreadCounts) {
      ScopedThreads scoped(threads);
      Guarded out(size_t(s.N) * s.C, std::nanf("")), mean(s.N, std::nanf("")),
          rstd(s.N, std::nanf(""));
      layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), w.data(), b.data(), s.N,
                        s.C);
      EXPECT_LT(max_norm_err(out, want), kTol) << "C=" << s.C << " threads=" << threads;
      EXPECT_LT(max_norm_err(mean, want_mean), kTol);
      EXPECT_LT(max_norm_err(rstd, want_rstd), kTol);
      if (first.empty()) first = out.values();
      EXPECT_TRUE(bitwise_equal(first, out.values())) << "thread-count dependent output";
    }
  }
}

TEST(LayerNorm, BackwardAccumulatesLikeReference) {
  for (const auto& s : kSizes) {
    const size_t NC = size_t(s.N) * s.C;
    auto inp = ln_input(s.N, s.C, 4);
    auto w = random_vec(s.C, 5, 0.5f, 1.5f), b = random_vec(s.C, 6), dout = random_vec(NC, 7);
    std::vector<float> out(NC), mean(s.N), rstd(s.N);
    layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), w.data(), b.data(), s.N,
                      s.C);
    // Prefilled gradients: all three outputs accumulate.
    auto dinp0 = random_vec(NC, 8), dw0 = random_vec(s.C, 9), db0 = random_vec(s.C, 10);
    auto want_dinp = to_double(dinp0), want_dw = to_double(dw0), want_db = to_double(db0);
    auto dout_d = to_double(dout), inp_d = to_double(inp), w_d = to_double(w);
    auto mean_d = to_double(mean), rstd_d = to_double(rstd);
    ref::layernorm_backward(want_dinp.data(), want_dw.data(), want_db.data(), dout_d.data(),
                            inp_d.data(), w_d.data(), mean_d.data(), rstd_d.data(), s.N, s.C);
    std::vector<float> first_dw;
    for (int threads : kThreadCounts) {
      ScopedThreads scoped(threads);
      Guarded dinp(dinp0), dw(dw0), db(db0);
      layernorm_backward(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(), w.data(),
                         mean.data(), rstd.data(), s.N, s.C);
      EXPECT_LT(max_norm_err(dinp, want_dinp), kTol) << "C=" << s.C << " threads=" << threads;
      EXPECT_LT(max_norm_err(dw, want_dw), kTol);
      EXPECT_LT(max_norm_err(db, want_db), kTol);
      if (first_dw.empty()) first_dw = dw.values();
      EXPECT_TRUE(bitwise_equal(first_dw, dw.values())) << "thread-count dependent dweight";
    }
  }
}

TEST(LayerNorm, GradientsMatchFiniteDifferences) {
  const int N = 5, C = 11;
  auto inp = to_double(ln_input(N, C, 11));
  auto w = to_double(random_vec(C, 12, 0.5f, 1.5f)), b = to_double(random_vec(C, 13));
  auto R = random_vec(size_t(N) * C, 14);
  auto Rd = to_double(R);
  std::vector<double> out(size_t(N) * C), mean(N), rstd(N);
  auto loss = [&] {
    ref::layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), w.data(), b.data(), N,
                           C);
    return dot(out, Rd);
  };
  auto num_inp = numeric_grad(inp, loss), num_w = numeric_grad(w, loss),
       num_b = numeric_grad(b, loss);
  // The double reference backward agrees with the finite differences...
  loss();
  std::vector<double> dinp(size_t(N) * C), dw(C), db(C);
  ref::layernorm_backward(dinp.data(), dw.data(), db.data(), Rd.data(), inp.data(), w.data(),
                          mean.data(), rstd.data(), N, C);
  EXPECT_LT(max_norm_err(dinp, num_inp), kFdTol);
  EXPECT_LT(max_norm_err(dw, num_w), kFdTol);
  EXPECT_LT(max_norm_err(db, num_b), kFdTol);
  // ...and so does the fp32 kernel.
  std::vector<float> inp_f(inp.begin(), inp.end()), w_f(w.begin(), w.end()),
      b_f(b.begin(), b.end()), out_f(out.size()), mean_f(N), rstd_f(N);
  layernorm_forward(out_f.data(), mean_f.data(), rstd_f.data(), inp_f.data(), w_f.data(),
                    b_f.data(), N, C);
  std::vector<float> dinp_f(out.size(), 0.0f), dw_f(C, 0.0f), db_f(C, 0.0f);
  layernorm_backward(dinp_f.data(), dw_f.data(), db_f.data(), R.data(), inp_f.data(), w_f.data(),
                     mean_f.data(), rstd_f.data(), N, C);
  EXPECT_LT(max_norm_err(dinp_f, num_inp), kTol);
  EXPECT_LT(max_norm_err(dw_f, num_w), kTol);
  EXPECT_LT(max_norm_err(db_f, num_b), kTol);
}

}  // namespace
}  // namespace loom::kernels
