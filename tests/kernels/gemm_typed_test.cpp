// The mixed-precision GEMM and the dtype conversions (issue 13): bf16 and fp16 inputs with
// fp32 accumulation equal the double product of the rounded inputs to fp32 round-off, for
// every transpose, strided operands, alpha and beta; conversions round to nearest even.
#include <fmt/format.h>

#include <bit>
#include <cmath>
#include <limits>

#include "core/check.h"
#include "kernel_test_util.h"
#include "kernels/kernels.h"

namespace loom::kernels {
namespace {

using namespace testing;

// x through a 16-bit type and back.
float round_trip(float x, DType t) {
  uint16_t h;
  convert(&h, t, &x, DType::kF32, 1);
  float back;
  convert(&back, DType::kF32, &h, t, 1);
  return back;
}
float bf16_round(float x) { return round_trip(x, DType::kBF16); }
float f16_round(float x) { return round_trip(x, DType::kF16); }

uint16_t bf16_bits(float x) {
  uint16_t h;
  convert(&h, DType::kBF16, &x, DType::kF32, 1);
  return h;
}

TEST(Convert, Bf16RoundsToNearestEven) {
  EXPECT_EQ(bf16_bits(1.0f), 0x3f80);
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1).
  EXPECT_EQ(bf16_bits(1.0f + 0x1p-8f), 0x3f80);
  // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even): up.
  EXPECT_EQ(bf16_bits(1.0f + 3 * 0x1p-8f), 0x3f82);
  EXPECT_EQ(bf16_bits(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);  // past the tie: up
  EXPECT_EQ(bf16_bits(-2.0f), 0xc000);
  EXPECT_TRUE(std::isinf(bf16_round(std::numeric_limits<float>::max())));  // rounds up to inf
  EXPECT_TRUE(std::isinf(bf16_round(INFINITY)));
  EXPECT_TRUE(std::isnan(bf16_round(std::nanf(""))));
  // A NaN whose payload sits only in the low 16 bits must not become inf.
  EXPECT_TRUE(std::isnan(bf16_round(std::bit_cast<float>(uint32_t{0x7f800001u}))));
  EXPECT_EQ(bf16_round(0x1p-130f), 0x1p-130f);  // bf16 keeps fp32's exponent range
}

TEST(Convert, Fp16RoundsToNearestEvenAndOverflowsToInf) {
  EXPECT_EQ(f16_round(1.0f + 0x1p-11f), 1.0f);                 // tie -> even
  EXPECT_EQ(f16_round(1.0f + 3 * 0x1p-11f), 1.0f + 0x1p-9f);   // tie -> even (up)
  EXPECT_EQ(f16_round(65504.0f), 65504.0f);                    // the largest fp16
  EXPECT_TRUE(std::isinf(f16_round(65520.0f)));                // halfway past it: inf
  EXPECT_EQ(f16_round(0x1p-24f), 0x1p-24f);                    // the smallest subnormal
  EXPECT_EQ(f16_round(0x1p-26f), 0.0f);                        // underflows
  EXPECT_TRUE(std::isnan(f16_round(std::nanf(""))));
}

TEST(Convert, ManyElementsMatchOneByOne) {
  const auto x = random_vec(10007, 3, -1e4f, 1e4f);
  for (DType t : {DType::kBF16, DType::kF16}) {
    std::vector<uint16_t> h(x.size());
    std::vector<float> back(x.size());
    convert(h.data(), t, x.data(), DType::kF32, x.size());
    convert(back.data(), DType::kF32, h.data(), t, x.size());
    for (size_t i = 0; i < x.size(); i += 97)
      EXPECT_EQ(back[i], t == DType::kBF16 ? bf16_round(x[i]) : f16_round(x[i])) << i;
  }
}

struct TypedCase {
  DType t;
  bool ta, tb;
};

class GemmTypedTest : public ::testing::TestWithParam<TypedCase> {};

// op(A) (M,K) @ op(B) (K,N) with padded strides, alpha 0.5 and beta 0.75 over a C that holds
// values, against the double product of the rounded inputs.
TEST_P(GemmTypedTest, MatchesTheProductOfTheRoundedInputs) {
  const TypedCase c = GetParam();
  if (!gemm_typed_available(c.t)) {
    // Where oneDNN has no such matmul, the call fails loudly (and never computes).
    ASSERT_FALSE(c.t == DType::kBF16 && __builtin_cpu_supports("avx512f"))
        << "oneDNN has bf16 matmul on every AVX-512 CPU";
    std::vector<uint16_t> x(64 * 64);
    std::vector<float> y(64 * 64);
    try {
      gemm_typed(c.t, c.ta, c.tb, 64, 64, 64, 1.0f, x.data(), 64, x.data(), 64, 0.0f, y.data(),
                 64);
      FAIL() << "gemm_typed ran a matmul oneDNN says it does not have";
    } catch (const Error& e) {
      const std::string want = fmt::format("has no {} matmul", dtype_name(c.t));
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
    }
    return;
  }
  const int M = 37, N = 53, K = 300;
  const int lda = (c.ta ? M : K) + 3, ldb = (c.tb ? K : N) + 5, ldc = N + 2;
  const size_t a_rows = c.ta ? K : M, b_rows = c.tb ? N : K;
  const auto a = random_vec(a_rows * lda, 5), b = random_vec(b_rows * ldb, 6);
  const auto c0 = random_vec(size_t(M) * ldc, 7);
  std::vector<uint16_t> a16(a.size()), b16(b.size());
  convert(a16.data(), c.t, a.data(), DType::kF32, a.size());
  convert(b16.data(), c.t, b.data(), DType::kF32, b.size());
  std::vector<float> ar(a.size()), br(b.size());
  convert(ar.data(), DType::kF32, a16.data(), c.t, a.size());
  convert(br.data(), DType::kF32, b16.data(), c.t, b.size());
  std::vector<double> want(size_t(M) * N);
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      double s = 0;
      for (int k = 0; k < K; ++k) {
        const double x = c.ta ? ar[size_t(k) * lda + i] : ar[size_t(i) * lda + k];
        const double y = c.tb ? br[size_t(j) * ldb + k] : br[size_t(k) * ldb + j];
        s += x * y;
      }
      want[size_t(i) * N + j] = 0.5 * s + 0.75 * c0[size_t(i) * ldc + j];
    }
  auto run = [&] {
    Guarded out(c0);
    gemm_typed(c.t, c.ta, c.tb, M, N, K, 0.5f, a16.data(), lda, b16.data(), ldb, 0.75f,
               out.data(), ldc);
    EXPECT_TRUE(out.guards_intact());
    std::vector<float> got(size_t(M) * N);
    for (int i = 0; i < M; ++i)
      for (int j = 0; j < N; ++j) {
        got[size_t(i) * N + j] = out[size_t(i) * ldc + j];
        if (j + 1 == N) {
          EXPECT_EQ(out[size_t(i) * ldc + N], c0[size_t(i) * ldc + N]);  // padding untouched
        }
      }
    return got;
  };
  // Bitwise run to run at a thread count (what resume needs); within round-off across them.
  for (int threads : kThreadCounts) {
    ScopedThreads scoped(threads);
    const std::vector<float> got = run();
    EXPECT_LT(max_norm_err(got, want), kTol) << dtype_name(c.t) << " threads=" << threads;
    EXPECT_TRUE(bitwise_equal(run(), got)) << "a repeated call changed the result";
  }
  EXPECT_FALSE(gemm_typed_impl(c.t, c.ta, c.tb, M, N, K).empty());
}

INSTANTIATE_TEST_SUITE_P(
    LowPrecision, GemmTypedTest,
    ::testing::Values(TypedCase{DType::kBF16, false, false}, TypedCase{DType::kBF16, false, true},
                      TypedCase{DType::kBF16, true, false}, TypedCase{DType::kBF16, true, true},
                      TypedCase{DType::kF16, false, false}, TypedCase{DType::kF16, false, true},
                      TypedCase{DType::kF16, true, false}, TypedCase{DType::kF16, true, true}),
    [](const auto& info) {
      return std::string(dtype_name(info.param.t)) + (info.param.ta ? "_T" : "_N") +
             (info.param.tb ? "T" : "N");
    });

}  // namespace
}  // namespace loom::kernels
