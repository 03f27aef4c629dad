// Linear layer forward/backward against the naive reference and finite differences, on
// both GEMM backends.
#include "kernel_test_util.h"
#include "kernels/kernels.h"
#include "kernels/ref/kernels_ref.h"

namespace loom::kernels {
namespace {

using namespace testing;

struct MatmulSizes {
  int N, C, OC;
};
constexpr MatmulSizes kSizes[] = {{13, 24, 40}, {7, 37, 72}, {130, 64, 193}};

// Runs f once per (backend, thread count), restoring the default backend afterwards.
template <class F>
void for_each_config(F f) {
  for (GemmBackend backend : {GemmBackend::kOneDnn, GemmBackend::kOpenBlas})
    for (int threads : kThreadCounts) {
      set_default_gemm_backend(backend);
      ScopedThreads scoped(threads);
      SCOPED_TRACE(std::string(gemm_backend_name(backend)) + " threads=" + std::to_string(threads));
      f();
    }
  set_default_gemm_backend(GemmBackend::kOneDnn);
}

TEST(Matmul, ForwardMatchesReference) {
  for (const auto& s : kSizes)
    for (bool with_bias : {true, false}) {
      auto inp = random_vec(size_t(s.N) * s.C, 1), w = random_vec(size_t(s.OC) * s.C, 2),
           bias = random_vec(s.OC, 3);
      auto inp_d = to_double(inp), w_d = to_double(w), bias_d = to_double(bias);
      std::vector<double> want(size_t(s.N) * s.OC);
      ref::matmul_forward(want.data(), inp_d.data(), w_d.data(),
                          with_bias ? bias_d.data() : nullptr, s.N, s.C, s.OC);
      for_each_config([&] {
        Guarded out(want.size(), std::nanf(""));
        matmul_forward(out.data(), inp.data(), w.data(), with_bias ? bias.data() : nullptr, s.N,
                       s.C, s.OC);
        EXPECT_LT(max_norm_err(out, want), kTol) << "bias=" << with_bias;
        std::vector<float> again(want.size());
        matmul_forward(again.data(), inp.data(), w.data(), with_bias ? bias.data() : nullptr, s.N,
                       s.C, s.OC);
        EXPECT_TRUE(bitwise_equal(out.values(), again));
      });
    }
}

TEST(Matmul, BackwardOverwritesDinpAndAccumulatesParams) {
  for (const auto& s : kSizes) {
    const size_t NC = size_t(s.N) * s.C, OCC = size_t(s.OC) * s.C;
    auto inp = random_vec(NC, 4), w = random_vec(OCC, 5), dout = random_vec(size_t(s.N) * s.OC, 6);
    auto dw0 = random_vec(OCC, 7), db0 = random_vec(s.OC, 8);
    std::vector<double> want_dinp(NC), want_dw = to_double(dw0), want_db = to_double(db0);
    auto inp_d = to_double(inp), w_d = to_double(w), dout_d = to_double(dout);
    ref::matmul_backward(want_dinp.data(), want_dw.data(), want_db.data(), dout_d.data(),
                         inp_d.data(), w_d.data(), s.N, s.C, s.OC);
    for_each_config([&] {
      Guarded dinp(NC, std::nanf("")), dw(dw0), db(db0);
      matmul_backward(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(), w.data(), s.N,
                      s.C, s.OC);
      EXPECT_LT(max_norm_err(dinp, want_dinp), kTol);
      EXPECT_LT(max_norm_err(dw, want_dw), kTol);
      EXPECT_LT(max_norm_err(db, want_db), kTol);
      // Null dinp and dbias are skipped; dweight still accumulates.
      Guarded dw2(dw0);
      matmul_backward(nullptr, dw2.data(), nullptr, dout.data(), inp.data(), w.data(), s.N, s.C,
                      s.OC);
      EXPECT_TRUE(bitwise_equal(dw.values(), dw2.values()));
    });
  }
}

TEST(Matmul, DbiasIsIndependentOfThreadCount) {
  const MatmulSizes s = kSizes[2];
  auto inp = random_vec(size_t(s.N) * s.C, 9), w = random_vec(size_t(s.OC) * s.C, 10);
  auto dout = random_vec(size_t(s.N) * s.OC, 11);
  std::vector<float> first;
  for (int threads : kThreadCounts) {
    ScopedThreads scoped(threads);
    std::vector<float> dw(size_t(s.OC) * s.C, 0.0f), db(s.OC, 0.0f);
    matmul_backward(nullptr, dw.data(), db.data(), dout.data(), inp.data(), w.data(), s.N, s.C,
                    s.OC);
    if (first.empty()) first = db;
    EXPECT_TRUE(bitwise_equal(first, db)) << "threads=" << threads;
  }
}

TEST(Matmul, GradientsMatchFiniteDifferences) {
  const int N = 5, C = 7, OC = 6;
  auto inp = to_double(random_vec(size_t(N) * C, 12)),
       w = to_double(random_vec(size_t(OC) * C, 13));
  auto bias = to_double(random_vec(OC, 14));
  auto R = random_vec(size_t(N) * OC, 15);
  auto Rd = to_double(R);
  std::vector<double> out(size_t(N) * OC);
  auto loss = [&] {
    ref::matmul_forward(out.data(), inp.data(), w.data(), bias.data(), N, C, OC);
    return dot(out, Rd);
  };
  auto num_inp = numeric_grad(inp, loss), num_w = numeric_grad(w, loss),
       num_b = numeric_grad(bias, loss);
  std::vector<float> inp_f(inp.begin(), inp.end()), w_f(w.begin(), w.end());
  std::vector<float> dinp(inp.size()), dw(w.size(), 0.0f), db(OC, 0.0f);
  matmul_backward(dinp.data(), dw.data(), db.data(), R.data(), inp_f.data(), w_f.data(), N, C, OC);
  EXPECT_LT(max_norm_err(dinp, num_inp), kTol);
  EXPECT_LT(max_norm_err(dw, num_w), kTol);
  EXPECT_LT(max_norm_err(db, num_b), kTol);
}

}  // namespace
}  // namespace loom::kernels
