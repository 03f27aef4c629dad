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

namespace {

// n fp32 values into storage s (fp32, bf16 or fp16) with t's rounding, serially: bf16/fp16
// storage converts, fp32 storage of a bf16/fp16 value rounds, fp32 of fp32 copies.
void store_serial(DType t, DType s, void* out, const float* in, size_t n) {
  if (s == DType::kBF16) {
    auto* o = static_cast<uint16_t*>(out);
    for (size_t i = 0; i < n; ++i) o[i] = bf16_from_float(in[i]);
  } else if (s == DType::kF16) {
    auto* o = static_cast<_Float16*>(out);
    for (size_t i = 0; i < n; ++i) o[i] = static_cast<_Float16>(in[i]);
  } else if (t == DType::kBF16) {
    auto* o = static_cast<float*>(out);
    for (size_t i = 0; i < n; ++i) o[i] = bf16_to_float(bf16_from_float(in[i]));
  } else if (t == DType::kF16) {
    auto* o = static_cast<float*>(out);
    for (size_t i = 0; i < n; ++i) o[i] = static_cast<float>(static_cast<_Float16>(in[i]));
  } else if (out != in) {
    std::memmove(out, in, n * sizeof(float));
  }
}

// store_serial over n values in parallel blocks (element i reads in[i] and writes only
// element i, so in place is safe).
void store(DType t, DType s, void* out, const float* in, size_t n) {
  constexpr size_t kBlock = size_t(1) << 14;
  const size_t es = dtype_size(s);
  const long blocks = long(detail::ceil_div(n, kBlock));
#pragma omp parallel for schedule(static)
  for (long b = 0; b < blocks; ++b) {
    const size_t i = size_t(b) * kBlock;
    store_serial(t, s, static_cast<std::byte*>(out) + i * es, in + i, std::min(kBlock, n - i));
  }
}

}  // namespace

void to_compute(DType t, void* out, const float* in, size_t n) {
  store(t, compute_storage(t), out, in, n);
}

void from_compute(DType t, float* out, const void* in, size_t n) {
  convert(out, DType::kF32, in, compute_storage(t), n);
}

void round_to(DType t, float* out, const float* in, size_t n) { store(t, DType::kF32, out, in, n); }

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

// The output gradient goes through the stage in blocks of whole columns (all N rows of
// `w` output features): each block's weight gradient is one GEMM over every row (the
// (OC,C) gradient is read and written once), and the input gradient sums the blocks' in
// order. The block layers' widths fit the stage whole; the head's vocabulary goes in blocks.
void matmul_backward_typed(DType t, float* dinp, float* dweight, float* dbias, const float* dout,
                           const void* inp, const void* weight, void* stage, size_t stage_elems,
                           int N, int C, int OC) {
  if (t == DType::kF32)
    return matmul_backward(dinp, dweight, dbias, dout, static_cast<const float*>(inp),
                           static_cast<const float*>(weight), N, C, OC);
  LOOM_CHECK(N >= 0 && C > 0 && OC > 0, "matmul_backward_typed: bad sizes N={} C={} OC={}", N,
             C, OC);
  if (N == 0) return;
  LOOM_CHECK(stage_elems >= size_t(N), "matmul_backward_typed: a stage of {} elements cannot "
             "hold one column of {} rows", stage_elems, N);
  const DType s = compute_storage(t);
  const size_t es = dtype_size(s);
  const int width = int(std::min<size_t>(size_t(OC), stage_elems / size_t(N)));
  const auto* w = static_cast<const std::byte*>(weight);
  auto* st = static_cast<std::byte*>(stage);
  for (int o0 = 0; o0 < OC; o0 += width) {
    const int m = std::min(width, OC - o0);
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; ++n)
      store_serial(t, s, st + size_t(n) * m * es, dout + size_t(n) * OC + o0, size_t(m));
    // dinp (N,C) (+)= dout[:, o0:o0+m] (N,m) @ weight[o0:o0+m, :] (m,C)
    if (dinp != nullptr)
      gemm_typed(s, false, false, N, C, m, 1.0f, st, m, w + size_t(o0) * C * es, C,
                 o0 == 0 ? 0.0f : 1.0f, dinp, C);
    // dweight[o0:o0+m, :] (m,C) += dout[:, o0:o0+m]^T (m,N) @ inp (N,C)
    gemm_typed(s, true, false, m, C, N, 1.0f, st, m, inp, C, 1.0f, dweight + size_t(o0) * C, C);
  }
  if (dbias != nullptr) detail::bias_grad(dbias, dout, N, OC);
}

}  // namespace loom::kernels
