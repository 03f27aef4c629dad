// Kernel micro-benchmarks on GPT-2 124M shapes; see bench_kernels.h.
#include "kernels/bench_kernels.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <tuple>
#include <utility>

#include <fmt/format.h>

#include "core/check.h"
#include "core/timer.h"
#include "kernels/kernels.h"

namespace loom::kernels {
namespace {

constexpr int kB = 4, kT = 256, kC = 768, kNH = 12, kV = 50257, kVp = 50304;
constexpr int kN = kB * kT;

std::vector<float> random_floats(size_t n, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// Median seconds of `repeats` calls of f after one warm-up call; `prepare` runs untimed
// before each call (e.g. to restore an input that f overwrites).
double median_seconds(int repeats, const std::function<void()>& f,
                      const std::function<void()>& prepare = nullptr) {
  std::vector<double> times;
  for (int r = 0; r <= repeats; ++r) {
    if (prepare) prepare();
    Timer timer;
    f();
    if (r > 0) times.push_back(timer.seconds());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

KernelBenchRow make_row(std::string name, int M, int N, int K, std::string backend, int threads,
                        double seconds, double gflops) {
  KernelBenchRow r;
  r.name = std::move(name);
  r.M = M;
  r.N = N;
  r.K = K;
  r.backend = std::move(backend);
  r.threads = threads;
  r.median_seconds = seconds;
  r.gflops = gflops;
  return r;
}

struct GemmShape {
  std::string name;
  bool trans_a, trans_b;
  int M, N, K;
  float beta;
};

// Forward, d(input) and d(weight) GEMMs of a linear layer C -> OC over kN rows, as
// matmul_forward / matmul_backward issue them.
std::vector<GemmShape> linear_gemms(const std::string& layer, int C, int OC) {
  return {{layer + ".fwd", false, true, kN, OC, C, 0.0f},
          {layer + ".dinp", false, false, kN, C, OC, 0.0f},
          {layer + ".dweight", true, false, OC, C, kN, 1.0f}};
}

// ||a - b|| / ||b||.
double rel_l2(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    double d = double(a[i]) - b[i];
    num += d * d;
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

int backend_threads(GemmBackend backend) {
  return backend == GemmBackend::kOpenBlas ? openblas_get_num_threads() : omp_get_max_threads();
}

// Validates one shape (oneDNN vs OpenBLAS) and times it on both backends.
void bench_one_gemm(const GemmShape& s, int repeats, std::vector<KernelBenchRow>& rows) {
  const int lda = s.trans_a ? s.M : s.K, ldb = s.trans_b ? s.K : s.N;
  std::vector<float> A = random_floats(size_t(s.M) * s.K, 1),
                     B = random_floats(size_t(s.K) * s.N, 2);
  std::vector<float> c_dnnl(size_t(s.M) * s.N, 0.0f), c_blas(size_t(s.M) * s.N, 0.0f);
  gemm(GemmBackend::kOneDnn, s.trans_a, s.trans_b, s.M, s.N, s.K, 1.0f, A.data(), lda, B.data(),
       ldb, 0.0f, c_dnnl.data(), s.N);
  gemm(GemmBackend::kOpenBlas, s.trans_a, s.trans_b, s.M, s.N, s.K, 1.0f, A.data(), lda, B.data(),
       ldb, 0.0f, c_blas.data(), s.N);
  const double err = rel_l2(c_dnnl, c_blas);
  LOOM_CHECK(err < 1e-5, "bench {}: oneDNN and OpenBLAS disagree, rel err {:.3g}", s.name, err);
  for (GemmBackend backend : {GemmBackend::kOneDnn, GemmBackend::kOpenBlas}) {
    float* C = c_dnnl.data();
    double sec = median_seconds(repeats, [&] {
      gemm(backend, s.trans_a, s.trans_b, s.M, s.N, s.K, 1.0f, A.data(), lda, B.data(), ldb, s.beta,
           C, s.N);
    });
    const double flops = 2.0 * s.M * s.N * s.K;
    rows.push_back(make_row(s.name, s.M, s.N, s.K, gemm_backend_name(backend),
                            backend_threads(backend), sec, flops / sec / 1e9));
  }
}

KernelBenchRow kernel_row(const std::string& name, double seconds) {
  return make_row(name, 0, 0, 0, "-", omp_get_max_threads(), seconds, 0.0);
}

void bench_attention(int repeats, std::vector<KernelBenchRow>& rows) {
  auto qkv = random_floats(size_t(kN) * 3 * kC, 3), dout = random_floats(size_t(kN) * kC, 4);
  std::vector<float> out(size_t(kN) * kC), att(size_t(kB) * kNH * kT * kT), dqkv(qkv.size()),
      scratch(attention_backward_scratch(kB, kT, kC, kNH));
  rows.push_back(kernel_row("attention_forward", median_seconds(repeats, [&] {
                              attention_forward(out.data(), att.data(), qkv.data(), kB, kT, kC,
                                                kNH);
                            })));
  rows.push_back(kernel_row("attention_backward", median_seconds(repeats, [&] {
                              attention_backward(dqkv.data(), scratch.data(), dout.data(),
                                                 qkv.data(), att.data(), kB, kT, kC, kNH);
                            })));
}

void bench_crossentropy(int repeats, std::vector<KernelBenchRow>& rows) {
  const auto logits0 = random_floats(size_t(kN) * kVp, 5, -4.0f, 4.0f);
  std::vector<float> logits(logits0.size()), losses(kN);
  std::vector<int32_t> targets(kN);
  for (int n = 0; n < kN; ++n) targets[n] = (n * 7919) % kV;
  rows.push_back(
      kernel_row("crossentropy_fused",
                 median_seconds(
                     repeats,
                     [&] {
                       crossentropy_fused(losses.data(), logits.data(), targets.data(), kN, kV, kVp,
                                          1.0f / kN);
                     },
                     [&] { std::copy(logits0.begin(), logits0.end(), logits.begin()); })));
}

void bench_layernorm_gelu(int repeats, std::vector<KernelBenchRow>& rows) {
  const size_t NC = size_t(kN) * kC, N4C = 4 * NC;
  auto x = random_floats(N4C, 6), dout = random_floats(N4C, 7);
  auto w = random_floats(kC, 8), b = random_floats(kC, 9);
  std::vector<float> out(N4C), dinp(N4C), mean(kN), rstd(kN), dw(kC), db(kC);
  rows.push_back(kernel_row("layernorm_forward", median_seconds(repeats, [&] {
                              layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(),
                                                w.data(), b.data(), kN, kC);
                            })));
  rows.push_back(kernel_row("layernorm_backward", median_seconds(repeats, [&] {
                              layernorm_backward(dinp.data(), dw.data(), db.data(), dout.data(),
                                                 x.data(), w.data(), mean.data(), rstd.data(), kN,
                                                 kC);
                            })));
  rows.push_back(kernel_row(
      "gelu_forward", median_seconds(repeats, [&] { gelu_forward(out.data(), x.data(), N4C); })));
  rows.push_back(kernel_row("gelu_backward", median_seconds(repeats, [&] {
                              gelu_backward(dinp.data(), x.data(), dout.data(), N4C);
                            })));
  rows.push_back(kernel_row("residual_forward", median_seconds(repeats, [&] {
                              residual_forward(out.data(), x.data(), dout.data(), NC);
                            })));
}

void bench_encoder_adamw(int repeats, std::vector<KernelBenchRow>& rows) {
  auto wte = random_floats(size_t(kVp) * kC, 10), wpe = random_floats(size_t(1024) * kC, 11);
  std::vector<int32_t> tokens(kN);
  for (int n = 0; n < kN; ++n) tokens[n] = (n * 104729) % kV;
  std::vector<float> out(size_t(kN) * kC), dwte(wte.size()), dwpe(wpe.size());
  rows.push_back(kernel_row("encoder_forward", median_seconds(repeats, [&] {
                              encoder_forward(out.data(), tokens.data(), wte.data(), wpe.data(), kB,
                                              kT, kC);
                            })));
  rows.push_back(kernel_row("encoder_backward", median_seconds(repeats, [&] {
                              encoder_backward(dwte.data(), dwpe.data(), out.data(), tokens.data(),
                                               kB, kT, kC);
                            })));
  const size_t n = 12ull * kC * kC + 13ull * kC;  // one transformer block's parameters
  auto p = random_floats(n, 12), g = random_floats(n, 13, -0.01f, 0.01f);
  std::vector<float> m(n, 0.0f), v(n, 0.0f);
  int t = 0;
  rows.push_back(kernel_row("adamw_update (7.09M params)", median_seconds(repeats, [&] {
                              adamw_update(p.data(), g.data(), m.data(), v.data(), n, 6e-4f, 0.9f,
                                           0.95f, 1e-8f, 0.1f, ++t, 1.0f);
                            })));
}

void bench_fc_matmul(int repeats, std::vector<KernelBenchRow>& rows) {
  const int C = kC, OC = 4 * kC;
  auto inp = random_floats(size_t(kN) * C, 14), w = random_floats(size_t(OC) * C, 15);
  auto bias = random_floats(OC, 16), dout = random_floats(size_t(kN) * OC, 17);
  std::vector<float> out(size_t(kN) * OC), dinp(size_t(kN) * C), dw(w.size()), db(OC);
  const double fwd_flops = 2.0 * kN * C * OC;
  double sec = median_seconds(
      repeats, [&] { matmul_forward(out.data(), inp.data(), w.data(), bias.data(), kN, C, OC); });
  const char* backend = gemm_backend_name(default_gemm_backend());
  rows.push_back(make_row("matmul_forward.fc", kN, OC, C, backend, omp_get_max_threads(), sec,
                          fwd_flops / sec / 1e9));
  sec = median_seconds(repeats, [&] {
    matmul_backward(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(), w.data(), kN, C,
                    OC);
  });
  rows.push_back(make_row("matmul_backward.fc", kN, OC, C, backend, omp_get_max_threads(), sec,
                          2 * fwd_flops / sec / 1e9));
}

// One shape of the dtype table: inputs rounded to `t`, the typed GEMM validated against
// the fp32 GEMM of the rounded values, then timed.
KernelBenchRow bench_typed_gemm(DType t, int M, int N, int K, int repeats) {
  const auto a = random_floats(size_t(M) * K, 21), b = random_floats(size_t(N) * K, 22);
  std::vector<uint16_t> a16(t == DType::kF32 ? 0 : a.size()), b16(t == DType::kF32 ? 0 : b.size());
  std::vector<float> ar = a, br = b;
  if (t != DType::kF32) {
    convert(a16.data(), t, a.data(), DType::kF32, a.size());
    convert(b16.data(), t, b.data(), DType::kF32, b.size());
    convert(ar.data(), DType::kF32, a16.data(), t, a.size());
    convert(br.data(), DType::kF32, b16.data(), t, b.size());
  }
  const void* A = t == DType::kF32 ? static_cast<const void*>(a.data()) : a16.data();
  const void* B = t == DType::kF32 ? static_cast<const void*>(b.data()) : b16.data();
  std::vector<float> want(size_t(M) * N), got(want.size());
  gemm(false, true, M, N, K, 1.0f, ar.data(), K, br.data(), K, 0.0f, want.data(), N);
  gemm_typed(t, false, true, M, N, K, 1.0f, A, K, B, K, 0.0f, got.data(), N);
  const double err = rel_l2(got, want);
  LOOM_CHECK(err < 1e-5, "bench {} GEMM {}x{}x{}: differs from fp32 on the same rounded inputs "
             "(rel err {:.3g})", dtype_name(t), M, N, K, err);
  const double sec = median_seconds(repeats, [&] {
    gemm_typed(t, false, true, M, N, K, 1.0f, A, K, B, K, 0.0f, got.data(), N);
  });
  KernelBenchRow r = make_row(fmt::format("gemm.{}", dtype_name(t)), M, N, K, "onednn",
                              omp_get_max_threads(), sec, 2.0 * M * N * K / sec / 1e9);
  r.dtype = dtype_name(t);
  r.impl = t == DType::kF32 ? "dnnl_sgemm" : gemm_typed_impl(t, false, true, M, N, K);
  return r;
}

// Seconds of a linear layer's forward and backward (matmul_forward_typed and
// matmul_backward_typed, the backward's fp32 gradient rounded through a stage) of M rows,
// C = K inputs and N outputs in dtype t: the median of `repeats`.
double linear_seconds(DType t, int M, int N, int K, int repeats) {
  const size_t es = dtype_size(compute_storage(t));
  const auto x = random_floats(size_t(M) * K, 51), w = random_floats(size_t(N) * K, 52, -0.1f, 0.1f);
  std::vector<unsigned char> xc(x.size() * es), wc(w.size() * es), stage(size_t(M) * N * es);
  to_compute(t, xc.data(), x.data(), x.size());
  to_compute(t, wc.data(), w.data(), w.size());
  std::vector<float> out(size_t(M) * N), dout = random_floats(size_t(M) * N, 53, -1e-3f, 1e-3f),
                     dx(x.size()), dw(w.size(), 0.0f);
  return median_seconds(repeats, [&] {
    matmul_forward_typed(t, out.data(), xc.data(), wc.data(), nullptr, M, K, N);
    matmul_backward_typed(t, dx.data(), dw.data(), nullptr, dout.data(), xc.data(), wc.data(),
                          stage.data(), size_t(M) * N, M, K, N);
  });
}

// A linear layer whose outputs are a vocabulary (N = kVp): its GFLOP/s (three GEMMs).
KernelBenchRow bench_wide_linear(DType t, int K, int repeats) {
  constexpr int M = kWideRows, N = kVp;
  const double flops = 3 * 2.0 * M * N * K, sec = linear_seconds(t, M, N, K, repeats);
  KernelBenchRow r = make_row(fmt::format("linear.{}.wide", dtype_name(t)), M, N, K, "onednn",
                              omp_get_max_threads(), sec, flops / sec / 1e9);
  r.dtype = dtype_name(t);
  r.impl = "wide";
  return r;
}

}  // namespace

std::vector<KernelBenchRow> bench_gemm_dtypes(int repeats) {
  LOOM_CHECK(repeats >= 1, "bench_gemm_dtypes: repeats={} must be >= 1", repeats);
  std::vector<KernelBenchRow> rows;
  // The fc layer's forward at B*T = 1024 and 4096, and a square 2048.
  const std::tuple<int, int, int> shapes[] = {{1024, 3072, 768}, {4096, 3072, 768},
                                              {2048, 2048, 2048}};
  for (DType t : {DType::kF32, DType::kBF16, DType::kF16}) {
    if (!gemm_typed_available(t)) continue;  // the table says so
    for (const auto& [M, N, K] : shapes) rows.push_back(bench_typed_gemm(t, M, N, K, repeats));
  }
  return rows;
}

std::vector<KernelBenchRow> bench_gemm_sweep(int repeats, const std::vector<int>& threads) {
  LOOM_CHECK(repeats >= 1 && !threads.empty(), "bench_gemm_sweep: need repeats >= 1 and a "
             "thread count");
  const int restore = omp_get_max_threads();
  std::vector<KernelBenchRow> rows;
  for (int n : threads) {
    omp_set_num_threads(n);
    for (DType t : {DType::kF32, DType::kBF16, DType::kF16}) {
      if (!gemm_typed_available(t)) continue;
      for (int s : kGemmSweepSizes) {
        // The small dimension as the inner one (K) and as the output's columns (N).
        rows.push_back(bench_typed_gemm(t, kGemmSweepM, kGemmSweepM, s, repeats));
        if (s != kGemmSweepM)
          rows.push_back(bench_typed_gemm(t, kGemmSweepM, s, kGemmSweepM, repeats));
      }
    }
  }
  // Wide linear layers (a vocabulary's outputs) on one thread, fewer repeats: they are long.
  omp_set_num_threads(1);
  for (DType t : {DType::kF32, DType::kBF16, DType::kF16}) {
    if (!gemm_typed_available(t)) continue;
    for (int s : kGemmSweepSizes) rows.push_back(bench_wide_linear(t, s, std::max(1, repeats / 3)));
  }
  omp_set_num_threads(restore);
  return rows;
}

std::vector<KernelBenchRow> bench_gemm_shapes(int repeats) {
  LOOM_CHECK(repeats >= 1, "bench_gemm_shapes: repeats={} must be >= 1", repeats);
  std::vector<GemmShape> shapes;
  for (const auto& [layer, C, OC] :
       {std::tuple{"qkv", kC, 3 * kC}, std::tuple{"attproj", kC, kC}, std::tuple{"fc", kC, 4 * kC},
        std::tuple{"fcproj", 4 * kC, kC}, std::tuple{"lm_head", kC, kVp}}) {
    auto g = linear_gemms(layer, C, OC);
    shapes.insert(shapes.end(), g.begin(), g.end());
  }
  std::vector<KernelBenchRow> rows;
  for (const auto& s : shapes) bench_one_gemm(s, repeats, rows);
  return rows;
}

std::vector<KernelBenchRow> bench_layer_kernels(int repeats) {
  LOOM_CHECK(repeats >= 1, "bench_layer_kernels: repeats={} must be >= 1", repeats);
  std::vector<KernelBenchRow> rows;
  bench_attention(repeats, rows);
  bench_crossentropy(repeats, rows);
  bench_layernorm_gelu(repeats, rows);
  bench_encoder_adamw(repeats, rows);
  bench_fc_matmul(repeats, rows);
  return rows;
}

namespace {
constexpr int kPeakM = 1024, kPeakN = 3072, kPeakK = 768;  // the fc layer's forward, B*T=1024
}  // namespace

std::string gemm_peak_impl(DType t) {
  const DType s = compute_storage(t);
  return s == DType::kF32 ? "dnnl_sgemm"
                          : gemm_typed_impl(s, false, true, kPeakM, kPeakN, kPeakK);
}

double measure_gemm_peak_gflops(DType t) {
  const DType s = compute_storage(t);
  const int M = kPeakM, N = kPeakN, K = kPeakK;
  std::vector<float> a(size_t(M) * K, 0.5f), b(size_t(N) * K, 0.25f), c(size_t(M) * N);
  std::vector<std::byte> al(a.size() * dtype_size(s)), bl(b.size() * dtype_size(s));
  convert(al.data(), s, a.data(), DType::kF32, a.size());
  convert(bl.data(), s, b.data(), DType::kF32, b.size());
  double best = 1e30;
  for (int rep = 0; rep < 15; ++rep) {
    Timer timer;
    gemm_typed(s, false, true, M, N, K, 1.0f, al.data(), K, bl.data(), K, 0.0f, c.data(), N);
    best = std::min(best, timer.seconds());
  }
  return 2.0 * M * N * K / best / 1e9;
}

double measure_read_bandwidth_gbs() {
  const size_t n = size_t(1) << 28;  // 1 GiB of floats
  std::vector<float> buf(n);
  const long chunks = long(n / 4096);
#pragma omp parallel for schedule(static)
  for (long c = 0; c < chunks; ++c) std::fill_n(buf.data() + size_t(c) * 4096, 4096, 1.0f);
  double best = 0, sink = 0;
  for (int rep = 0; rep < 5; ++rep) {
    Timer timer;
    double total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total)
    for (long c = 0; c < chunks; ++c) {
      float part = 0;
      const float* p = buf.data() + size_t(c) * 4096;
#pragma omp simd reduction(+ : part)
      for (int i = 0; i < 4096; ++i) part += p[i];
      total += part;
    }
    best = std::max(best, double(n * sizeof(float)) / timer.seconds() / 1e9);
    sink += total;
  }
  LOOM_CHECK(sink == 5.0 * double(n), "read bandwidth: the sums are wrong ({})", sink);
  return best;
}

}  // namespace loom::kernels
