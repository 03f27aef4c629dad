// GEMM facade: both backends against a naive GEMM, all transpose combinations, strides
// larger than the minimum, alpha/beta, and the padding columns of C left untouched.
#include <dnnl.h>

#include "core/check.h"
#include "kernel_test_util.h"
#include "kernels/internal.h"
#include "kernels/kernels.h"
#include "kernels/ref/kernels_ref.h"

namespace loom::kernels {
namespace {

using namespace testing;

struct GemmCase {
  GemmBackend backend;
  bool trans_a, trans_b;
};

std::string case_name(const ::testing::TestParamInfo<GemmCase>& info) {
  const GemmCase& c = info.param;
  return std::string(gemm_backend_name(c.backend)) + (c.trans_a ? "_T" : "_N") +
         (c.trans_b ? "T" : "N");
}

class GemmTest : public ::testing::TestWithParam<GemmCase> {};

// Checks C = alpha op(A) op(B) + beta C for one beta, with C's padding columns and the
// buffer's surroundings filled with canaries.
void check_gemm(const GemmCase& gc, float beta, int threads) {
  ScopedThreads scoped(threads);
  const int M = 37, N = 29, K = 43;
  const int lda = (gc.trans_a ? M : K) + 5, ldb = (gc.trans_b ? K : N) + 3, ldc = N + 7;
  const int a_rows = gc.trans_a ? K : M, b_rows = gc.trans_b ? N : K;
  std::vector<float> A = random_vec(size_t(a_rows) * lda, 1),
                     B = random_vec(size_t(b_rows) * ldb, 2);
  std::vector<float> c0 = random_vec(size_t(M) * ldc, 3);
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < ldc; ++j) {
      float& c = c0[size_t(i) * ldc + j];
      if (j >= N)
        c = canary();  // padding: must stay untouched
      else if (beta == 0.0f)
        c = std::nanf("");  // beta 0: C must not be read
    }
  Guarded C(c0);
  const float alpha = 0.75f;
  gemm(gc.backend, gc.trans_a, gc.trans_b, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta,
       C.data(), ldc);

  std::vector<double> want = to_double(c0);
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j)
      if (beta == 0.0f) want[size_t(i) * ldc + j] = 0.0;
  std::vector<double> Ad = to_double(A), Bd = to_double(B);
  ref::gemm<double>(gc.trans_a, gc.trans_b, M, N, K, alpha, Ad.data(), lda, Bd.data(), ldb, beta,
                    want.data(), ldc);
  EXPECT_TRUE(C.guards_intact());
  for (int i = 0; i < M; ++i)
    for (int j = N; j < ldc; ++j)
      ASSERT_TRUE(is_canary(C[size_t(i) * ldc + j])) << "padding of C written at " << i << "," << j;
  for (int i = 0; i < M; ++i)
    for (int j = N; j < ldc; ++j)
      want[size_t(i) * ldc + j] = 0.0, C.data()[size_t(i) * ldc + j] = 0.0f;
  EXPECT_LT(max_norm_err(C, want), kTol) << "beta=" << beta << " threads=" << threads;
}

TEST_P(GemmTest, MatchesNaiveGemm) {
  for (int threads : kThreadCounts) {
    check_gemm(GetParam(), 0.0f, threads);
    check_gemm(GetParam(), -0.5f, threads);
    check_gemm(GetParam(), 1.0f, threads);
  }
}

TEST_P(GemmTest, RepeatedCallIsBitwiseIdentical) {
  const GemmCase gc = GetParam();
  const int M = 64, N = 96, K = 80;
  std::vector<float> A = random_vec(size_t(M) * K, 4), B = random_vec(size_t(K) * N, 5);
  std::vector<float> c1(size_t(M) * N), c2(size_t(M) * N);
  for (int threads : {1, 2}) {
    ScopedThreads scoped(threads);
    const int lda = gc.trans_a ? M : K, ldb = gc.trans_b ? K : N;
    gemm(gc.backend, gc.trans_a, gc.trans_b, M, N, K, 1.0f, A.data(), lda, B.data(), ldb, 0.0f,
         c1.data(), N);
    gemm(gc.backend, gc.trans_a, gc.trans_b, M, N, K, 1.0f, A.data(), lda, B.data(), ldb, 0.0f,
         c2.data(), N);
    EXPECT_TRUE(bitwise_equal(c1, c2)) << "threads=" << threads;
  }
}

INSTANTIATE_TEST_SUITE_P(AllTransposes, GemmTest,
                         ::testing::Values(GemmCase{GemmBackend::kOneDnn, false, false},
                                           GemmCase{GemmBackend::kOneDnn, false, true},
                                           GemmCase{GemmBackend::kOneDnn, true, false},
                                           GemmCase{GemmBackend::kOneDnn, true, true},
                                           GemmCase{GemmBackend::kOpenBlas, false, false},
                                           GemmCase{GemmBackend::kOpenBlas, false, true},
                                           GemmCase{GemmBackend::kOpenBlas, true, false},
                                           GemmCase{GemmBackend::kOpenBlas, true, true}),
                         case_name);

