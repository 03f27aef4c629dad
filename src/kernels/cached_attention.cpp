// Causal attention of new query rows over a sequence's cached keys and values: what
// decoding with a KV cache runs, one token per sequence per step, and what prefill runs
// for a prompt's rows at once. Keys are cached transposed (a head's (HS, capacity) block),
// values as rows (capacity, HS), so that both products of a decode step run down
// contiguous memory with the vector lanes across positions / channels.
//
// Work is split over the (run, head) pairs. A run of one row (a decode step) is a dot
// product per cached position, a softmax and a weighted sum of the values; a longer run
// (prefill) is two single-threaded GEMMs over its score tile, as the materialized
// attention kernel does. Within a pair every loop runs in a fixed order, so the output does
// not depend on the thread count or on the other runs of the call.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/check.h"
#include "kernels/internal.h"
#include "kernels/kernels.h"

namespace loom::kernels {
namespace {

using detail::f32x8;

// out (HS) = softmax(scale * K q) V over positions [0, P): one query row. The keys are
// stored transposed (kt: HS rows of ldk positions), so each score accumulates down a column
// with the positions across the vector lanes: no horizontal sums, which would dominate a
// 64-element dot product.
void attend_row(float* out, const float* q, const float* kt, int ldk, const float* v, int P,
                int HS, float scale, float* scores) {
  std::fill(scores, scores + P, 0.0f);
  for (int j = 0; j < HS; ++j) {
    const float* kj = kt + size_t(j) * ldk;
    const f32x8 qj = f32x8{} + q[j];
    int t = 0;
    for (; t + 8 <= P; t += 8)
      detail::store8(scores + t, detail::fmadd8(qj, detail::load8(kj + t), detail::load8(scores + t)));
    for (; t < P; ++t) scores[t] = std::fma(q[j], kj[t], scores[t]);
  }
  for (int t = 0; t < P; ++t) scores[t] *= scale;
  const float mx = detail::max_lanes(scores, size_t(P));
  const float inv = 1.0f / detail::exp_shift_sum(scores, scores, size_t(P), mx);
  std::fill(out, out + HS, 0.0f);
  for (int t = 0; t < P; ++t) {
    const float p = scores[t] * inv;
    const float* vt = v + size_t(t) * HS;
    int j = 0;
    for (; j + 8 <= HS; j += 8)
      detail::store8(out + j, detail::fmadd8(f32x8{} + p, detail::load8(vt + j),
                                             detail::load8(out + j)));
    for (; j < HS; ++j) out[j] = std::fma(p, vt[j], out[j]);
  }
}

// Rows [0, n) of a run at positions pos0.. : scores (n, P) by one GEMM, causal softmax per
// row (row i sees pos0 + i + 1 positions), then out = probabilities @ V.
void attend_rows(const CachedAttentionRun& r, int h, int HS, int ldq, int ldo, int ldk,
                 size_t head_stride, float scale, float* scores) {
  const int P = r.pos0 + r.n;
  const float* q = r.q + size_t(h) * HS;
  const float* kt = r.k + size_t(h) * head_stride;
  const float* v = r.v + size_t(h) * head_stride;
  float* out = r.out + size_t(h) * HS;
  if (r.n == 1) return attend_row(out, q, kt, ldk, v, P, HS, scale, scores);
  detail::gemm_in_thread(false, false, r.n, P, HS, scale, q, ldq, kt, ldk, 0.0f, scores, P);
  for (int i = 0; i < r.n; ++i) {
    float* s = scores + size_t(i) * P;
    const size_t len = size_t(r.pos0 + i + 1);
    const float inv = 1.0f / detail::exp_shift_sum(s, s, len, detail::max_lanes(s, len));
    for (size_t t = 0; t < len; ++t) s[t] *= inv;
    std::fill(s + len, s + P, 0.0f);
  }
  detail::gemm_in_thread(false, false, r.n, HS, P, 1.0f, scores, P, v, HS, 0.0f, out, ldo);
}

}  // namespace

void cached_attention(std::span<const CachedAttentionRun> runs, int NH, int HS, int ldq, int ldo,
                      int capacity) {
  LOOM_CHECK(NH > 0 && HS > 0 && ldq >= NH * HS && ldo >= NH * HS && capacity > 0,
             "cached_attention: bad sizes NH={} HS={} ldq={} ldo={} capacity={}", NH, HS, ldq,
             ldo, capacity);
  size_t most = 0;  // score floats of the largest run
  for (const CachedAttentionRun& r : runs) {
    LOOM_CHECK(r.n >= 1 && r.pos0 >= 0 && r.pos0 + r.n <= capacity,
               "cached_attention: a run of {} rows at position {} does not fit {} positions",
               r.n, r.pos0, capacity);
    most = std::max(most, size_t(r.n) * size_t(r.pos0 + r.n));
  }
  const float scale = 1.0f / std::sqrt(float(HS));
  const size_t head_stride = size_t(capacity) * HS;
  const long pairs = long(runs.size()) * NH;
#pragma omp parallel
  {
    std::vector<float> scores(most);
#pragma omp for schedule(dynamic, 1)
    for (long p = 0; p < pairs; ++p)
      attend_rows(runs[size_t(p / NH)], int(p % NH), HS, ldq, ldo, capacity, head_stride, scale,
                  scores.data());
  }
}

}  // namespace loom::kernels
