// Blocked online-softmax attention (flash_attention_*) against the naive double reference,
// finite differences and the (T,T) kernel it replaces.
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
// T = 7 and 65 are inside one tile (128); 150, 200 and 257 span two and three tiles with a
// ragged last one; HS = 8, 16, 12, 64 (GPT-2's), 12.
constexpr AttSizes kSizes[] = {
    {2, 7, 24, 3}, {1, 150, 32, 2}, {2, 65, 48, 4}, {1, 257, 128, 2}, {2, 200, 36, 3}};

size_t qkv_size(const AttSizes& s) { return size_t(s.B) * s.T * 3 * s.C; }
size_t out_size(const AttSizes& s) { return size_t(s.B) * s.T * s.C; }
size_t lse_size(const AttSizes& s) { return size_t(s.B) * s.NH * s.T; }
size_t att_size(const AttSizes& s) { return size_t(s.B) * s.NH * s.T * s.T; }

// lse (B,NH,T): log sum_{t2 <= t} exp(scale * q_t . k_t2), from the scores in double.
std::vector<double> ref_lse(const std::vector<double>& qkv, const AttSizes& s) {
  const int HS = s.C / s.NH, C3 = 3 * s.C;
  const double scale = 1.0 / std::sqrt(double(HS));
  std::vector<double> lse(lse_size(s)), sc(s.T);
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.NH; ++h)
      for (int t = 0; t < s.T; ++t) {
        const double* q = &qkv[(size_t(b) * s.T + t) * C3 + h * HS];
        double mx = -1e300, sum = 0.0;
        for (int t2 = 0; t2 <= t; ++t2) {
          const double* k = &qkv[(size_t(b) * s.T + t2) * C3 + s.C + h * HS];
          double dot = 0.0;
          for (int i = 0; i < HS; ++i) dot += q[i] * k[i];
          mx = std::max(mx, sc[t2] = dot * scale);
        }
        for (int t2 = 0; t2 <= t; ++t2) sum += std::exp(sc[t2] - mx);
        lse[(size_t(b) * s.NH + h) * s.T + t] = mx + std::log(sum);
      }
  return lse;
}

struct FlashForward {
  std::vector<float> out, lse;
};

// Runs the forward into NaN-filled, guarded outputs (an element left unwritten stays NaN
// and fails every comparison) and checks the guards.
FlashForward run_forward(const AttSizes& s, const std::vector<float>& qkv) {
  Guarded out(out_size(s), std::nanf("")), lse(lse_size(s), std::nanf(""));
  flash_attention_forward(out.data(), lse.data(), qkv.data(), s.B, s.T, s.C, s.NH);
  EXPECT_TRUE(out.guards_intact());
  EXPECT_TRUE(lse.guards_intact());
  return {out.values(), lse.values()};
}

// Runs the backward into a NaN-filled dqkv with NaN-filled scratch (a read of scratch the
// kernel has not written shows up in dqkv) and checks the guards.
std::vector<float> run_backward(const AttSizes& s, const std::vector<float>& qkv,
                                const std::vector<float>& dout, const FlashForward& fwd) {
  Guarded dqkv(qkv_size(s), std::nanf(""));
  Guarded scratch(flash_attention_backward_scratch(s.B, s.T, s.C, s.NH), std::nanf(""));
  flash_attention_backward(dqkv.data(), scratch.data(), dout.data(), qkv.data(), fwd.out.data(),
                           fwd.lse.data(), s.B, s.T, s.C, s.NH);
  EXPECT_TRUE(dqkv.guards_intact());
  EXPECT_TRUE(scratch.guards_intact());
  return dqkv.values();
}

TEST(FlashAttention, ForwardMatchesReference) {
  for (const auto& s : kSizes) {
    auto qkv = random_vec(qkv_size(s), 11, -2.0f, 2.0f);
    auto qkv_d = to_double(qkv);
    std::vector<double> want_out(out_size(s)), want_att(att_size(s));
    ref::attention_forward(want_out.data(), want_att.data(), qkv_d.data(), s.B, s.T, s.C, s.NH);
    const auto want_lse = ref_lse(qkv_d, s);
    FlashForward first;
    for (int threads : kThreadCounts) {
      ScopedThreads scoped(threads);
      FlashForward got = run_forward(s, qkv);
      EXPECT_LT(max_norm_err(got.out, want_out), kTol) << "T=" << s.T << " threads=" << threads;
      EXPECT_LT(max_norm_err(got.lse, want_lse), kTol) << "T=" << s.T << " threads=" << threads;
      if (first.out.empty()) first = got;
      EXPECT_TRUE(bitwise_equal(first.out, got.out)) << "thread-count dependent out";
      EXPECT_TRUE(bitwise_equal(first.lse, got.lse)) << "thread-count dependent lse";
    }
  }
}