TEST(Gemm, EmptyInnerDimensionScalesC) {
  for (GemmBackend backend : {GemmBackend::kOneDnn, GemmBackend::kOpenBlas}) {
    std::vector<float> C = {1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f};
    gemm(backend, false, false, 2, 3, 0, 1.0f, nullptr, 1, nullptr, 3, 0.5f, C.data(), 3);
    EXPECT_EQ(C, (std::vector<float>{0.5f, 1.0f, 1.5f, 2.0f, 2.5f, 3.0f}));
    std::vector<float> nan_c(6, std::nanf(""));
    gemm(backend, false, false, 2, 3, 0, 1.0f, nullptr, 1, nullptr, 3, 0.0f, nan_c.data(), 3);
    EXPECT_EQ(nan_c, std::vector<float>(6, 0.0f));
  }
}

TEST(Gemm, DefaultBackendIsSettableAndNamed) {
  EXPECT_EQ(default_gemm_backend(), GemmBackend::kOneDnn);
  set_default_gemm_backend(GemmBackend::kOpenBlas);
  EXPECT_EQ(default_gemm_backend(), GemmBackend::kOpenBlas);
  // The default-backend overload dispatches to it and gives the same answer.
  std::vector<float> A = random_vec(12, 6), B = random_vec(12, 7), c1(9), c2(9);
  gemm(false, false, 3, 3, 4, 1.0f, A.data(), 4, B.data(), 3, 0.0f, c1.data(), 3);
  gemm(GemmBackend::kOpenBlas, false, false, 3, 3, 4, 1.0f, A.data(), 4, B.data(), 3, 0.0f,
       c2.data(), 3);
  EXPECT_TRUE(bitwise_equal(c1, c2));
  set_default_gemm_backend(GemmBackend::kOneDnn);
  EXPECT_EQ(default_gemm_backend(), GemmBackend::kOneDnn);

  EXPECT_STREQ(gemm_backend_name(GemmBackend::kOneDnn), "onednn");
  EXPECT_STREQ(gemm_backend_name(GemmBackend::kOpenBlas), "openblas");
  EXPECT_EQ(parse_gemm_backend("onednn"), GemmBackend::kOneDnn);
  EXPECT_EQ(parse_gemm_backend("openblas"), GemmBackend::kOpenBlas);
  EXPECT_THROW(parse_gemm_backend("mkl"), InputError);
}

TEST(Gemm, RejectsBadStrides) {
  std::vector<float> buf(64);
  EXPECT_THROW(gemm(GemmBackend::kOneDnn, false, false, 4, 4, 4, 1.0f, buf.data(), 3, buf.data(), 4,
                    0.0f, buf.data(), 4),
               Error);
  EXPECT_THROW(gemm(GemmBackend::kOneDnn, false, true, 4, 4, 5, 1.0f, buf.data(), 5, buf.data(), 4,
                    0.0f, buf.data(), 4),
               Error);
  EXPECT_THROW(gemm(GemmBackend::kOpenBlas, false, false, 4, 4, 4, 1.0f, buf.data(), 4, buf.data(),
                    4, 0.0f, buf.data(), 3),
               Error);
}

// Attention relies on oneDNN running single-threaded inside a parallel region: each
// thread's GEMM gives exactly what the same GEMM gives on one thread outside.
TEST(Gemm, InThreadGemmInsideParallelRegionMatchesSerial) {
  const int M = 128, N = 128, K = 64, kJobs = 6;
  std::vector<float> A = random_vec(size_t(kJobs) * M * K, 8), B = random_vec(size_t(K) * N, 9);
  std::vector<float> serial(size_t(kJobs) * M * N), parallel(size_t(kJobs) * M * N);
  {
    ScopedThreads scoped(1);
    for (int j = 0; j < kJobs; ++j)
      dnnl_sgemm('N', 'N', M, N, K, 1.0f, A.data() + size_t(j) * M * K, K, B.data(), N, 0.0f,
                 serial.data() + size_t(j) * M * N, N);
  }
  ScopedThreads scoped(2);
  int in_parallel = 0;
#pragma omp parallel for schedule(static) reduction(+ : in_parallel)
  for (int j = 0; j < kJobs; ++j) {
    in_parallel += omp_in_parallel() ? 1 : 0;
    detail::gemm_in_thread(false, false, M, N, K, 1.0f, A.data() + size_t(j) * M * K, K, B.data(),
                           N, 0.0f, parallel.data() + size_t(j) * M * N, N);
  }
  EXPECT_EQ(in_parallel, kJobs);
  EXPECT_TRUE(bitwise_equal(serial, parallel));
}

}  // namespace
}  // namespace loom::kernels
