// Helpers shared by the kernel implementations (not part of the public API).
//
// The build uses IEEE arithmetic (no -ffast-math), so the compiler may not reorder a plain
// `s += x[i]` reduction and leaves it scalar. The reductions below keep 16 interleaved
// partial sums in two 8-float vectors and add the lanes in order at the end: they run at
// SIMD speed, and the order of operations is fixed, so results are reproducible.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "core/check.h"

#if defined(__AVX__)
#include <immintrin.h>
#endif

// The vector types are passed by value only between inline functions; without AVX GCC
// warns (at every use, so for the whole including file) that such an ABI would differ,
// which does not matter here: only kernel implementation files include this header.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace loom::kernels::detail {

inline constexpr int kLanes = 16;

// Eight floats as one value (GCC/Clang vector extension): element-wise arithmetic and
// comparisons compile to SIMD instructions (AVX on this machine, pairs of SSE without it).
// Written out because the auto-vectoriser gives up on these loops: it will not reorder
// float sums, and will not if-convert a float comparison under -ftrapping-math.
using f32x8 = float __attribute__((vector_size(32)));
using i32x8 = int32_t __attribute__((vector_size(32)));

inline f32x8 load8(const float* p) {
  f32x8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store8(float* p, f32x8 v) { std::memcpy(p, &v, sizeof v); }

// a * b + c with one rounding (as torch's vectorised add/addcmul on AVX2), eight at a time.
// Without FMA hardware std::fma keeps the single rounding, slowly.
inline f32x8 fmadd8(f32x8 a, f32x8 b, f32x8 c) {
#if defined(__FMA__)
  return _mm256_fmadd_ps(a, b, c);
#else
  for (int j = 0; j < 8; ++j) c[j] = std::fma(a[j], b[j], c[j]);
  return c;
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

// Sixteen floats as two vectors: the unit of the reductions below.
struct Block16 {
  f32x8 lo, hi;
};

// The 16 floats at p, or the first `count` < 16 of them followed by `pad`.
inline Block16 load16(const float* p, size_t count, float pad = 0.0f) {
  if (count == 16) return {load8(p), load8(p + 8)};
  float t[16];
  for (size_t j = 0; j < 16; ++j) t[j] = j < count ? p[j] : pad;
  return {load8(t), load8(t + 8)};
}

// Stores the first `count` lanes of b at p.
inline void store16(float* p, size_t count, const Block16& b) {
  if (count == 16) {
    store8(p, b.lo);
    store8(p + 8, b.hi);
    return;
  }
  float t[16];
  store8(t, b.lo);
  store8(t + 8, b.hi);
  for (size_t j = 0; j < count; ++j) p[j] = t[j];
}

// Calls f(i, count) for the blocks of 16 covering [0, n): count is 16 except for a ragged
// last block. Loads and stores through load16/store16 handle both.
template <class F>
inline void for_each16(size_t n, F&& f) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) f(i, size_t{16});
  if (i < n) f(i, n - i);
}

// Sixteen partial sums; total() adds them in lane order.
struct Acc16 {
  f32x8 lo = {}, hi = {};
  void add(const Block16& b) {
    lo += b.lo;
    hi += b.hi;
  }
  float total() const {
    float s = 0.0f;
    for (int j = 0; j < 8; ++j) s += lo[j];
    for (int j = 0; j < 8; ++j) s += hi[j];
    return s;
  }
};

inline Block16 operator*(const Block16& a, const Block16& b) { return {a.lo * b.lo, a.hi * b.hi}; }

// sum x[0..n).
inline float sum_lanes(const float* x, size_t n) {
  Acc16 acc;
  for_each16(n, [&](size_t i, size_t c) { acc.add(load16(x + i, c)); });
  return acc.total();
}

