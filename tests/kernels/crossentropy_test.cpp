// Softmax cross-entropy over padded logits, forward and fused forward+backward.
#include "core/check.h"
#include "kernel_test_util.h"
#include "kernels/kernels.h"
#include "kernels/ref/kernels_ref.h"

namespace loom::kernels {
namespace {

using namespace testing;

struct CeSizes {
  int N, V, Vp;
};
constexpr CeSizes kSizes[] = {{13, 50, 64}, {5, 37, 37}, {3, 50257, 50304}};

// Logits with garbage (NaN, huge) in the padding columns, which must be ignored.
std::vector<float> ce_logits(const CeSizes& s, uint64_t seed) {
  auto x = random_vec(size_t(s.N) * s.Vp, seed, -4.0f, 4.0f);
  for (int n = 0; n < s.N; ++n)
    for (int v = s.V; v < s.Vp; ++v) x[size_t(n) * s.Vp + v] = (v % 2) ? std::nanf("") : 1e30f;
  return x;
}

TEST(CrossEntropy, ForwardMatchesReference) {
  for (const auto& s : kSizes) {
    auto logits = ce_logits(s, 1);
    auto targets = random_tokens(s.N, s.V, 2);
    auto logits_d = to_double(logits);
    std::vector<double> want(s.N);
    ref::crossentropy<double>(want.data(), nullptr, logits_d.data(), targets.data(), s.N, s.V, s.Vp,
                              0.0);
    for (int threads : kThreadCounts) {
      ScopedThreads scoped(threads);
      Guarded losses(s.N, std::nanf(""));
      crossentropy_forward(losses.data(), logits.data(), targets.data(), s.N, s.V, s.Vp);
      EXPECT_LT(max_norm_err(losses, want), kTol) << "V=" << s.V << " threads=" << threads;
    }
  }
}

TEST(CrossEntropy, FusedMatchesReferenceAndZeroesPadding) {
  for (const auto& s : kSizes) {
    auto logits = ce_logits(s, 3);
    auto targets = random_tokens(s.N, s.V, 4);
    const float dloss = 1.0f / (s.N * 3);
    auto logits_d = to_double(logits);
    std::vector<double> want_loss(s.N), want_grad(logits.size());
    ref::crossentropy<double>(want_loss.data(), want_grad.data(), logits_d.data(), targets.data(),
                              s.N, s.V, s.Vp, dloss);
    std::vector<float> fwd_losses(s.N);
    crossentropy_forward(fwd_losses.data(), logits.data(), targets.data(), s.N, s.V, s.Vp);
    for (int threads : kThreadCounts) {
      ScopedThreads scoped(threads);
      Guarded losses(s.N, std::nanf("")), grad(logits);
      crossentropy_fused(losses.data(), grad.data(), targets.data(), s.N, s.V, s.Vp, dloss);
      EXPECT_LT(max_norm_err(losses, want_loss), kTol) << "V=" << s.V;
      // Gradients are O(dloss): normalise by dloss so the tolerance means something.
      std::vector<double> g(grad.size()), w(grad.size());
      for (size_t i = 0; i < g.size(); ++i) g[i] = grad[i] / dloss, w[i] = want_grad[i] / dloss;
      EXPECT_LT(max_norm_err(g, w), kTol);
      EXPECT_TRUE(grad.guards_intact());
      for (int n = 0; n < s.N; ++n)
        for (int v = s.V; v < s.Vp; ++v)
          ASSERT_EQ(std::bit_cast<uint32_t>(grad[size_t(n) * s.Vp + v]), 0u) << n << " " << v;
      // The fused kernel's losses are the forward kernel's, bit for bit.
      EXPECT_TRUE(bitwise_equal(losses.values(), fwd_losses));
    }
  }
}

TEST(CrossEntropy, GradientMatchesFiniteDifferences) {
  const CeSizes s{4, 9, 16};
  auto logits = ce_logits(s, 5);
  for (int n = 0; n < s.N; ++n)  // finite padding: the numeric gradient sees all columns
    for (int v = s.V; v < s.Vp; ++v) logits[size_t(n) * s.Vp + v] = 0.5f;
  auto targets = random_tokens(s.N, s.V, 6);
  const double dloss = 0.25;
  auto x = to_double(logits);
  std::vector<double> losses(s.N);
  auto loss = [&] {
    ref::crossentropy<double>(losses.data(), nullptr, x.data(), targets.data(), s.N, s.V, s.Vp,
                              0.0);
    double total = 0.0;
    for (double l : losses) total += l * dloss;
    return total;
  };
  auto num = numeric_grad(x, loss);
  std::vector<float> losses_f(s.N);
  crossentropy_fused(losses_f.data(), logits.data(), targets.data(), s.N, s.V, s.Vp,
                     static_cast<float>(dloss));
  EXPECT_LT(max_norm_err(logits, num), kTol);
}

TEST(CrossEntropy, RejectsTargetsOutsideVocab) {
  std::vector<float> logits(2 * 8, 0.0f), losses(2);
  std::vector<int32_t> targets = {3, 6};
  EXPECT_THROW(crossentropy_forward(losses.data(), logits.data(), targets.data(), 2, 6, 8), Error);
  EXPECT_THROW(crossentropy_fused(losses.data(), logits.data(), targets.data(), 2, 6, 8, 1.0f),
               Error);
}

}  // namespace
}  // namespace loom::kernels
