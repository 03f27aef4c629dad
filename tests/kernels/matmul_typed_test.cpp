// The linear layer in a compute precision (issue 13): forward and backward equal the double
// products of the operands rounded to bf16 / fp16 (input, weight and the output gradient),
// the bias and its gradient in fp32; whatever the stage size (the head's column blocks);
// fp32 is the fp32 layer bitwise; nothing written outside its outputs.
#include <fmt/format.h>

#include <cstring>

#include "core/check.h"
#include "kernel_test_util.h"
#include "kernels/kernels.h"

namespace loom::kernels {
namespace {

using namespace testing;

std::vector<double> rounded(DType t, const std::vector<float>& x) {
  std::vector<float> r(x.size());
  round_to(t, r.data(), x.data(), x.size());
  return to_double(r);
}

// x (n fp32) in compute_storage(t).
std::vector<std::byte> stored(DType t, const std::vector<float>& x) {
  std::vector<std::byte> out(x.size() * dtype_size(compute_storage(t)));
  to_compute(t, out.data(), x.data(), x.size());
  return out;
}

struct Sizes {
  int N, C, OC;
};

void check(DType t, Sizes z, size_t stage_elems) {
  const auto [N, C, OC] = z;
  SCOPED_TRACE(
      fmt::format("{} N={} C={} OC={} stage={}", dtype_name(t), N, C, OC, stage_elems));
  const auto inp = random_vec(size_t(N) * C, 1), w = random_vec(size_t(OC) * C, 2),
             b = random_vec(OC, 3), dout = random_vec(size_t(N) * OC, 4, -1e-3f, 1e-3f);
  const auto dw0 = random_vec(size_t(OC) * C, 5), db0 = random_vec(OC, 6);
  const std::vector<double> ri = rounded(t, inp), rw = rounded(t, w), rd = rounded(t, dout);
  std::vector<double> out(size_t(N) * OC), dinp(size_t(N) * C, 0.0), dw(dw0.begin(), dw0.end()),
      db(db0.begin(), db0.end());
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < OC; ++o) {
      double acc = b[o];
      for (int c = 0; c < C; ++c) acc += ri[size_t(n) * C + c] * rw[size_t(o) * C + c];
      out[size_t(n) * OC + o] = acc;
      const double g = rd[size_t(n) * OC + o];
      db[o] += dout[size_t(n) * OC + o];  // fp32 dout: the bias gradient is not rounded
      for (int c = 0; c < C; ++c) {
        dinp[size_t(n) * C + c] += g * rw[size_t(o) * C + c];
        dw[size_t(o) * C + c] += g * ri[size_t(n) * C + c];
      }
    }
  const auto si = stored(t, inp), sw = stored(t, w);
  Guarded got_out(size_t(N) * OC, NAN), got_dinp(size_t(N) * C, NAN), got_dw(dw0), got_db(db0);
  matmul_forward_typed(t, got_out.data(), si.data(), sw.data(), b.data(), N, C, OC);
  EXPECT_LT(max_norm_err(got_out, out), kTol);
  std::vector<std::byte> stage(stage_elems * dtype_size(compute_storage(t)));
  matmul_backward_typed(t, got_dinp.data(), got_dw.data(), got_db.data(), dout.data(), si.data(),
                        sw.data(), stage.data(), stage_elems, N, C, OC);
  // The gradients are ~1e-3: relative to their own scale.
  const double gscale = 1e-3;
  auto scaled = [&](const Guarded& g, const std::vector<double>& want) {
    std::vector<double> a(g.size()), e(want.size());
    for (size_t i = 0; i < a.size(); ++i) a[i] = g[i] / gscale;
    for (size_t i = 0; i < e.size(); ++i) e[i] = want[i] / gscale;
    EXPECT_TRUE(g.guards_intact());
    return max_norm_err(a, e);
  };
  EXPECT_LT(scaled(got_dinp, dinp), kTol);
  EXPECT_LT(max_norm_err(got_dw, dw), kTol);
  EXPECT_LT(max_norm_err(got_db, db), kTol);
}

TEST(MatmulTyped, EqualsTheRoundedProductsInEveryStageSize) {
  for (DType t : {DType::kBF16, DType::kF16})
    for (Sizes z : {Sizes{37, 24, 50}, Sizes{64, 48, 96}, Sizes{1, 8, 3}})
      for (size_t stage : {size_t(z.N) * z.OC, size_t(z.N) * 7, size_t(z.N)}) check(t, z, stage);
}

TEST(MatmulTyped, Fp32IsTheFp32LayerBitwise) {
  const int N = 33, C = 40, OC = 72;
  const auto inp = random_vec(size_t(N) * C, 1), w = random_vec(size_t(OC) * C, 2),
             b = random_vec(OC, 3), dout = random_vec(size_t(N) * OC, 4);
  std::vector<float> o1(size_t(N) * OC), o2(o1.size());
  matmul_forward(o1.data(), inp.data(), w.data(), b.data(), N, C, OC);
  matmul_forward_typed(DType::kF32, o2.data(), inp.data(), w.data(), b.data(), N, C, OC);
  EXPECT_TRUE(bitwise_equal(o1, o2));
  std::vector<float> di1(size_t(N) * C), di2(di1.size()), dw1(size_t(OC) * C, 0.5f), dw2 = dw1,
      db1(OC, 0.25f), db2 = db1;
  matmul_backward(di1.data(), dw1.data(), db1.data(), dout.data(), inp.data(), w.data(), N, C, OC);
  matmul_backward_typed(DType::kF32, di2.data(), dw2.data(), db2.data(), dout.data(), inp.data(),
                        w.data(), nullptr, 0, N, C, OC);
  EXPECT_TRUE(bitwise_equal(di1, di2) && bitwise_equal(dw1, dw2) && bitwise_equal(db1, db2));
}

TEST(MatmulTyped, StorageAndRounding) {
  EXPECT_EQ(compute_storage(DType::kF32), DType::kF32);
  for (DType t : {DType::kBF16, DType::kF16})
    EXPECT_EQ(compute_storage(t), gemm_typed_available(t) ? t : DType::kF32) << dtype_name(t);
  // Round to nearest even, in place.
  std::vector<float> x{1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, 1.0f + 0x1p-11f, 1.0f + 3 * 0x1p-11f};
  round_to(DType::kBF16, x.data(), x.data(), 2);
  round_to(DType::kF16, x.data() + 2, x.data() + 2, 2);
  EXPECT_EQ(x[0], 1.0f);
  EXPECT_EQ(x[1], 1.0f + 0x1p-6f);
  EXPECT_EQ(x[2], 1.0f);
  EXPECT_EQ(x[3], 1.0f + 0x1p-9f);
  // fp16 overflows to inf (what loss scaling detects).
  float big = 70000.0f;
  round_to(DType::kF16, &big, &big, 1);
  EXPECT_TRUE(std::isinf(big));
}

TEST(MatmulTyped, ATooSmallStageIsAnError) {
  std::vector<float> g(6), in(6), w(4), dw(4), di(6);
  std::vector<std::byte> st(8);
  EXPECT_THROW(matmul_backward_typed(DType::kBF16, di.data(), dw.data(), nullptr, g.data(),
                                     in.data(), w.data(), st.data(), 2, 3, 2, 2),
               Error);
}

}  // namespace
}  // namespace loom::kernels
