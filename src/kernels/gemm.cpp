// GEMM facade: row-major sgemm on oneDNN (default) or OpenBLAS.
//
// oneDNN is built on the OpenMP runtime, so it honours omp_set_num_threads and runs
// single-threaded when called from inside a parallel region. OpenBLAS (the pthread build)
// has its own thread pool, sized by OPENBLAS_NUM_THREADS; never call it from inside an
// OpenMP parallel region.
#include <cblas.h>
#include <dnnl.h>

#include <atomic>

#include "core/check.h"
#include "kernels/internal.h"
#include "kernels/kernels.h"

namespace loom::kernels {
namespace {

// The one piece of process-wide state the kernels keep.
std::atomic<GemmBackend> g_default_backend{GemmBackend::kOneDnn};

void gemm_onednn(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
                 int lda, const float* B, int ldb, float beta, float* C, int ldc) {
  dnnl_status_t st = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', M, N, K, alpha, A, lda, B,
                                ldb, beta, C, ldc);
  LOOM_CHECK(st == dnnl_success, "dnnl_sgemm failed with status {} (M={} N={} K={})",
             static_cast<int>(st), M, N, K);
}

void gemm_openblas(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
                   int lda, const float* B, int ldb, float beta, float* C, int ldc) {
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

// C (M,N) = beta * C, with beta == 0 writing zeros (BLAS semantics: C is not read).
void scale_c(int M, int N, float beta, float* C, int ldc) {
  for (int i = 0; i < M; ++i) {
    float* row = C + static_cast<size_t>(i) * ldc;
    for (int j = 0; j < N; ++j) row[j] = beta == 0.0f ? 0.0f : beta * row[j];
  }
}

void check_gemm_args(bool trans_a, bool trans_b, int M, int N, int K, int lda, int ldb, int ldc) {
  LOOM_CHECK(M >= 0 && N >= 0 && K >= 0, "gemm: negative size M={} N={} K={}", M, N, K);
  // Row-major: op(A) is (M,K), so A is stored (K,M) when transposed, (M,K) otherwise.
  int a_cols = trans_a ? M : K;
  int b_cols = trans_b ? K : N;
  LOOM_CHECK(lda >= std::max(1, a_cols), "gemm: lda={} < {} (trans_a={} M={} K={})", lda, a_cols,
             trans_a, M, K);
  LOOM_CHECK(ldb >= std::max(1, b_cols), "gemm: ldb={} < {} (trans_b={} K={} N={})", ldb, b_cols,
             trans_b, K, N);
  LOOM_CHECK(ldc >= std::max(1, N), "gemm: ldc={} < N={}", ldc, N);
}

}  // namespace

const char* gemm_backend_name(GemmBackend b) {
  switch (b) {
    case GemmBackend::kOneDnn:
      return "onednn";
    case GemmBackend::kOpenBlas:
      return "openblas";
  }
  return "unknown";
}

GemmBackend parse_gemm_backend(const std::string& name) {
  if (name == "onednn") return GemmBackend::kOneDnn;
  if (name == "openblas") return GemmBackend::kOpenBlas;
  LOOM_REQUIRE(false, "unknown GEMM backend '{}': expected 'onednn' or 'openblas'", name);
  return GemmBackend::kOneDnn;  // unreachable
}

void set_default_gemm_backend(GemmBackend b) { g_default_backend.store(b); }

GemmBackend default_gemm_backend() { return g_default_backend.load(); }

void gemm(GemmBackend backend, bool trans_a, bool trans_b, int M, int N, int K, float alpha,
          const float* A, int lda, const float* B, int ldb, float beta, float* C, int ldc) {
  check_gemm_args(trans_a, trans_b, M, N, K, lda, ldb, ldc);
  if (M == 0 || N == 0) return;
  if (K == 0 || alpha == 0.0f) {
    scale_c(M, N, beta, C, ldc);
    return;
  }
  if (backend == GemmBackend::kOpenBlas) {
    gemm_openblas(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  } else {
    gemm_onednn(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  }
}

void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
          const float* B, int ldb, float beta, float* C, int ldc) {
  gemm(default_gemm_backend(), trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

namespace detail {

void gemm_in_thread(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
                    int lda, const float* B, int ldb, float beta, float* C, int ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    scale_c(M, N, beta, C, ldc);
    return;
  }
  // Errors cannot be thrown out of a parallel region; the callers pass checked sizes.
  dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb, beta, C,
             ldc);
}

}  // namespace detail
}  // namespace loom::kernels