// sum a[i] * b[i].
inline float dot_lanes(const float* a, const float* b, size_t n) {
  Acc16 acc;
  for_each16(n, [&](size_t i, size_t c) { acc.add(load16(a + i, c) * load16(b + i, c)); });
  return acc.total();
}

// max x[0..n), n >= 1.
inline float max_lanes(const float* x, size_t n) {
  f32x8 lo = f32x8{} + x[0], hi = lo;
  for_each16(n, [&](size_t i, size_t c) {
    Block16 b = load16(x + i, c, x[0]);
    lo = b.lo > lo ? b.lo : lo;
    hi = b.hi > hi ? b.hi : hi;
  });
  float m = lo[0];
  for (int j = 0; j < 8; ++j) m = std::max(m, std::max(lo[j], hi[j]));
  return m;
}

// exp(b - shift) lane-wise, with lanes >= count set to 0.
inline Block16 exp_shift16(const Block16& b, float shift, size_t count) {
  Block16 e{exp8(b.lo - shift), exp8(b.hi - shift)};
  for (size_t j = count; j < 16; ++j) (j < 8 ? e.lo[j] : e.hi[j - 8]) = 0.0f;
  return e;
}

// y[i] = exp(x[i] - shift); returns sum of y. y may alias x.
inline float exp_shift_sum(float* y, const float* x, size_t n, float shift) {
  Acc16 acc;
  for_each16(n, [&](size_t i, size_t c) {
    Block16 e = exp_shift16(load16(x + i, c), shift, c);
    store16(y + i, c, e);
    acc.add(e);
  });
  return acc.total();
}

// sum exp(x[i] - shift), as exp_shift_sum but without storing the exps.
inline float sum_exp_shift(const float* x, size_t n, float shift) {
  Acc16 acc;
  for_each16(n, [&](size_t i, size_t c) { acc.add(exp_shift16(load16(x + i, c), shift, c)); });
  return acc.total();
}

// Single-threaded oneDNN sgemm (row-major, same arguments as kernels::gemm) for use inside
// an OpenMP parallel region: oneDNN's OpenMP runtime runs one thread there, and it does
// not start threads of its own as OpenBLAS's pthread build would. No argument checks.
void gemm_in_thread(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
                    int lda, const float* B, int ldb, float beta, float* C, int ldc);

// One (b, h) pair of the causal attention kernels: strided views into qkv (B,T,3C), no copy.
struct HeadView {
  int T, HS;
  int ld_qkv;      // row stride of qkv / dqkv: 3C
  int ld_out;      // row stride of out / dout: C
  const float* q;  // (T,HS) stride ld_qkv
  const float* k;  // (T,HS) stride ld_qkv
  const float* v;  // (T,HS) stride ld_qkv
  float scale;     // 1/sqrt(HS)
};

inline HeadView head_view(const float* qkv, int b, int h, int T, int C, int NH) {
  const int HS = C / NH;
  const float* base = qkv + static_cast<size_t>(b) * T * 3 * C + static_cast<size_t>(h) * HS;
  return {T, HS, 3 * C, C, base, base + C, base + 2 * C, 1.0f / std::sqrt(float(HS))};
}

inline void check_attention_sizes(const char* what, int B, int T, int C, int NH) {
  LOOM_CHECK(B >= 0 && T > 0 && NH > 0 && C > 0 && C % NH == 0,
             "{}: bad sizes B={} T={} C={} NH={} (C must divide by NH)", what, B, T, C, NH);
}

// Number of blocks of `block` elements covering n.
inline size_t ceil_div(size_t n, size_t block) { return (n + block - 1) / block; }

// With a bias, out's (N,OC) rows start as it and the GEMM adds the product: returns the
// GEMM's beta (1; 0 without a bias, leaving out alone).
float bias_rows(float* out, const float* bias, int N, int OC);
// dbias (OC) += the column sums of dout (N,OC), rows summed in order in double.
void bias_grad(float* dbias, const float* dout, int N, int OC);

}  // namespace loom::kernels::detail
