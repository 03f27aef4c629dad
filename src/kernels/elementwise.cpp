// Element-wise kernels: GELU, residual add, scaling, sum of squares.
#include <cmath>
#include <vector>

#include "kernels/internal.h"
#include "kernels/kernels.h"

namespace loom::kernels {
namespace {

using detail::f32x8;

// Elements per parallel work item. A fixed block size (not n / threads) means every
// element goes through the same code path whatever the thread count.
constexpr size_t kBlock = 4096;

constexpr float kGeluScale = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kGeluCube = 0.044715f;

// 0.5 * x * (1 + tanh(u)) == x * sigmoid(2u), u = sqrt(2/pi) * (x + 0.044715 x^3).
// The sigmoid form is the same function, needs one exp and stays accurate where
// tanh(u) is near -1.
inline f32x8 gelu8(f32x8 x) {
  f32x8 u = kGeluScale * (x + kGeluCube * x * x * x);
  return x / (1.0f + detail::exp8(-2.0f * u));
}

// d/dx [x * s(2u)] = s + x * s * (1 - s) * 2 * du/dx, s = sigmoid(2u); equals
// 0.5 * (1 + tanh u) + 0.5 * x * sech^2(u) * du/dx.
inline f32x8 gelu_grad8(f32x8 x) {
  f32x8 x2 = x * x;
  f32x8 u = kGeluScale * (x + kGeluCube * x2 * x);
  f32x8 s = 1.0f / (1.0f + detail::exp8(-2.0f * u));
  f32x8 du = kGeluScale * (1.0f + 3.0f * kGeluCube * x2);
  return s + 2.0f * x * s * (1.0f - s) * du;
}

// Applies f to out[i] = f(a[i], b[i]) for i in [i0, i1), eight at a time; a ragged end
// goes through the same vector code via a zero-padded copy.
template <class F>
void map8(float* out, const float* a, const float* b, size_t i0, size_t i1, F f) {
  size_t i = i0;
  for (; i + 8 <= i1; i += 8)
    detail::store8(out + i, f(detail::load8(a + i), detail::load8(b + i)));
  if (i == i1) return;
  float ta[8] = {}, tb[8] = {}, to[8];
  for (size_t j = i; j < i1; ++j) ta[j - i] = a[j], tb[j - i] = b[j];
  detail::store8(to, f(detail::load8(ta), detail::load8(tb)));
  for (size_t j = i; j < i1; ++j) out[j] = to[j - i];
}

// Runs map8 over [0, n) in blocks of kBlock, in parallel.
template <class F>
void parallel_map8(float* out, const float* a, const float* b, size_t n, F f) {
  const long num_blocks = static_cast<long>(detail::ceil_div(n, kBlock));
#pragma omp parallel for schedule(static)
  for (long blk = 0; blk < num_blocks; ++blk) {
    size_t i0 = static_cast<size_t>(blk) * kBlock;
    map8(out, a, b, i0, std::min(n, i0 + kBlock), f);
  }
}

}  // namespace

void gelu_forward(float* out, const float* inp, size_t n) {
  parallel_map8(out, inp, inp, n, [](f32x8 x, f32x8) { return gelu8(x); });
}

void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n) {
  parallel_map8(dinp, inp, dout, n, [](f32x8 x, f32x8 d) { return gelu_grad8(x) * d; });
}

void residual_forward(float* out, const float* a, const float* b, size_t n) {
  parallel_map8(out, a, b, n, [](f32x8 x, f32x8 y) { return x + y; });
}

void scale(float* x, size_t n, float s) {
  parallel_map8(x, x, x, n, [s](f32x8 v, f32x8) { return v * s; });
}

// Partial sums over fixed blocks of kBlock elements, then the partials in block order:
// the result depends on neither the thread count nor the schedule.
double sum_squares(const float* x, size_t n) {
  const long num_blocks = static_cast<long>(detail::ceil_div(n, kBlock));
  std::vector<double> partial(num_blocks);
#pragma omp parallel for schedule(static)
  for (long blk = 0; blk < num_blocks; ++blk) {
    const size_t i0 = static_cast<size_t>(blk) * kBlock;
    const size_t i1 = std::min(n, i0 + kBlock);
    double acc[detail::kLanes] = {};
    size_t i = i0;
    for (; i + detail::kLanes <= i1; i += detail::kLanes)
      for (int j = 0; j < detail::kLanes; ++j) acc[j] += static_cast<double>(x[i + j]) * x[i + j];
    for (int j = 0; i < i1; ++i, ++j) acc[j] += static_cast<double>(x[i]) * x[i];
    double s = 0.0;
    for (int j = 0; j < detail::kLanes; ++j) s += acc[j];
    partial[blk] = s;
  }
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

}  // namespace loom::kernels
