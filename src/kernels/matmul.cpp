// Linear layer: out = inp @ weight^T + bias, forward and backward, on the GEMM facade.
#include <algorithm>
#include <cstring>

#include "core/check.h"
#include "kernels/internal.h"
#include "kernels/kernels.h"

namespace loom::kernels {
namespace {

constexpr int kColumnBlock = 64;

// dbias[o] += sum_n dout[n,o] for o in [o0, o1), rows summed in order in double.
void bias_grad_block(float* dbias, const float* dout, int N, int OC, int o0, int o1) {
  double acc[kColumnBlock] = {};
  const int width = o1 - o0;
  for (int n = 0; n < N; ++n) {
    const float* row = dout + static_cast<size_t>(n) * OC + o0;  // (width)
    for (int j = 0; j < width; ++j) acc[j] += static_cast<double>(row[j]);
  }
  for (int j = 0; j < width; ++j) dbias[o0 + j] += static_cast<float>(acc[j]);
}

}  // namespace

float detail::bias_rows(float* out, const float* bias, int N, int OC) {
  if (bias == nullptr) return 0.0f;
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n)
    std::memcpy(out + static_cast<size_t>(n) * OC, bias, sizeof(float) * OC);
  return 1.0f;
}

void detail::bias_grad(float* dbias, const float* dout, int N, int OC) {
  const int num_blocks = static_cast<int>(detail::ceil_div(OC, kColumnBlock));
#pragma omp parallel for schedule(static)
  for (int blk = 0; blk < num_blocks; ++blk) {
    const int o0 = blk * kColumnBlock;
    bias_grad_block(dbias, dout, N, OC, o0, std::min(OC, o0 + kColumnBlock));
  }
}

// With a bias, out's rows start as the bias and the GEMM adds the product (beta = 1), as
// torch.addmm does; the fill is one parallel pass over out.
void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N,
                    int C, int OC) {
  LOOM_CHECK(N >= 0 && C > 0 && OC > 0, "matmul_forward: bad sizes N={} C={} OC={}", N, C, OC);
  const float beta = detail::bias_rows(out, bias, N, OC);
  // out (N,OC) = inp (N,C) @ weight (OC,C)^T
  gemm(false, true, N, OC, C, 1.0f, inp, C, weight, C, beta, out, OC);
}

void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int N, int C, int OC) {
  LOOM_CHECK(N >= 0 && C > 0 && OC > 0, "matmul_backward: bad sizes N={} C={} OC={}", N, C, OC);
  // dinp (N,C) = dout (N,OC) @ weight (OC,C)
  if (dinp != nullptr) gemm(false, false, N, C, OC, 1.0f, dout, OC, weight, C, 0.0f, dinp, C);
  // dweight (OC,C) += dout^T (OC,N) @ inp (N,C)
  gemm(true, false, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dweight, C);
  if (dbias != nullptr) detail::bias_grad(dbias, dout, N, OC);
}

}  // namespace loom::kernels
