// The linear layer in a compute precision (autocast): operands rounded to bf16 or fp16,
// fp32 accumulation and output, the bias and its gradient in fp32. fp32 is the fp32 layer
// itself, so an fp32 run is bitwise what it was before precisions existed.
#include <algorithm>
#include <cstring>

#include "core/check.h"
#include "kernels/internal.h"
#include "kernels/kernels.h"

namespace loom::kernels {

DType compute_storage(DType t) {
  if (t == DType::kF32 || gemm_typed_available(t)) return t;
  return DType::kF32;  // values rounded to t, held as fp32, multiplied by sgemm
}

void to_compute(DType t, void* out, const float* in, size_t n) {
  const DType s = compute_storage(t);
  if (s == DType::kF32 && t != DType::kF32) return round_to(t, static_cast<float*>(out), in, n);
  convert(out, s, in, DType::kF32, n);
}

void from_compute(DType t, float* out, const void* in, size_t n) {
  convert(out, DType::kF32, in, compute_storage(t), n);
}

void round_to(DType t, float* out, const float* in, size_t n) {
  const long nn = long(n);
  if (t == DType::kBF16) {
#pragma omp parallel for simd schedule(static)
    for (long i = 0; i < nn; ++i)
      out[i] = std::bit_cast<float>(uint32_t(detail::bf16_bits(in[i])) << 16);
  } else if (t == DType::kF16) {
#pragma omp parallel for simd schedule(static)
    for (long i = 0; i < nn; ++i) out[i] = static_cast<float>(static_cast<_Float16>(in[i]));
  } else if (out != in) {
    std::memcpy(out, in, n * sizeof(float));
  }
}

void matmul_forward_typed(DType t, float* out, const void* inp, const void* weight,
                          const float* bias, int N, int C, int OC) {
  if (t == DType::kF32)
    return matmul_forward(out, static_cast<const float*>(inp), static_cast<const float*>(weight),
                          bias, N, C, OC);
  LOOM_CHECK(N >= 0 && C > 0 && OC > 0, "matmul_forward_typed: bad sizes N={} C={} OC={}", N, C,
             OC);
  const float beta = detail::bias_rows(out, bias, N, OC);
  gemm_typed(compute_storage(t), false, true, N, OC, C, 1.0f, inp, C, weight, C, beta, out, OC);
}

void matmul_backward_typed(DType t, float* dinp, float* dweight, float* dbias, const float* dout,
                           const void* inp, const void* weight, void* stage, size_t stage_elems,
                           int N, int C, int OC) {
  if (t == DType::kF32)
    return matmul_backward(dinp, dweight, dbias, dout, static_cast<const float*>(inp),
                           static_cast<const float*>(weight), N, C, OC);
  LOOM_CHECK(N >= 0 && C > 0 && OC > 0, "matmul_backward_typed: bad sizes N={} C={} OC={}", N,
             C, OC);
  LOOM_CHECK(stage_elems >= size_t(OC), "matmul_backward_typed: a stage of {} elements cannot "
             "hold one row of {}", stage_elems, OC);
  const DType s = compute_storage(t);
  const size_t es = dtype_size(s);
  const int rows = int(std::min<size_t>(size_t(N), stage_elems / size_t(OC)));
  const auto* in = static_cast<const std::byte*>(inp);
  for (int r0 = 0; r0 < N; r0 += rows) {
    const int m = std::min(rows, N - r0);
    to_compute(t, stage, dout + size_t(r0) * OC, size_t(m) * OC);
    // dinp (m,C) = dout (m,OC) @ weight (OC,C)
    if (dinp != nullptr)
      gemm_typed(s, false, false, m, C, OC, 1.0f, stage, OC, weight, C, 0.0f,
                 dinp + size_t(r0) * C, C);
    // dweight (OC,C) += dout^T (OC,m) @ inp (m,C)
    gemm_typed(s, true, false, OC, C, m, 1.0f, stage, OC, in + size_t(r0) * C * es, C, 1.0f,
               dweight, C);
  }
  if (dbias != nullptr) detail::bias_grad(dbias, dout, N, OC);
}

}  // namespace loom::kernels
