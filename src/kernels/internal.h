// Helpers shared by the kernel implementations (not part of the public API).
//
// The build uses IEEE arithmetic (no -ffast-math), so the compiler may not reorder a plain
// `s += x[i]` reduction and leaves it scalar. The helpers below spell the vector lanes out
// (kLanes interleaved partial sums, then the lanes summed in order): the compiler
// vectorises them, and the order of operations is fixed, so results are reproducible.
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cmath>
#include <cstring>

#if defined(__AVX__)
#include <immintrin.h>
#endif

// The vector types are passed by value only between inline functions; without AVX GCC
// warns that such an ABI would differ, which does not matter here.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace loom::kernels::detail {

inline constexpr int kLanes = 16;

// Eight floats as one value (GCC/Clang vector extension): element-wise arithmetic and
// comparisons compile to SIMD instructions (AVX on this machine, pairs of SSE without it).
// Used where the auto-vectoriser gives up on a clamp (it will not if-convert a float
// comparison under -ftrapping-math).
using f32x8 = float __attribute__((vector_size(32)));
using i32x8 = int32_t __attribute__((vector_size(32)));

inline f32x8 load8(const float* p) {
  f32x8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store8(float* p, f32x8 v) { std::memcpy(p, &v, sizeof v); }

// a * b + c with one rounding (as torch's vectorised add/addcmul on AVX2), eight at a time.
// Without FMA hardware the product is rounded first.
inline f32x8 fmadd8(f32x8 a, f32x8 b, f32x8 c) {
#if defined(__FMA__)
  return _mm256_fmadd_ps(a, b, c);
#else
  return a * b + c;
#endif
}

// Correctly rounded square root, eight at a time (GCC will not vectorise std::sqrt while
// it may set errno).
inline f32x8 sqrt8(f32x8 x) {
#if defined(__AVX__)
  return _mm256_sqrt_ps(x);
#else
  for (int j = 0; j < 8; ++j) x[j] = std::sqrt(x[j]);
  return x;
#endif
}

// Stops the compiler from fusing the multiply that produced x into a later add (it may
// contract a*b + c into an fma under the default -ffp-contract=fast), where the reference
// computation rounds the product first.
inline void keep_rounded(f32x8& x) {
#if defined(__GNUC__) && defined(__AVX__)
  asm("" : "+x"(x));
#endif
}

// exp(x), eight at a time (Cephes expf: range reduction by ln 2, degree-6 polynomial;
// relative error about 2 ulp). Inputs are clamped to [-87, 88], so exp of a very negative
// number is ~1e-38 rather than 0 (harmless in a softmax or a sigmoid); NaN stays NaN.
inline f32x8 exp8(f32x8 x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  // Round x*log2(e) to the nearest integer with the 1.5*2^23 trick (no rint call).
  const float kMagic = 12582912.0f;
  f32x8 n = (x * 1.44269504088896341f + kMagic) - kMagic;
  f32x8 r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  f32x8 p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  i32x8 e = (__builtin_convertvector(n, i32x8) + 127) << 23;
  return p * std::bit_cast<f32x8>(e);
}

// Scalar exp for loop tails: the same arithmetic as exp8.
inline float exp_approx(float x) {
  f32x8 v = {x};
  return exp8(v)[0];
}

// sum x[0..n).
inline float sum_lanes(const float* x, size_t n) {
  float acc[kLanes] = {};
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += x[i + j];
  for (int j = 0; i < n; ++i, ++j) acc[j] += x[i];
  float s = 0.0f;
  for (int j = 0; j < kLanes; ++j) s += acc[j];
  return s;
}

// sum a[i] * b[i].
inline float dot_lanes(const float* a, const float* b, size_t n) {
  float acc[kLanes] = {};
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += a[i + j] * b[i + j];
  for (int j = 0; i < n; ++i, ++j) acc[j] += a[i] * b[i];
  float s = 0.0f;
  for (int j = 0; j < kLanes; ++j) s += acc[j];
  return s;
}

// max x[0..n), n >= 1.
inline float max_lanes(const float* x, size_t n) {
  float acc[kLanes];
  for (int j = 0; j < kLanes; ++j) acc[j] = x[0];
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] = std::max(acc[j], x[i + j]);
  for (int j = 0; i < n; ++i, ++j) acc[j] = std::max(acc[j], x[i]);
  float m = acc[0];
  for (int j = 1; j < kLanes; ++j) m = std::max(m, acc[j]);
  return m;
}

// y[i] = exp(x[i] - shift); returns sum of y (16 lanes, then in order). y may alias x.
inline float exp_shift_sum(float* y, const float* x, size_t n, float shift) {
  f32x8 acc0 = {}, acc1 = {};
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    f32x8 e0 = exp8(load8(x + i) - shift);
    f32x8 e1 = exp8(load8(x + i + 8) - shift);
    store8(y + i, e0);
    store8(y + i + 8, e1);
    acc0 += e0;
    acc1 += e1;
  }
  float acc[kLanes];
  std::memcpy(acc, &acc0, sizeof acc0);
  std::memcpy(acc + 8, &acc1, sizeof acc1);
  for (int j = 0; i < n; ++i, ++j) {
    y[i] = exp_approx(x[i] - shift);
    acc[j] += y[i];
  }
  float s = 0.0f;
  for (int j = 0; j < kLanes; ++j) s += acc[j];
  return s;
}

// sum exp(x[i] - shift), as exp_shift_sum but without storing the exps.
inline float sum_exp_shift(const float* x, size_t n, float shift) {
  f32x8 acc0 = {}, acc1 = {};
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 += exp8(load8(x + i) - shift);
    acc1 += exp8(load8(x + i + 8) - shift);
  }
  float acc[kLanes];
  std::memcpy(acc, &acc0, sizeof acc0);
  std::memcpy(acc + 8, &acc1, sizeof acc1);
  for (int j = 0; i < n; ++i, ++j) acc[j] += exp_approx(x[i] - shift);
  float s = 0.0f;
  for (int j = 0; j < kLanes; ++j) s += acc[j];
  return s;
}

// Single-threaded oneDNN sgemm (row-major, same arguments as kernels::gemm) for use inside
// an OpenMP parallel region: oneDNN's OpenMP runtime runs one thread there, and it does
// not start threads of its own as OpenBLAS's pthread build would. No argument checks.
void gemm_in_thread(bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                    const float* A, int lda, const float* B, int ldb, float beta, float* C,
                    int ldc);

// Number of blocks of `block` elements covering n.
inline size_t ceil_div(size_t n, size_t block) { return (n + block - 1) / block; }

}  // namespace loom::kernels::detail
