#include "train/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace loom {

double learning_rate(const TrainConfig& t, int step) {
  if (step < t.warmup_steps) return t.lr * double(step + 1) / double(t.warmup_steps);
  if (t.lr_schedule == "constant") return t.lr;
  const int decay_steps = std::max(1, t.steps - t.warmup_steps);
  const double r = std::min(1.0, double(step - t.warmup_steps) / double(decay_steps));
  const double coeff = 0.5 * (1.0 + std::cos(std::numbers::pi * r));
  return t.min_lr + coeff * (t.lr - t.min_lr);
}

}  // namespace loom
