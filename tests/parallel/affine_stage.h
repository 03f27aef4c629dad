// A fake PipelineStage whose exact answers are known: virtual stage s maps every element
// by y = a_s * x + b_s (small integers, so float arithmetic is exact), virtual stage 0
// starts from x = mb*10 + i and the last stage's loss is sum(y). Backward is the exact
// gradient: din = a_s * dout, with dout = ones on the last stage. It records what every
// (chunk, micro-batch) saw, and check() compares it with the closed forms.
// Shared by tests/parallel (one rank, in process) and tests/mpi/pipeline_test.cpp.
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "parallel/pipeline.h"

namespace loom::test {

class AffineStage final : public PipelineStage {
 public:
  static int a_of(int s) { return 1 + s % 2; }
  static int b_of(int s) { return s % 3 - 1; }

  AffineStage(int p, int rank, int m, int v, int n)
      : p_(p), rank_(rank), m_(m), v_(v), n_(n), in_(v * m), dout_(v * m), dx_(v * m),
        loss_(v * m, 0), fwd_(v * m, 0), bwd_(v * m, 0) {}

  void forward(int chunk, int mb, const float* in, float* out) override {
    const int s = chunk * p_ + rank_, k = chunk * m_ + mb;
    ++fwd_[k];
    EXPECT_EQ(in == nullptr, s == 0) << where(chunk, mb);
    EXPECT_EQ(out == nullptr, s == p_ * v_ - 1) << where(chunk, mb);
    in_[k].resize(n_);
    for (int i = 0; i < n_; ++i) in_[k][i] = in ? in[i] : float(mb * 10 + i);
    for (int i = 0; i < n_; ++i) {
      const float y = float(a_of(s)) * in_[k][i] + float(b_of(s));
      if (out) out[i] = y; else loss_[k] += y;
    }
  }

  void backward(int chunk, int mb, const float* dout, float* din) override {
    const int s = chunk * p_ + rank_, k = chunk * m_ + mb;
    ++bwd_[k];
    EXPECT_EQ(fwd_[k], 1) << "backward before forward at " << where(chunk, mb);
    EXPECT_EQ(dout == nullptr, s == p_ * v_ - 1) << where(chunk, mb);
    EXPECT_EQ(din == nullptr, s == 0) << where(chunk, mb);
    dout_[k].assign(n_, 1.0f);
    dx_[k].resize(n_);
    for (int i = 0; i < n_; ++i) {
      if (dout) dout_[k][i] = dout[i];
      dx_[k][i] = float(a_of(s)) * dout_[k][i];
      if (din) din[i] = dx_[k][i];
    }
  }

  // Every forward and backward of this rank's chunks ran exactly once and saw the exact
  // activations and gradients.
  void check() const {
    const int S = p_ * v_;
    for (int c = 0; c < v_; ++c)
      for (int mb = 0; mb < m_; ++mb) {
        const int s = c * p_ + rank_, k = c * m_ + mb;
        ASSERT_EQ(fwd_[k], 1) << where(c, mb);
        ASSERT_EQ(bwd_[k], 1) << where(c, mb);
        double loss = 0;
        for (int i = 0; i < n_; ++i) {
          double x = mb * 10 + i, g = 1;  // input of stage s, gradient of its output
          for (int t = 0; t < s; ++t) x = a_of(t) * x + b_of(t);
          for (int t = s + 1; t < S; ++t) g *= a_of(t);
          EXPECT_EQ(in_[k][i], float(x)) << where(c, mb) << " element " << i;
          EXPECT_EQ(dout_[k][i], float(g)) << where(c, mb) << " element " << i;
          EXPECT_EQ(dx_[k][i], float(g * a_of(s))) << where(c, mb) << " element " << i;
          loss += a_of(s) * x + b_of(s);
        }
        if (s == S - 1) {
          EXPECT_EQ(loss_[k], float(loss)) << where(c, mb);
        }
      }
  }

 private:
  std::string where(int chunk, int mb) const {
    return "rank " + std::to_string(rank_) + " chunk " + std::to_string(chunk) + " mb " +
           std::to_string(mb) + " (virtual stage " + std::to_string(chunk * p_ + rank_) + ")";
  }

  int p_, rank_, m_, v_, n_;
  std::vector<std::vector<float>> in_, dout_, dx_;  // [chunk * m + mb] (n)
  std::vector<float> loss_;                         // [chunk * m + mb], last stage only
  std::vector<int> fwd_, bwd_;                      // calls per [chunk * m + mb]
};

}  // namespace loom::test
