#include "parallel/compress.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "core/philox.h"
#include "kernels/kernels.h"

namespace loom {

void quantize_int8(const float* x, size_t n, int8_t* q, float* scales) {
  for (size_t b = 0; b * kInt8Block < n; ++b) {
    const size_t begin = b * kInt8Block, end = std::min(n, begin + kInt8Block);
    float amax = 0;
    for (size_t i = begin; i < end; ++i) amax = std::max(amax, std::fabs(x[i]));
    const float scale = amax / 127.0f;
    scales[b] = scale;
    const float inv = scale > 0 ? 1.0f / scale : 0.0f;
    for (size_t i = begin; i < end; ++i)
      q[i] = int8_t(std::clamp(std::nearbyint(x[i] * inv), -127.0f, 127.0f));
  }
}

void dequantize_int8(const int8_t* q, const float* scales, size_t n, float* out) {
  for (size_t i = 0; i < n; ++i) out[i] = float(q[i]) * scales[i / kInt8Block];
}

void quantize_int8_feedback(const float* x, float* residual, size_t n, int8_t* q,
                            float* scales) {
  for (size_t i = 0; i < n; ++i) residual[i] += x[i];  // the values to send this step
  quantize_int8(residual, n, q, scales);
  for (size_t i = 0; i < n; ++i) residual[i] -= float(q[i]) * scales[i / kInt8Block];
}

void orthogonalize(float* P, int n, int r, float eps) {
  auto norm = [&](int j) {
    double s = 0;
    for (int i = 0; i < n; ++i) s += double(P[i * r + j]) * P[i * r + j];
    return std::sqrt(s);
  };
  for (int j = 0; j < r; ++j) {
    const double before = norm(j);
    for (int k = 0; k < j; ++k) {  // remove the earlier (unit) columns' parts
      double dot = 0;
      for (int i = 0; i < n; ++i) dot += double(P[i * r + j]) * P[i * r + k];
      for (int i = 0; i < n; ++i) P[i * r + j] -= float(dot) * P[i * r + k];
    }
    // A column the earlier ones already span leaves only round-off, in no direction of
    // the gradient's: it is dropped, not blown up to a unit column of noise.
    const double after = norm(j);
    const float inv = after <= 1e-4 * before ? 0.0f : 1.0f / (float(after) + eps);
    for (int i = 0; i < n; ++i) P[i * r + j] *= inv;
  }
}

void PowerSgd::reduce(Comm& dp, int id, float* M, int n, int m) {
  LOOM_CHECK(n > 0 && m > 0, "PowerSGD of a {} x {} matrix", n, m);
  const int r = std::min({rank_, n, m});
  State& s = state_[id];
  const size_t nm = size_t(n) * size_t(m);
  if (s.q.empty()) {  // the same random start on every rank (per parameter id)
    const Philox rng(seed_, uint64_t(id));
    s.q.resize(size_t(m) * size_t(r));
    for (size_t i = 0; i < s.q.size(); ++i) s.q[i] = rng.normal(i);
    s.error.assign(nm, 0.0f);
  }
  LOOM_CHECK(s.q.size() == size_t(m) * size_t(r) && s.error.size() == nm,
             "PowerSGD state of parameter {} does not fit a {} x {} matrix at rank {}", id, n,
             m, r);
  for (size_t i = 0; i < nm; ++i) M[i] += s.error[i];  // error feedback
  std::copy(M, M + nm, s.error.begin());               // the input, kept for the new error
  p_.resize(size_t(n) * size_t(r));
  kernels::gemm(false, false, n, r, m, 1.0f, M, m, s.q.data(), r, 0.0f, p_.data(), r);
  dp.allreduce(p_.data(), p_.size(), ReduceOp::kSum);
  orthogonalize(p_.data(), n, r);
  kernels::gemm(true, false, m, r, n, 1.0f, M, m, p_.data(), r, 0.0f, s.q.data(), r);
  dp.allreduce(s.q.data(), s.q.size(), ReduceOp::kSum);
  kernels::gemm(false, true, n, m, r, 1.0f, p_.data(), r, s.q.data(), r, 0.0f, M, m);
  const float share = 1.0f / float(dp.size());
  for (size_t i = 0; i < nm; ++i) s.error[i] -= M[i] * share;
}

}  // namespace loom
