// Helpers for the kernel tests: seeded random data, guarded output buffers (canaries on
// both sides to catch out-of-bounds writes), normalised errors, finite differences and a
// scoped OpenMP thread count.
#pragma once

#include <gtest/gtest.h>
#include <omp.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

namespace loom::kernels::testing {

// The thread counts every kernel is run with: 1, 2 (the machine's cores) and 3 (so that
// row counts are not multiples of it).
inline const std::vector<int> kThreadCounts = {1, 2, 3};

inline std::vector<float> random_vec(size_t n, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

inline std::vector<int32_t> random_tokens(size_t n, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, vocab - 1);
  std::vector<int32_t> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

inline std::vector<double> to_double(const std::vector<float>& v) {
  return std::vector<double>(v.begin(), v.end());
}

// A NaN with a payload that no kernel produces by accident; compared bitwise.
inline float canary() { return std::bit_cast<float>(uint32_t{0x7fa5c0deu}); }
inline bool is_canary(float x) { return std::bit_cast<uint32_t>(x) == 0x7fa5c0deu; }

// n floats with kGuard canaries either side. `fill` initialises the payload: a NaN for
// outputs that must be overwritten (a kernel that reads or keeps one shows up as NaN).
class Guarded {
 public:
  static constexpr size_t kGuard = 67;
  Guarded(size_t n, float fill) : n_(n), buf_(n + 2 * kGuard, canary()) {
    std::fill(buf_.begin() + kGuard, buf_.begin() + kGuard + n, fill);
  }
  explicit Guarded(const std::vector<float>& init) : Guarded(init.size(), 0.0f) {
    std::copy(init.begin(), init.end(), data());
  }
  float* data() { return buf_.data() + kGuard; }
  const float* data() const { return buf_.data() + kGuard; }
  size_t size() const { return n_; }
  float operator[](size_t i) const { return data()[i]; }
  std::vector<float> values() const { return {data(), data() + n_}; }
  bool guards_intact() const {
    for (size_t i = 0; i < kGuard; ++i)
      if (!is_canary(buf_[i]) || !is_canary(buf_[kGuard + n_ + i])) return false;
    return true;
  }

 private:
  size_t n_;
  std::vector<float> buf_;
};

// max|a - b| / max(1, max|b|); NaN anywhere in a gives infinity.
inline double max_norm_err(const float* a, const double* b, size_t n) {
  double num = 0.0, den = 1.0;
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num = std::max(num, std::abs(double(a[i]) - b[i]));
    den = std::max(den, std::abs(b[i]));
  }
  return num / den;
}
inline double max_norm_err(const std::vector<float>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  return max_norm_err(a.data(), b.data(), std::min(a.size(), b.size()));
}
inline double max_norm_err(const Guarded& a, const std::vector<double>& b) {
  EXPECT_TRUE(a.guards_intact()) << "a kernel wrote outside its output buffer";
  EXPECT_EQ(a.size(), b.size());
  return max_norm_err(a.data(), b.data(), std::min(a.size(), b.size()));
}
inline double max_norm_err(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0.0, den = 1.0;
  for (size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, std::abs(a[i] - b[i]));
    den = std::max(den, std::abs(b[i]));
  }
  return num / den;
}

inline bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Central differences of loss() with respect to every element of x (double precision).
inline std::vector<double> numeric_grad(std::vector<double>& x, const std::function<double()>& loss,
                                        double eps = 1e-6) {
  std::vector<double> g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    x[i] = saved + eps;
    const double up = loss();
    x[i] = saved - eps;
    const double down = loss();
    x[i] = saved;
    g[i] = (up - down) / (2 * eps);
  }
  return g;
}

inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Sets the OpenMP thread count for a scope.
class ScopedThreads {
 public:
  explicit ScopedThreads(int n) : saved_(omp_get_max_threads()) { omp_set_num_threads(n); }
  ~ScopedThreads() { omp_set_num_threads(saved_); }

 private:
  int saved_;
};

// Tolerance for fp32 kernels against a double reference, normalised as in max_norm_err.
inline constexpr double kTol = 1e-5;
// Tolerance for the double reference's gradients against finite differences.
inline constexpr double kFdTol = 1e-6;

}  // namespace loom::kernels::testing
