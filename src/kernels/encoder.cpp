// Token + position embedding, forward and backward.
#include <algorithm>

#include "kernels/internal.h"
#include "kernels/kernels.h"

namespace loom::kernels {

// Channels per parallel work item in the backward pass: 64 floats = four cache lines.
constexpr int kChannelBlock = 64;

void encoder_forward(float* out, const int32_t* inp, const float* wte, const float* wpe, int B,
                     int T, int C) {
  const int N = B * T;
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    int t = n % T;
    float* out_n = out + static_cast<size_t>(n) * C;              // (C)
    const float* wte_ix = wte + static_cast<size_t>(inp[n]) * C;  // (C)
    const float* wpe_t = wpe + static_cast<size_t>(t) * C;        // (C)
    for (int c = 0; c < C; ++c) out_n[c] = wte_ix[c] + wpe_t[c];
  }
}

// Several positions may hold the same token, so rows of dwte cannot be split between
// threads. Instead each thread owns a block of channels and walks all (b,t) in order:
// no races, and the summation order does not depend on the thread count.
void encoder_backward(float* dwte, float* dwpe, const float* dout, const int32_t* inp, int B, int T,
                      int C) {
  const int num_blocks = static_cast<int>(detail::ceil_div(C, kChannelBlock));
#pragma omp parallel for schedule(static)
  for (int blk = 0; blk < num_blocks; ++blk) {
    const int c0 = blk * kChannelBlock;
    const int c1 = std::min(C, c0 + kChannelBlock);
    for (int b = 0; b < B; ++b) {
      for (int t = 0; t < T; ++t) {
        const size_t n = static_cast<size_t>(b) * T + t;
        const float* dout_n = dout + n * C;                       // (C)
        float* dwte_ix = dwte + static_cast<size_t>(inp[n]) * C;  // (C)
        float* dwpe_t = dwpe + static_cast<size_t>(t) * C;        // (C)
        for (int c = c0; c < c1; ++c) {
          dwte_ix[c] += dout_n[c];
          dwpe_t[c] += dout_n[c];
        }
      }
    }
  }
}

}  // namespace loom::kernels
