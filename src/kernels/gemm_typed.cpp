// Mixed-precision GEMM on oneDNN's matmul primitive, and the fp32 <-> bf16/fp16 conversions.
//
// dnnl_sgemm has no low-precision sibling for fp16 and reports no implementation name, so
// the typed GEMM builds a matmul primitive per (dtype, shape, strides, alpha, beta) and keeps
// it in a small cache: the model issues a few dozen distinct shapes, each thousands of
// times. Inputs in bf16 or fp16, accumulation and output in fp32 (oneDNN's bf16/f16 matmul
// accumulates in fp32), as torch.autocast's GEMMs.
#include <dnnl.hpp>

#include <array>
#include <bit>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>

#include "core/check.h"
#include "kernels/kernels.h"

namespace loom::kernels {
namespace {

using dt = dnnl::memory::data_type;

dt dnnl_type(DType t) {
  switch (t) {
    case DType::kF32: return dt::f32;
    case DType::kBF16: return dt::bf16;
    case DType::kF16: return dt::f16;
  }
  return dt::undef;
}

struct GemmKey {
  DType ab;
  bool ta, tb;
  int M, N, K, lda, ldb, ldc;
  float alpha, beta;
  auto tie() const { return std::tie(ab, ta, tb, M, N, K, lda, ldb, ldc, alpha, beta); }
  bool operator<(const GemmKey& o) const { return tie() < o.tie(); }
};

struct Prim {
  dnnl::matmul prim;
  std::string impl;
};

// Row-major op(A) (M,K): A stored (M,K) with stride lda, or transposed (K,M).
dnnl::memory::desc operand(dt type, bool trans, int rows, int cols, int ld) {
  const dnnl::memory::dims dims{rows, cols};
  const dnnl::memory::dims strides = trans ? dnnl::memory::dims{1, ld}
                                           : dnnl::memory::dims{ld, 1};
  return dnnl::memory::desc(dims, type, strides);
}

class GemmCache {
 public:
  const Prim& get(const GemmKey& k) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = prims_.find(k);
    if (it != prims_.end()) return it->second;
    const dt t = dnnl_type(k.ab);
    const auto a = operand(t, k.ta, k.M, k.K, k.lda), b = operand(t, k.tb, k.K, k.N, k.ldb);
    const auto c = operand(dt::f32, false, k.M, k.N, k.ldc);
    dnnl::primitive_attr attr;
    if (k.alpha != 1.0f) attr.set_output_scales(0, {k.alpha});
    if (k.beta != 0.0f) {
      dnnl::post_ops po;
      po.append_sum(k.beta);
      attr.set_post_ops(po);
    }
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, b, c), attr, engine_, true);
    LOOM_CHECK(pd, "oneDNN {}.{} has no {} matmul on this CPU ({}x{}x{}); check "
               "kernels::gemm_typed_available first", DNNL_VERSION_MAJOR, DNNL_VERSION_MINOR,
               dtype_name(k.ab), k.M, k.N, k.K);
    return prims_.emplace(k, Prim{dnnl::matmul(pd), pd.impl_info_str()}).first->second;
  }
  // Asked on every typed layer call (kernels::compute_storage): decided once per dtype.
  bool available(DType t) {
    if (t == DType::kF32) return true;
    std::lock_guard<std::mutex> lock(mu_);
    int8_t& known = available_[size_t(t)];
    if (known < 0) {
      const auto m = operand(dnnl_type(t), false, 64, 64, 64);
      const auto c = operand(dt::f32, false, 64, 64, 64);
      const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(m, m, c), engine_, true);
      known = bool(pd) ? 1 : 0;
    }
    return known == 1;
  }
  dnnl::engine& engine() { return engine_; }

 private:
  std::mutex mu_;
  dnnl::engine engine_{dnnl::engine::kind::cpu, 0};
  std::map<GemmKey, Prim> prims_;
  std::array<int8_t, 3> available_{-1, -1, -1};  // per DType: -1 not asked yet, 0, 1
};

GemmCache& cache() {
  static GemmCache c;  // primitives only: no parallel state
  return c;
}

}  // namespace

void gemm_typed(DType ab, bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                const void* A, int lda, const void* B, int ldb, float beta, float* C, int ldc) {
  LOOM_CHECK(M >= 0 && N >= 0 && K >= 0, "gemm_typed: negative size M={} N={} K={}", M, N, K);
  if (M == 0 || N == 0) return;
  if (ab == DType::kF32)
    return gemm(trans_a, trans_b, M, N, K, alpha, static_cast<const float*>(A), lda,
                static_cast<const float*>(B), ldb, beta, C, ldc);
  LOOM_CHECK(K > 0, "gemm_typed: K=0");
  const GemmKey key{ab, trans_a, trans_b, M, N, K, lda, ldb, ldc, alpha, beta};
  GemmCache& gc = cache();
  const Prim& p = gc.get(key);
  const dt t = dnnl_type(ab);
  dnnl::memory a(operand(t, trans_a, M, K, lda), gc.engine(), const_cast<void*>(A));
  dnnl::memory b(operand(t, trans_b, K, N, ldb), gc.engine(), const_cast<void*>(B));
  dnnl::memory c(operand(dt::f32, false, M, N, ldc), gc.engine(), C);
  dnnl::stream s(gc.engine());
  p.prim.execute(s, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}});
  s.wait();
}

bool gemm_typed_available(DType ab) { return cache().available(ab); }

std::string gemm_typed_impl(DType ab, bool trans_a, bool trans_b, int M, int N, int K) {
  const int lda = trans_a ? M : K, ldb = trans_b ? K : N;
  return cache().get({ab, trans_a, trans_b, M, N, K, lda, ldb, N, 1.0f, 0.0f}).impl;
}

void convert(void* out, DType out_type, const void* in, DType in_type, size_t n) {
  if (out_type == in_type) {
    std::memcpy(out, in, n * dtype_size(in_type));
    return;
  }
  const auto* f = static_cast<const float*>(in);
  auto* o = static_cast<float*>(out);
  const long nn = long(n);
  if (in_type == DType::kF32 && out_type == DType::kBF16) {
    auto* r = static_cast<uint16_t*>(out);
#pragma omp parallel for simd schedule(static)
    for (long i = 0; i < nn; ++i) r[i] = bf16_from_float(f[i]);
  } else if (in_type == DType::kF32 && out_type == DType::kF16) {
    auto* r = static_cast<_Float16*>(out);
#pragma omp parallel for simd schedule(static)
    for (long i = 0; i < nn; ++i) r[i] = static_cast<_Float16>(f[i]);
  } else if (in_type == DType::kBF16 && out_type == DType::kF32) {
    const auto* r = static_cast<const uint16_t*>(in);
#pragma omp parallel for simd schedule(static)
    for (long i = 0; i < nn; ++i) o[i] = std::bit_cast<float>(uint32_t(r[i]) << 16);
  } else if (in_type == DType::kF16 && out_type == DType::kF32) {
    const auto* r = static_cast<const _Float16*>(in);
#pragma omp parallel for simd schedule(static)
    for (long i = 0; i < nn; ++i) o[i] = static_cast<float>(r[i]);
  } else {
    LOOM_CHECK(false, "convert: {} -> {} is not supported (go through fp32)",
               dtype_name(in_type), dtype_name(out_type));
  }
}

}  // namespace loom::kernels
