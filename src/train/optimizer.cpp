#include "train/optimizer.h"

#include <algorithm>
#include <cmath>

#include "kernels/kernels.h"

namespace loom {

void AdamW::update(const std::vector<ParamSpec>& specs, std::span<float> weights,
                   const float* grads, double lr, float grad_scale, int t) {
  const size_t end = begin_ + m_.size();
  for (const ParamSpec& p : specs) {
    const size_t lo = std::max(p.offset, begin_), hi = std::min(p.offset + p.numel, end);
    if (lo >= hi) continue;
    const float wd = p.decay ? float(cfg_.weight_decay) : 0.0f;
    const size_t i = lo - begin_;
    kernels::adamw_update(weights.data() + lo, grads + i, m_.data() + i, v_.data() + i, hi - lo,
                          float(lr), float(cfg_.beta1), float(cfg_.beta2), float(cfg_.eps), wd,
                          t, grad_scale);
  }
}

ClipResult clip_coefficient(double grad_sum_squares, double max_norm) {
  const double norm = std::sqrt(grad_sum_squares);
  float scale = 1.0f;
  if (max_norm > 0) {
    const float coef = float(max_norm) / (float(norm) + 1e-6f);
    scale = coef < 1.0f ? coef : 1.0f;
  }
  return ClipResult{float(norm), scale};
}

}  // namespace loom
