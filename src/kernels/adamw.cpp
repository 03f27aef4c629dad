// AdamW with PyTorch 1.13's operation order (torch.optim.adamw._single_tensor_adamw):
//
//   param.mul_(1 - lr * weight_decay)
//   exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)            # m*b1, then fma
//   exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2) # v*b2, then fma
//   bias_correction1 = 1 - beta1 ** step                        # Python floats (double)
//   bias_correction2 = 1 - beta2 ** step
//   step_size = lr / bias_correction1
//   denom = (exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(eps)
//   param.addcdiv_(exp_avg, denom, value=-step_size)
//
// The scalars are Python doubles there, rounded to float where they meet an fp32 tensor;
// here they are computed in double and rounded once, the same way. torch's AVX2 kernels
// fuse `add_(x, alpha=a)` and `addcmul_` into fused multiply-adds, and so does this
// (fmadd8), so the update agrees with torch's bit for bit when the hyperparameters match.
#include <charconv>
#include <cmath>

#include "core/check.h"
#include "kernels/internal.h"
#include "kernels/kernels.h"

namespace loom::kernels {
namespace {

using detail::f32x8;

constexpr size_t kBlock = 4096;

// The double that the float's shortest decimal spelling denotes: 0.9f -> 0.9, not
// 0.899999976. Hyperparameters come from a config as decimals, and torch sees them as
// the Python doubles of those decimals, so this recovers torch's scalars exactly.
double decimal_double(float x) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, x);
  LOOM_CHECK(ec == std::errc(), "adamw: cannot format {}", x);
  double d = 0.0;
  auto res = std::from_chars(buf, end, d);
  LOOM_CHECK(res.ec == std::errc(), "adamw: cannot parse {}", std::string(buf, end));
  return d;
}

struct AdamScalars {
  float decay;  // 1 - lr * wd
  float beta1, beta2;
  float one_minus_beta1, one_minus_beta2;
  float bc2_sqrt;       // sqrt(1 - beta2^t)
  float neg_step_size;  // -lr / (1 - beta1^t)
  float eps;
  float grad_scale;
};

// One group of eight elements; arguments and results by reference to the arrays.
inline void adamw8(float* p, const float* g, float* m, float* v, const AdamScalars& s) {
  f32x8 gi = detail::load8(g) * s.grad_scale;
  f32x8 pi = detail::load8(p) * s.decay;
  detail::keep_rounded(pi);  // torch rounds p * decay before the addcdiv
  f32x8 mi = detail::fmadd8(gi, f32x8{} + s.one_minus_beta1, detail::load8(m) * s.beta1);
  f32x8 vi = detail::fmadd8(gi * s.one_minus_beta2, gi, detail::load8(v) * s.beta2);
  f32x8 denom = detail::sqrt8(vi) / s.bc2_sqrt + s.eps;
  pi = pi + (s.neg_step_size * mi) / denom;
  detail::store8(p, pi);
  detail::store8(m, mi);
  detail::store8(v, vi);
}

// Elements [i0, i1); a ragged end goes through the same code via zero-padded copies.
void adamw_range(float* p, const float* g, float* m, float* v, size_t i0, size_t i1,
                 const AdamScalars& s) {
  size_t i = i0;
  for (; i + 8 <= i1; i += 8) adamw8(p + i, g + i, m + i, v + i, s);
  if (i == i1) return;
  float tp[8] = {}, tg[8] = {}, tm[8] = {}, tv[8] = {};
  const size_t r = i1 - i;
  for (size_t j = 0; j < r; ++j)
    tp[j] = p[i + j], tg[j] = g[i + j], tm[j] = m[i + j], tv[j] = v[i + j];
  adamw8(tp, tg, tm, tv, s);
  for (size_t j = 0; j < r; ++j) p[i + j] = tp[j], m[i + j] = tm[j], v[i + j] = tv[j];
}

}  // namespace

void adamw_update(float* params, const float* grads, float* m, float* v, size_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, int t,
                  float grad_scale) {
  LOOM_CHECK(t >= 1, "adamw_update: step t={} must be >= 1 (1-based)", t);
  const double lr_d = decimal_double(lr), wd_d = decimal_double(weight_decay);
  const double b1_d = decimal_double(beta1), b2_d = decimal_double(beta2);
  const double bc1 = 1.0 - std::pow(b1_d, static_cast<double>(t));
  const double bc2 = 1.0 - std::pow(b2_d, static_cast<double>(t));
  const AdamScalars s{static_cast<float>(1.0 - lr_d * wd_d),
                      beta1,
                      beta2,
                      static_cast<float>(1.0 - b1_d),
                      static_cast<float>(1.0 - b2_d),
                      static_cast<float>(std::sqrt(bc2)),
                      static_cast<float>(-(lr_d / bc1)),
                      eps,
                      grad_scale};
  const long num_blocks = static_cast<long>(detail::ceil_div(n, kBlock));
#pragma omp parallel for schedule(static)
  for (long blk = 0; blk < num_blocks; ++blk) {
    const size_t i0 = static_cast<size_t>(blk) * kBlock;
    adamw_range(params, grads, m, v, i0, std::min(n, i0 + kBlock), s);
  }
}

}  // namespace loom::kernels
