// Causal attention of new query rows over a sequence's cached keys and values: what
// decoding with a KV cache runs, one token per sequence per step, and what prefill runs
// for a prompt's rows at once. Keys are cached transposed (a head's (HS, capacity) block),
// values as rows (capacity, HS), so that both products of a decode step run down
// contiguous memory with the vector lanes across positions / channels. The cache may hold
// bf16 (half the bytes a decode step reads): elements are widened to fp32 exactly, and the
// arithmetic is the fp32 kernel's on those values.
//
// Work is split over the (run, head) pairs. A run of one row (a decode step) is a dot
// product per cached position, a softmax and a weighted sum of the values; a longer run
// (prefill) is two single-threaded GEMMs over its score tile, as the materialized
// attention kernel does. Within a pair every loop runs in a fixed order, so the output does
// not depend on the thread count or on the other runs of the call.
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "core/check.h"
#include "kernels/internal.h"
#include "kernels/kernels.h"

namespace loom::kernels {
namespace {

using detail::f32x8;

// Eight cached elements as fp32: fp32 as they are, bf16 widened exactly.
inline f32x8 load8(const float* p) { return detail::load8(p); }
inline f32x8 load8(const uint16_t* p) {
  using u16x8 = uint16_t __attribute__((vector_size(16)));
  using u32x8 = uint32_t __attribute__((vector_size(32)));
  u16x8 h;
  std::memcpy(&h, p, sizeof h);
  return std::bit_cast<f32x8>(__builtin_convertvector(h, u32x8) << 16);
}
inline float to_f32(float x) { return x; }
inline float to_f32(uint16_t b) { return bf16_to_float(b); }

// out (HS) = softmax(scale * K q) V over positions [0, P): one query row. The keys are
// stored transposed (kt: HS rows of ldk positions), so each score accumulates down a column
// with the positions across the vector lanes: no horizontal sums, which would dominate a
// 64-element dot product.
template <class T>
void attend_row(float* out, const float* q, const T* kt, int ldk, const T* v, int P, int HS,
                float scale, float* scores) {
  std::fill(scores, scores + P, 0.0f);
  constexpr int kLine = 64 / int(sizeof(T));  // elements of a cache line
  for (int j = 0; j < HS; ++j) {
    const T* kj = kt + size_t(j) * ldk;
    // The rows are short (P elements) and ldk apart: the hardware prefetcher does not keep
    // up, so ask for row j + 4 while row j computes, and for a 1/HS share of the values,
    // which the weighted sum reads next.
    if (j + 4 < HS)
      for (int t = 0; t < P; t += kLine) __builtin_prefetch(kj + size_t(4) * ldk + t);
    const size_t v0 = size_t(j) * P / HS * HS, v1 = size_t(j + 1) * P / HS * HS;
    for (size_t e = v0; e < v1; e += kLine) __builtin_prefetch(v + e);
    const f32x8 qj = f32x8{} + q[j];
    int t = 0;
    for (; t + 8 <= P; t += 8)
      detail::store8(scores + t, detail::fmadd8(qj, load8(kj + t), detail::load8(scores + t)));
    for (; t < P; ++t) scores[t] = std::fma(q[j], to_f32(kj[t]), scores[t]);
  }
  for (int t = 0; t < P; ++t) scores[t] *= scale;
  const float mx = detail::max_lanes(scores, size_t(P));
  const float inv = 1.0f / detail::exp_shift_sum(scores, scores, size_t(P), mx);
  std::fill(out, out + HS, 0.0f);
  for (int t = 0; t < P; ++t) {
    const f32x8 p = f32x8{} + scores[t] * inv;
    const T* vt = v + size_t(t) * HS;
    int j = 0;
    for (; j + 8 <= HS; j += 8)
      detail::store8(out + j, detail::fmadd8(p, load8(vt + j), detail::load8(out + j)));
    for (; j < HS; ++j) out[j] = std::fma(scores[t] * inv, to_f32(vt[j]), out[j]);
  }
}

// A head's cached block as fp32 for the GEMMs: fp32 in place; bf16 widened into `buf`
// (rows x cols of a block with row stride ld, packed to stride cols). Returns (data, ld).
std::pair<const float*, int> as_f32(const float* block, int, int, int ld, float*) {
  return {block, ld};
}
std::pair<const float*, int> as_f32(const uint16_t* block, int rows, int cols, int ld,
                                    float* buf) {
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c)
      buf[size_t(r) * cols + c] = bf16_to_float(block[size_t(r) * ld + c]);
  return {buf, cols};
}

// Rows [0, n) of a run at positions pos0.. : scores (n, P) by one GEMM, causal softmax per
// row (row i sees pos0 + i + 1 positions), then out = probabilities @ V. `scratch` holds
// the scores (n * P) and, for a bf16 cache, the head's keys and values widened (2 * P * HS).
template <class T>
void attend_rows(const CachedAttentionRun& r, int h, int HS, int ldq, int ldo, int ldk,
                 size_t head_stride, float scale, float* scratch) {
  const int P = r.pos0 + r.n;
  const float* q = r.q + size_t(h) * HS;
  const T* kt = static_cast<const T*>(r.k) + size_t(h) * head_stride;
  const T* v = static_cast<const T*>(r.v) + size_t(h) * head_stride;
  float* out = r.out + size_t(h) * HS;
  float* scores = scratch;
  if (r.n == 1) return attend_row(out, q, kt, ldk, v, P, HS, scale, scores);
  float* wide = scratch + size_t(r.n) * P;
  const auto [k32, ldk32] = as_f32(kt, HS, P, ldk, wide);
  const auto [v32, ldv32] = as_f32(v, P, HS, HS, wide + size_t(P) * HS);
  detail::gemm_in_thread(false, false, r.n, P, HS, scale, q, ldq, k32, ldk32, 0.0f, scores, P);
  for (int i = 0; i < r.n; ++i) {
    float* s = scores + size_t(i) * P;
    const size_t len = size_t(r.pos0 + i + 1);
    const float inv = 1.0f / detail::exp_shift_sum(s, s, len, detail::max_lanes(s, len));
    for (size_t t = 0; t < len; ++t) s[t] *= inv;
    std::fill(s + len, s + P, 0.0f);
  }
  detail::gemm_in_thread(false, false, r.n, HS, P, 1.0f, scores, P, v32, ldv32, 0.0f, out, ldo);
}

}  // namespace

