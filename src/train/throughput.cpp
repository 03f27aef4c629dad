#include "train/throughput.h"

#include <algorithm>
#include <vector>

#include "core/timer.h"
#include "kernels/kernels.h"

namespace loom {

double model_flops_per_token(int64_t n_params, const GptConfig& cfg, int T) {
  return 6.0 * double(n_params) + 12.0 * cfg.n_layer * cfg.n_embd * double(T);
}

namespace {
constexpr int M = 1024, N = 3072, K = 768;  // the fc layer's forward at B*T = 1024
}  // namespace

std::string gemm_peak_impl(DType t) {
  const DType s = kernels::compute_storage(t);
  return s == DType::kF32 ? "dnnl_sgemm" : kernels::gemm_typed_impl(s, false, true, M, N, K);
}

double measure_gemm_peak_gflops(DType t) {
  const DType s = kernels::compute_storage(t);
  std::vector<float> a(size_t(M) * K, 0.5f), b(size_t(N) * K, 0.25f), c(size_t(M) * N);
  std::vector<std::byte> al(a.size() * dtype_size(s)), bl(b.size() * dtype_size(s));
  kernels::convert(al.data(), s, a.data(), DType::kF32, a.size());
  kernels::convert(bl.data(), s, b.data(), DType::kF32, b.size());
  double best = 1e30;
  for (int rep = 0; rep < 15; ++rep) {
    Timer timer;
    kernels::gemm_typed(s, false, true, M, N, K, 1.0f, al.data(), K, bl.data(), K, 0.0f,
                        c.data(), N);
    best = std::min(best, timer.seconds());
  }
  return 2.0 * M * N * K / best / 1e9;
}

}  // namespace loom
