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

void PowerSgd::reduce_all(Comm& dp, const std::vector<Matrix>& mats) {
  // Each matrix's state, and where its P and Q sit in the packed buffers.
  std::vector<size_t> p_at, q_at;
  size_t p_total = 0, q_total = 0;
  for (const Matrix& x : mats) {
    LOOM_CHECK(x.n > 0 && x.m > 0, "PowerSGD of a {} x {} matrix", x.n, x.m);
    const int r = std::min({rank_, x.n, x.m});
    State& s = state_[x.id];
    const size_t nm = size_t(x.n) * size_t(x.m);
    if (s.q.empty()) {  // the same random start on every rank (per parameter id)
      const Philox rng(seed_, uint64_t(x.id));
      s.q.resize(size_t(x.m) * size_t(r));
      for (size_t i = 0; i < s.q.size(); ++i) s.q[i] = rng.normal(i);
      s.error.assign(nm, 0.0f);
    }
    LOOM_CHECK(s.q.size() == size_t(x.m) * size_t(r) && s.error.size() == nm,
               "PowerSGD state of parameter {} does not fit a {} x {} matrix at rank {}", x.id,
               x.n, x.m, r);
    p_at.push_back(p_total);
    q_at.push_back(q_total);
    p_total += size_t(x.n) * size_t(r);
    q_total += size_t(x.m) * size_t(r);
  }
  p_.resize(p_total);
  q_.resize(q_total);
  for (size_t k = 0; k < mats.size(); ++k) {  // error feedback, then P = M Q
    const Matrix& x = mats[k];
    State& s = state_[x.id];
    const int r = int(s.q.size() / size_t(x.m));
    const size_t nm = size_t(x.n) * size_t(x.m);
    for (size_t i = 0; i < nm; ++i) x.M[i] += s.error[i];
    std::copy(x.M, x.M + nm, s.error.begin());  // the input, kept for the new error
    kernels::gemm(false, false, x.n, r, x.m, 1.0f, x.M, x.m, s.q.data(), r, 0.0f,
                  p_.data() + p_at[k], r);
  }
  dp.allreduce(p_.data(), p_.size(), ReduceOp::kSum);
  for (size_t k = 0; k < mats.size(); ++k) {  // orthogonalize P, then Q = M^T P
    const Matrix& x = mats[k];
    const int r = int(state_[x.id].q.size() / size_t(x.m));
    orthogonalize(p_.data() + p_at[k], x.n, r);
    kernels::gemm(true, false, x.m, r, x.n, 1.0f, x.M, x.m, p_.data() + p_at[k], r, 0.0f,
                  q_.data() + q_at[k], r);
  }
  dp.allreduce(q_.data(), q_.size(), ReduceOp::kSum);
  const float share = 1.0f / float(dp.size());
  for (size_t k = 0; k < mats.size(); ++k) {  // M = P Q^T; error = input - M / dp
    const Matrix& x = mats[k];
    State& s = state_[x.id];
    const int r = int(s.q.size() / size_t(x.m));
    std::copy(q_.begin() + ptrdiff_t(q_at[k]), q_.begin() + ptrdiff_t(q_at[k] + s.q.size()),
              s.q.begin());  // warm start for the next step
    kernels::gemm(false, true, x.n, x.m, r, 1.0f, p_.data() + p_at[k], r, s.q.data(), r, 0.0f,
                  x.M, x.m);
    const size_t nm = size_t(x.n) * size_t(x.m);
    for (size_t i = 0; i < nm; ++i) s.error[i] -= x.M[i] * share;
  }
}

}  // namespace loom
