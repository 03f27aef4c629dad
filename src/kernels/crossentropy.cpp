// Softmax cross-entropy over the real vocabulary V of padded logits (N,Vp).
#include <algorithm>
#include <cmath>
#include <limits>

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

void vocab_ce_local_stats(float* stats, float* logits, const int32_t* targets, int N, int Vl,
                          int v0, int V, bool keep_exps) {
  const int real = std::clamp(V - v0, 0, Vl);
#pragma omp parallel for schedule(static)
  for (int i = 0; i < N; ++i) {
    float* x = logits + size_t(i) * Vl;
    const int t = targets ? targets[i] - v0 : -1;
    float* st = stats + size_t(i) * 3;
    st[2] = t >= 0 && t < real ? x[t] : 0.0f;
    if (real == 0) {  // only padding here: neutral when the ranks' stats combine
      st[0] = -std::numeric_limits<float>::infinity();
      st[1] = 0.0f;
      continue;
    }
    st[0] = detail::max_lanes(x, size_t(real));
    st[1] = keep_exps ? detail::exp_shift_sum(x, x, size_t(real), st[0])
                      : detail::sum_exp_shift(x, size_t(real), st[0]);
  }
}

void vocab_ce_finish(float* losses, float* logits, const float* all_stats, int tp,
                     const int32_t* targets, int N, int Vl, int v0, int V, float dloss) {
  LOOM_CHECK(tp >= 1 && Vl > 0 && v0 % Vl == 0 && v0 / Vl < tp,
             "vocab_ce_finish: columns from {} of {} per rank do not belong to one of {} ranks",
             v0, Vl, tp);
  const int real = std::clamp(V - v0, 0, Vl), me = v0 / Vl;
#pragma omp parallel for schedule(static)
  for (int i = 0; i < N; ++i) {
    float M = -std::numeric_limits<float>::infinity();
    for (int q = 0; q < tp; ++q) M = std::max(M, all_stats[(size_t(q) * N + i) * 3]);
    double S = 0.0, tgt = 0.0;
    for (int q = 0; q < tp; ++q) {
      const float* st = all_stats + (size_t(q) * N + i) * 3;
      if (st[1] > 0) S += double(st[1]) * std::exp(double(st[0]) - double(M));
      tgt += st[2];
    }
    if (losses) losses[i] = float(std::log(S) + double(M) - tgt);
    if (dloss <= 0) continue;
    // x holds exp(x - m) for this rank's max m: softmax = x * exp(m - M) / S.
    float* x = logits + size_t(i) * Vl;
    const float m = all_stats[(size_t(me) * N + i) * 3];
    const float scale = real > 0 ? float(std::exp(double(m) - double(M)) / S) : 0.0f;
    const int t = targets[i] - v0;
    const bool local = t >= 0 && t < real;
    const float p_target = local ? x[t] * scale : 0.0f;
    for (int j = 0; j < real; ++j) x[j] = (x[j] * scale) * dloss;
    if (local) x[t] = (p_target - 1.0f) * dloss;
    std::fill(x + real, x + Vl, 0.0f);
  }
}

}  // namespace loom::kernels
