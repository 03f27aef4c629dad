// Token + position embedding against the naive reference and finite differences.
#include "kernel_test_util.h"
#include "kernels/kernels.h"
#include "kernels/ref/kernels_ref.h"

namespace loom::kernels {
namespace {

using namespace testing;

struct EncoderSizes {
  int B, T, C, Vp, maxT;
};
// A tiny vocabulary, so tokens repeat and dwte rows collect several contributions.
constexpr EncoderSizes kSizes[] = {{2, 7, 24, 5, 9}, {3, 13, 70, 11, 16}};

TEST(Encoder, ForwardMatchesReference) {
  for (const auto& s : kSizes)
    for (int threads : kThreadCounts) {
      ScopedThreads scoped(threads);
      const size_t N = size_t(s.B) * s.T;
      auto wte = random_vec(size_t(s.Vp) * s.C, 1), wpe = random_vec(size_t(s.maxT) * s.C, 2);
      auto inp = random_tokens(N, s.Vp, 3);
      Guarded out(N * s.C, std::nanf(""));
      encoder_forward(out.data(), inp.data(), wte.data(), wpe.data(), s.B, s.T, s.C);
      std::vector<float> want(N * s.C);
      ref::encoder_forward(want.data(), inp.data(), wte.data(), wpe.data(), s.B, s.T, s.C);
      EXPECT_TRUE(out.guards_intact());
      EXPECT_TRUE(bitwise_equal(out.values(), want)) << "threads=" << threads;  // one add each
    }
}

TEST(Encoder, BackwardAccumulatesLikeReference) {
  for (const auto& s : kSizes) {
    const size_t N = size_t(s.B) * s.T;
    auto dout = random_vec(N * s.C, 4);
    auto inp = random_tokens(N, s.Vp, 5);
    auto dwte0 = random_vec(size_t(s.Vp) * s.C, 6), dwpe0 = random_vec(size_t(s.maxT) * s.C, 7);
    std::vector<double> want_wte = to_double(dwte0), want_wpe = to_double(dwpe0);
    auto dout_d = to_double(dout);
    ref::encoder_backward(want_wte.data(), want_wpe.data(), dout_d.data(), inp.data(), s.B, s.T,
                          s.C);
    std::vector<float> first;
    for (int threads : kThreadCounts) {
      ScopedThreads scoped(threads);
      Guarded dwte(dwte0), dwpe(dwpe0);
      encoder_backward(dwte.data(), dwpe.data(), dout.data(), inp.data(), s.B, s.T, s.C);
      EXPECT_LT(max_norm_err(dwte, want_wte), kTol);
      EXPECT_LT(max_norm_err(dwpe, want_wpe), kTol);
      // Summation order is per channel over (b,t): independent of the thread count.
      if (first.empty()) first = dwte.values();
      EXPECT_TRUE(bitwise_equal(first, dwte.values())) << "threads=" << threads;
    }
  }
}

TEST(Encoder, GradientsMatchFiniteDifferences) {
  const EncoderSizes s = kSizes[0];
  const size_t N = size_t(s.B) * s.T;
  auto inp = random_tokens(N, s.Vp, 8);
  auto wte = to_double(random_vec(size_t(s.Vp) * s.C, 9));
  auto wpe = to_double(random_vec(size_t(s.maxT) * s.C, 10));
  auto R = random_vec(N * s.C, 11);
  auto Rd = to_double(R);
  std::vector<double> out(N * s.C);
  auto loss = [&] {
    ref::encoder_forward(out.data(), inp.data(), wte.data(), wpe.data(), s.B, s.T, s.C);
    return dot(out, Rd);
  };
  auto num_wte = numeric_grad(wte, loss), num_wpe = numeric_grad(wpe, loss);
  std::vector<float> dwte(wte.size(), 0.0f), dwpe(wpe.size(), 0.0f);
  encoder_backward(dwte.data(), dwpe.data(), R.data(), inp.data(), s.B, s.T, s.C);
  EXPECT_LT(max_norm_err(dwte, num_wte), kTol);
  EXPECT_LT(max_norm_err(dwpe, num_wpe), kTol);
}

}  // namespace
}  // namespace loom::kernels
