// Causal self-attention forward/backward against the naive reference and finite
// differences.
#include "core/check.h"
#include "kernel_test_util.h"
#include "kernels/kernels.h"
#include "kernels/ref/kernels_ref.h"

namespace loom::kernels {
namespace {

using namespace testing;

struct AttSizes {
  int B, T, C, NH;
};
// T = 7 is not a power of two; T = 150 spans three 64-row blocks with a ragged last one.
constexpr AttSizes kSizes[] = {{2, 7, 24, 3}, {1, 150, 32, 2}, {2, 65, 48, 4}};

size_t qkv_size(const AttSizes& s) { return size_t(s.B) * s.T * 3 * s.C; }
size_t out_size(const AttSizes& s) { return size_t(s.B) * s.T * s.C; }
size_t att_size(const AttSizes& s) { return size_t(s.B) * s.NH * s.T * s.T; }

struct AttForward {
  std::vector<float> out, att;
};

// Runs the kernel with NaN-filled, guarded outputs; checks the guards and that the masked
// part of att is exactly 0.
AttForward run_forward(const AttSizes& s, const std::vector<float>& qkv) {
  Guarded out(out_size(s), std::nanf("")), att(att_size(s), std::nanf(""));
  attention_forward(out.data(), att.data(), qkv.data(), s.B, s.T, s.C, s.NH);
  EXPECT_TRUE(out.guards_intact());
  EXPECT_TRUE(att.guards_intact());
  for (int bh = 0; bh < s.B * s.NH; ++bh)
    for (int t = 0; t < s.T; ++t)
      for (int t2 = t + 1; t2 < s.T; ++t2)
        EXPECT_EQ(att[(size_t(bh) * s.T + t) * s.T + t2], 0.0f) << bh << " " << t << " " << t2;
  return {out.values(), att.values()};
}

TEST(Attention, ForwardMatchesReference) {
  for (const auto& s : kSizes) {
    auto qkv = random_vec(qkv_size(s), 1, -2.0f, 2.0f);
    auto qkv_d = to_double(qkv);
    std::vector<double> want_out(out_size(s)), want_att(att_size(s));
    ref::attention_forward(want_out.data(), want_att.data(), qkv_d.data(), s.B, s.T, s.C, s.NH);
    AttForward first;
    for (int threads : kThreadCounts) {
      ScopedThreads scoped(threads);
      AttForward got = run_forward(s, qkv);
      EXPECT_LT(max_norm_err(got.out, want_out), kTol) << "T=" << s.T << " threads=" << threads;
      EXPECT_LT(max_norm_err(got.att, want_att), kTol);
      if (first.out.empty()) first = got;
      EXPECT_TRUE(bitwise_equal(first.out, got.out)) << "thread-count dependent out";
      EXPECT_TRUE(bitwise_equal(first.att, got.att)) << "thread-count dependent att";
    }
  }
}

TEST(Attention, BackwardMatchesReference) {
  for (const auto& s : kSizes) {
    auto qkv = random_vec(qkv_size(s), 2, -2.0f, 2.0f), dout = random_vec(out_size(s), 3);
    AttForward fwd = run_forward(s, qkv);
    auto qkv_d = to_double(qkv), dout_d = to_double(dout), att_d = to_double(fwd.att);
    std::vector<double> want(qkv_size(s));
    ref::attention_backward(want.data(), dout_d.data(), qkv_d.data(), att_d.data(), s.B, s.T, s.C,
                            s.NH);
    const size_t scratch_n = attention_backward_scratch(s.B, s.T, s.C, s.NH);
    EXPECT_GE(scratch_n, size_t(s.B) * s.NH * s.T * s.T);
    std::vector<float> first;
    for (int threads : kThreadCounts) {
      ScopedThreads scoped(threads);
      // NaN scratch: reading any scratch entry it has not written shows up in dqkv.
      Guarded dqkv(qkv_size(s), std::nanf("")), scratch(scratch_n, std::nanf(""));
      attention_backward(dqkv.data(), scratch.data(), dout.data(), qkv.data(), fwd.att.data(), s.B,
                         s.T, s.C, s.NH);
      EXPECT_TRUE(scratch.guards_intact());
      EXPECT_LT(max_norm_err(dqkv, want), kTol) << "T=" << s.T << " threads=" << threads;
      if (first.empty()) first = dqkv.values();
      EXPECT_TRUE(bitwise_equal(first, dqkv.values())) << "thread-count dependent dqkv";
    }
  }
}

TEST(Attention, GradientsMatchFiniteDifferences) {
  for (const AttSizes s : {kSizes[0], AttSizes{1, 70, 8, 2}}) {
    auto qkv = to_double(random_vec(qkv_size(s), 4, -1.5f, 1.5f));
    auto R = random_vec(out_size(s), 5);
    auto Rd = to_double(R);
    std::vector<double> out(out_size(s)), att(att_size(s));
    auto loss = [&] {
      ref::attention_forward(out.data(), att.data(), qkv.data(), s.B, s.T, s.C, s.NH);
      return dot(out, Rd);
    };
    auto num = numeric_grad(qkv, loss);
    loss();
    std::vector<double> dqkv_ref(qkv.size());
    ref::attention_backward(dqkv_ref.data(), Rd.data(), qkv.data(), att.data(), s.B, s.T, s.C,
                            s.NH);
    EXPECT_LT(max_norm_err(dqkv_ref, num), kFdTol);

    std::vector<float> qkv_f(qkv.begin(), qkv.end()), out_f(out.size()), att_f(att.size());
    attention_forward(out_f.data(), att_f.data(), qkv_f.data(), s.B, s.T, s.C, s.NH);
    std::vector<float> dqkv(qkv.size()), scratch(attention_backward_scratch(s.B, s.T, s.C, s.NH));
    attention_backward(dqkv.data(), scratch.data(), R.data(), qkv_f.data(), att_f.data(), s.B, s.T,
                       s.C, s.NH);
    EXPECT_LT(max_norm_err(dqkv, num), kTol) << "T=" << s.T;
  }
}

TEST(Attention, RepeatedCallIsBitwiseIdentical) {
  const AttSizes s{4, 96, 64, 4};
  auto qkv = random_vec(qkv_size(s), 6), dout = random_vec(out_size(s), 7);
  std::vector<float> scratch(attention_backward_scratch(s.B, s.T, s.C, s.NH));
  std::vector<float> out1(out_size(s)), att1(att_size(s)), d1(qkv_size(s));
  std::vector<float> out2(out_size(s)), att2(att_size(s)), d2(qkv_size(s));
  attention_forward(out1.data(), att1.data(), qkv.data(), s.B, s.T, s.C, s.NH);
  attention_backward(d1.data(), scratch.data(), dout.data(), qkv.data(), att1.data(), s.B, s.T, s.C,
                     s.NH);
  attention_forward(out2.data(), att2.data(), qkv.data(), s.B, s.T, s.C, s.NH);
  attention_backward(d2.data(), scratch.data(), dout.data(), qkv.data(), att2.data(), s.B, s.T, s.C,
                     s.NH);
  EXPECT_TRUE(bitwise_equal(out1, out2));
  EXPECT_TRUE(bitwise_equal(att1, att2));
  EXPECT_TRUE(bitwise_equal(d1, d2));
}

TEST(Attention, RejectsHeadsThatDoNotDivideChannels) {
  std::vector<float> buf(1024);
  EXPECT_THROW(attention_forward(buf.data(), buf.data(), buf.data(), 1, 2, 10, 3), Error);
}

}  // namespace
}  // namespace loom::kernels
