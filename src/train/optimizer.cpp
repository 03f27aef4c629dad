#include "train/optimizer.h"

#include <cmath>

#include "kernels/kernels.h"

namespace loom {

void AdamW::update(const std::vector<ParamSpec>& specs, std::span<float> weights,
                   std::span<const float> grads, double lr, float grad_scale, int t) {
  for (const ParamSpec& p : specs) {
    const float wd = p.decay ? float(cfg_.weight_decay) : 0.0f;
    kernels::adamw_update(weights.data() + p.offset, grads.data() + p.offset,
                          m_.data() + p.offset, v_.data() + p.offset, p.numel, float(lr),
                          float(cfg_.beta1), float(cfg_.beta2), float(cfg_.eps), wd, t,
                          grad_scale);
  }
}

ClipResult clip_coefficient(std::span<const float> grads, double max_norm) {
  const double norm = std::sqrt(kernels::sum_squares(grads.data(), grads.size()));
  float scale = 1.0f;
  if (max_norm > 0) {
    const float coef = float(max_norm) / (float(norm) + 1e-6f);
    scale = coef < 1.0f ? coef : 1.0f;
  }
  return ClipResult{float(norm), scale};
}

}  // namespace loom
