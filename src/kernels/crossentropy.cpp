// Softmax cross-entropy over the real vocabulary V of padded logits (N,Vp).
#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "kernels/internal.h"
#include "kernels/kernels.h"

namespace loom::kernels {
namespace {

void check_targets(const char* what, const int32_t* targets, int N, int V, int Vp) {
  LOOM_CHECK(N >= 0 && V > 0 && Vp >= V, "{}: bad sizes N={} V={} Vp={}", what, N, V, Vp);
  for (int n = 0; n < N; ++n)
    LOOM_CHECK(targets[n] >= 0 && targets[n] < V, "{}: target {} at row {} outside [0, {})", what,
               targets[n], n, V);
}

// One row: returns the loss, overwrites row (Vp) with dloss * (softmax - onehot(target))
// for columns < V and 0 for the padding.
float crossentropy_fused_row(float* row, int target, int V, int Vp, float dloss) {
  const float mx = detail::max_lanes(row, V);
  const float logit_target = row[target];
  const float sum = detail::exp_shift_sum(row, row, V, mx);  // row[:V] = exp(x - mx)
  const float loss = std::log(sum) - (logit_target - mx);
  const float inv = 1.0f / sum;
  const float p_target = row[target] * inv;
  for (int v = 0; v < V; ++v) row[v] = (row[v] * inv) * dloss;
  row[target] = (p_target - 1.0f) * dloss;
  std::fill(row + V, row + Vp, 0.0f);
  return loss;
}

}  // namespace

void crossentropy_forward(float* losses, const float* logits, const int32_t* targets, int N, int V,
                          int Vp) {
  check_targets("crossentropy_forward", targets, N, V, Vp);
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const float* row = logits + static_cast<size_t>(n) * Vp;  // (Vp), first V used
    const float mx = detail::max_lanes(row, V);
    const float sum = detail::sum_exp_shift(row, V, mx);
    losses[n] = std::log(sum) - (row[targets[n]] - mx);
  }
}

void crossentropy_fused(float* losses, float* logits, const int32_t* targets, int N, int V, int Vp,
                        float dloss) {
  check_targets("crossentropy_fused", targets, N, V, Vp);
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    float* row = logits + static_cast<size_t>(n) * Vp;  // (Vp)
    losses[n] = crossentropy_fused_row(row, targets[n], V, Vp, dloss);
  }
}

}  // namespace loom::kernels