void cached_attention(std::span<const CachedAttentionRun> runs, int NH, int HS, int ldq, int ldo,
                      int capacity, DType kv) {
  LOOM_CHECK(NH > 0 && HS > 0 && ldq >= NH * HS && ldo >= NH * HS && capacity > 0,
             "cached_attention: bad sizes NH={} HS={} ldq={} ldo={} capacity={}", NH, HS, ldq,
             ldo, capacity);
  LOOM_CHECK(kv == DType::kF32 || kv == DType::kBF16, "cached_attention: a {} cache",
             dtype_name(kv));
  size_t most = 0;  // scratch floats of the largest run
  for (const CachedAttentionRun& r : runs) {
    LOOM_CHECK(r.n >= 1 && r.pos0 >= 0 && r.pos0 + r.n <= capacity,
               "cached_attention: a run of {} rows at position {} does not fit {} positions",
               r.n, r.pos0, capacity);
    const size_t P = size_t(r.pos0 + r.n);
    most = std::max(most, size_t(r.n) * P + (r.n > 1 && kv != DType::kF32 ? 2 * P * HS : 0));
  }
  const float scale = 1.0f / std::sqrt(float(HS));
  const size_t head_stride = size_t(capacity) * HS;
  const long pairs = long(runs.size()) * NH;
#pragma omp parallel
  {
    std::vector<float> scratch(most);
#pragma omp for schedule(dynamic, 1)
    for (long p = 0; p < pairs; ++p) {
      const CachedAttentionRun& r = runs[size_t(p / NH)];
      const int h = int(p % NH);
      if (kv == DType::kF32)
        attend_rows<float>(r, h, HS, ldq, ldo, capacity, head_stride, scale, scratch.data());
      else
        attend_rows<uint16_t>(r, h, HS, ldq, ldo, capacity, head_stride, scale, scratch.data());
    }
  }
}

}  // namespace loom::kernels