// The double reference's forward output and backward dqkv for float inputs.
struct RefPass {
  std::vector<double> qkv, out, dqkv;
};
RefPass reference_pass(const AttSizes& s, const std::vector<float>& qkv,
                       const std::vector<float>& dout) {
  RefPass r{to_double(qkv), std::vector<double>(out_size(s)), std::vector<double>(qkv_size(s))};
  const std::vector<double> dout_d = to_double(dout);
  std::vector<double> att(att_size(s));
  ref::attention_forward(r.out.data(), att.data(), r.qkv.data(), s.B, s.T, s.C, s.NH);
  ref::attention_backward(r.dqkv.data(), dout_d.data(), r.qkv.data(), att.data(), s.B, s.T, s.C,
                          s.NH);
  return r;
}

TEST(FlashAttention, BackwardMatchesReference) {
  for (const auto& s : kSizes) {
    auto qkv = random_vec(qkv_size(s), 12, -2.0f, 2.0f), dout = random_vec(out_size(s), 13);
    const RefPass ref_pass = reference_pass(s, qkv, dout);
    const std::vector<double>& want = ref_pass.dqkv;
    const FlashForward fwd = run_forward(s, qkv);
    std::vector<float> first;
    for (int threads : kThreadCounts) {
      ScopedThreads scoped(threads);
      auto dqkv = run_backward(s, qkv, dout, fwd);
      EXPECT_LT(max_norm_err(dqkv, want), kTol) << "T=" << s.T << " threads=" << threads;
      if (first.empty()) first = dqkv;
      EXPECT_TRUE(bitwise_equal(first, dqkv)) << "thread-count dependent dqkv";
    }
  }
}

TEST(FlashAttention, GradientsMatchFiniteDifferences) {
  // T = 150 spans two query and two key blocks, the second ragged; HS = 4 keeps the 7,200
  // double forwards cheap.
  for (const AttSizes s : {kSizes[0], AttSizes{1, 150, 8, 2}}) {
    auto qkv = to_double(random_vec(qkv_size(s), 14, -1.5f, 1.5f));
    auto R = random_vec(out_size(s), 15);
    auto Rd = to_double(R);
    std::vector<double> out(out_size(s)), att(att_size(s));
    auto loss = [&] {
      ref::attention_forward(out.data(), att.data(), qkv.data(), s.B, s.T, s.C, s.NH);
      return dot(out, Rd);
    };
    auto num = numeric_grad(qkv, loss);

    std::vector<float> qkv_f(qkv.begin(), qkv.end());
    const FlashForward fwd = run_forward(s, qkv_f);
    EXPECT_LT(max_norm_err(run_backward(s, qkv_f, R, fwd), num), kTol) << "T=" << s.T;
  }
}

// The same results as the (T,T) kernel, to fp32 round-off.
TEST(FlashAttention, MatchesAttentionKernel) {
  for (const auto& s : kSizes) {
    auto qkv = random_vec(qkv_size(s), 16, -2.0f, 2.0f), dout = random_vec(out_size(s), 17);
    std::vector<float> out(out_size(s)), att(att_size(s)), dqkv(qkv_size(s));
    std::vector<float> scratch(attention_backward_scratch(s.B, s.T, s.C, s.NH));
    attention_forward(out.data(), att.data(), qkv.data(), s.B, s.T, s.C, s.NH);
    attention_backward(dqkv.data(), scratch.data(), dout.data(), qkv.data(), att.data(), s.B, s.T,
                       s.C, s.NH);
    const FlashForward fwd = run_forward(s, qkv);
    EXPECT_LT(max_norm_err(fwd.out, to_double(out)), kTol) << "T=" << s.T;
    EXPECT_LT(max_norm_err(run_backward(s, qkv, dout, fwd), to_double(dqkv)), kTol) << "T=" << s.T;
  }
}

