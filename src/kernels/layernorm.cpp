// LayerNorm over the last dimension (eps 1e-5, biased variance), forward and backward.
#include <algorithm>
#include <cmath>

#include "kernels/internal.h"
#include "kernels/kernels.h"

namespace loom::kernels {
namespace {

constexpr float kEps = 1e-5f;
constexpr int kChannelBlock = 64;

using detail::Acc16;
using detail::Block16;

// sum (x[i] - mean)^2.
float sum_sq_dev(const float* x, int C, float mean) {
  Acc16 acc;
  detail::for_each16(C, [&](size_t i, size_t c) {
    // Padding with the mean makes the missing lanes contribute exactly 0.
    Block16 d = detail::load16(x + i, c, mean);
    d.lo -= mean;
    d.hi -= mean;
    acc.add(d * d);
  });
  return acc.total();
}

// One row's dinp: dinp += (w*dout - mean(w*dout) - norm * mean(w*dout*norm)) * rstd,
// norm = (x - mean) * rstd.
void layernorm_backward_row(float* dinp, const float* dout, const float* x, const float* w,
                            float mean, float rstd, int C) {
  Acc16 acc_d, acc_dn;
  detail::for_each16(C, [&](size_t i, size_t c) {
    Block16 dnorm = detail::load16(w + i, c) * detail::load16(dout + i, c);
    Block16 norm = detail::load16(x + i, c, mean);
    norm.lo = (norm.lo - mean) * rstd;
    norm.hi = (norm.hi - mean) * rstd;
    acc_d.add(dnorm);
    acc_dn.add(dnorm * norm);
  });
  const float dnorm_mean = acc_d.total() / C;
  const float dnorm_norm_mean = acc_dn.total() / C;
  for (int c = 0; c < C; ++c) {
    float norm = (x[c] - mean) * rstd;
    dinp[c] += (w[c] * dout[c] - dnorm_mean - norm * dnorm_norm_mean) * rstd;
  }
}

// dweight[c] += sum_n dout[n,c] * norm[n,c], dbias[c] += sum_n dout[n,c] for c in
// [c0, c1), rows summed in order in double.
void layernorm_param_grads(float* dweight, float* dbias, const float* dout, const float* inp,
                           const float* mean, const float* rstd, int N, int C, int c0, int c1) {
  double acc_w[kChannelBlock] = {}, acc_b[kChannelBlock] = {};
  const int width = c1 - c0;
  for (int n = 0; n < N; ++n) {
    const float* dout_n = dout + static_cast<size_t>(n) * C + c0;  // (width)
    const float* x_n = inp + static_cast<size_t>(n) * C + c0;      // (width)
    const float m = mean[n], r = rstd[n];
    for (int j = 0; j < width; ++j) {
      acc_w[j] += static_cast<double>(dout_n[j] * ((x_n[j] - m) * r));
      acc_b[j] += static_cast<double>(dout_n[j]);
    }
  }
  for (int j = 0; j < width; ++j) {
    dweight[c0 + j] += static_cast<float>(acc_w[j]);
    dbias[c0 + j] += static_cast<float>(acc_b[j]);
  }
}

}  // namespace

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, int N, int C) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const float* x = inp + static_cast<size_t>(n) * C;  // (C)
    float* y = out + static_cast<size_t>(n) * C;        // (C)
    const float m = detail::sum_lanes(x, C) / C;
    const float var = sum_sq_dev(x, C, m) / C;
    const float r = 1.0f / std::sqrt(var + kEps);
    for (int c = 0; c < C; ++c) y[c] = (x[c] - m) * r * weight[c] + bias[c];
    mean[n] = m;
    rstd[n] = r;
  }
}

// Rows are independent for dinp; the parameter gradients are reduced over rows in a
// second pass that gives each thread a block of channels, so they are summed in row order
// whatever the thread count.
void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean, const float* rstd,
                        int N, int C) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const size_t off = static_cast<size_t>(n) * C;
    layernorm_backward_row(dinp + off, dout + off, inp + off, weight, mean[n], rstd[n], C);
  }
  const int num_blocks = static_cast<int>(detail::ceil_div(C, kChannelBlock));
#pragma omp parallel for schedule(static)
  for (int blk = 0; blk < num_blocks; ++blk) {
    const int c0 = blk * kChannelBlock;
    layernorm_param_grads(dweight, dbias, dout, inp, mean, rstd, N, C, c0,
                          std::min(C, c0 + kChannelBlock));
  }
}

}  // namespace loom::kernels