// Scores of +-100 overflow exp without the running max; keys growing with t move each
// row's max in every later key block, so the rescaling of the partial output is exercised.
TEST(FlashAttention, LargeScoresAreStable) {
  const AttSizes s{2, 257, 24, 3};
  auto qkv = random_vec(qkv_size(s), 18, -6.0f, 6.0f), dout = random_vec(out_size(s), 19);
  for (int t = 0; t < s.T; ++t)
    for (int c = s.C; c < 2 * s.C; ++c) qkv[size_t(t) * 3 * s.C + c] *= 0.5f + float(t) / s.T;
  const RefPass ref_pass = reference_pass(s, qkv, dout);
  const std::vector<double>& out_d = ref_pass.out;
  const std::vector<double>& want = ref_pass.dqkv;
  const std::vector<double>& qkv_d = ref_pass.qkv;
  const FlashForward fwd = run_forward(s, qkv);
  EXPECT_LT(max_norm_err(fwd.out, out_d), kTol);
  EXPECT_LT(max_norm_err(fwd.lse, ref_lse(qkv_d, s)), kTol);
  EXPECT_LT(max_norm_err(run_backward(s, qkv, dout, fwd), want), kTol);
}

// Scratch left dirty by an earlier call (not NaN this time) changes nothing.
TEST(FlashAttention, RepeatedCallIsBitwiseIdentical) {
  const AttSizes s{4, 96, 64, 4};
  auto qkv = random_vec(qkv_size(s), 20), dout = random_vec(out_size(s), 21);
  std::vector<float> scratch(flash_attention_backward_scratch(s.B, s.T, s.C, s.NH));
  FlashForward f[2];
  std::vector<float> d[2];
  for (int r = 0; r < 2; ++r) {
    f[r] = {std::vector<float>(out_size(s)), std::vector<float>(lse_size(s))};
    d[r].resize(qkv_size(s));
    flash_attention_forward(f[r].out.data(), f[r].lse.data(), qkv.data(), s.B, s.T, s.C, s.NH);
    flash_attention_backward(d[r].data(), scratch.data(), dout.data(), qkv.data(), f[r].out.data(),
                             f[r].lse.data(), s.B, s.T, s.C, s.NH);
  }
  EXPECT_TRUE(bitwise_equal(f[0].out, f[1].out));
  EXPECT_TRUE(bitwise_equal(f[0].lse, f[1].lse));
  EXPECT_TRUE(bitwise_equal(d[0], d[1]));
}

// The output held in bf16 or fp16 (autocast's rounded attention output) gives bitwise the
// gradients of the same rounded values held in fp32.
TEST(FlashAttention, BackwardReadsALowPrecisionOutputAsItsFp32Values) {
  for (const AttSizes& s : kSizes)
    for (DType t : {DType::kBF16, DType::kF16}) {
      auto qkv = random_vec(qkv_size(s), 30), dout = random_vec(out_size(s), 31);
      FlashForward fwd = run_forward(s, qkv);
      std::vector<uint16_t> low(out_size(s));
      convert(low.data(), t, fwd.out.data(), DType::kF32, low.size());
      convert(fwd.out.data(), DType::kF32, low.data(), t, low.size());  // the rounded values
      const std::vector<float> want = run_backward(s, qkv, dout, fwd);
      Guarded dqkv(qkv_size(s), std::nanf(""));
      std::vector<float> scratch(flash_attention_backward_scratch(s.B, s.T, s.C, s.NH));
      flash_attention_backward(dqkv.data(), scratch.data(), dout.data(), qkv.data(), low.data(),
                               t, fwd.lse.data(), s.B, s.T, s.C, s.NH);
      EXPECT_TRUE(dqkv.guards_intact());
      EXPECT_TRUE(bitwise_equal(dqkv.values(), want)) << dtype_name(t) << " T=" << s.T;
    }
}

// The point of the kernel: scratch grows linearly in T (the (T,T) kernel's is B*NH*T^2).
TEST(FlashAttention, ScratchIsLinearInT) {
  const int B = 4, C = 768, NH = 12;
  for (int T : {1024, 4096}) {
    const size_t n = flash_attention_backward_scratch(B, T, C, NH);
    const size_t n2 = flash_attention_backward_scratch(B, 2 * T, C, NH);
    EXPECT_LE(n2, 2 * n) << "T=" << T;
    EXPECT_LT(n, attention_backward_scratch(B, T, C, NH) / 8) << "T=" << T;
  }
}

TEST(FlashAttention, RejectsHeadsThatDoNotDivideChannels) {
  std::vector<float> buf(1024);
  EXPECT_THROW(flash_attention_forward(buf.data(), buf.data(), buf.data(), 1, 2, 10, 3), Error);
  EXPECT_THROW(flash_attention_backward(buf.data(), buf.data(), buf.data(), buf.data(), buf.data(),
                                        buf.data(), 1, 2, 10, 3),
               Error);
  EXPECT_THROW(flash_attention_backward_scratch(1, 2, 10, 3), Error);
}

}  // namespace
}  // namespace loom::kernels
