// Kernel micro-benchmarks on GPT-2 124M shapes (B=4, T=256, C=768, NH=12, V=50257,
// Vp=50304, so N = B*T = 1024 rows). Every GEMM is validated against the other backend
// before it is timed; a mismatch fails with LOOM_CHECK. Timings are medians of `repeats`
// calls after one warm-up call. Used by `loom bench kernels`.
#pragma once

#include <string>
#include <vector>

#include "core/dtype.h"

namespace loom::kernels {

// Best GFLOP/s of the fc layer's GEMM (1024 x 3072 x 768) with operands in the compute
// precision `t` (compute_storage: fp16 without a typed GEMM is sgemm's) on the current
// threads and default backend: the "peak" MFU is measured against. ~0.3 s.
double measure_gemm_peak_gflops(DType t = DType::kF32);
// oneDNN's implementation of that GEMM in compute_storage(t) ("dnnl_sgemm" for fp32 storage).
std::string gemm_peak_impl(DType t);

// This machine's memory read bandwidth, GB/s, with the current OpenMP threads: the best of a
// few sums over a buffer of 1 GiB (far beyond any cache), each thread reading its own part.
// What bounds a decode step that must read every weight once. ~1 s.
double measure_read_bandwidth_gbs();

struct KernelBenchRow {
  std::string name;  // e.g. "fc.fwd", "attention_backward"
  // GEMM shape: row-major C (M,N) = op(A) (M,K) @ op(B) (K,N); 0 if not a GEMM.
  int M = 0, N = 0, K = 0;
  std::string backend;        // "onednn", "openblas", or "-" for non-GEMM kernels
  int threads = 0;            // threads the backend ran with (OpenMP, or OpenBLAS's own pool)
  double median_seconds = 0;  // median wall time of one call
  double gflops = 0;          // 2*M*N*K / median_seconds / 1e9; 0 if not a GEMM
  std::string dtype = "fp32";  // GEMM input dtype (accumulation is fp32)
  std::string impl;            // oneDNN's implementation name, where known
};

// The GEMM peak per input dtype: fp32 (dnnl_sgemm and the matmul primitive), bf16 and fp16
// (gemm_typed: oneDNN matmul, fp32 accumulation) on a few large shapes, each validated
// against the fp32 product of the same rounded inputs before it is timed, with oneDNN's
// implementation name. A dtype's peak is its best shape.
std::vector<KernelBenchRow> bench_gemm_dtypes(int repeats);

// GEMM GFLOP/s against the size of its smallest dimension: (M, M, s) and (M, s, M) with
// M = kGemmSweepM for each s of kGemmSweepSizes (the square one once), per available dtype,
// at each of `threads` OpenMP thread counts (the rows say which); then, on one thread, "wide"
// rows (impl "wide"): a linear layer (forward and backward as the trainer runs it, the
// backward's gradient rounded through a stage) of kWideRows rows, K = s inputs and a
// vocabulary's 50304 outputs, whose output and gradient outgrow the caches. Small dimensions
// starve a GEMM and wide ones wait on memory: the planner's cost model prices a GEMM by its
// smallest dimension and its width from these rows (`loom bench kernels` adds the same rows
// run one process per core at once).
constexpr int kGemmSweepM = 1024, kWideRows = 256;
constexpr int kGemmSweepSizes[] = {32, 64, 128, 256, 512, 1024};  // the last: square, once
std::vector<KernelBenchRow> bench_gemm_sweep(int repeats, const std::vector<int>& threads);

// The three GEMMs (forward, d(input), d(weight)) of each linear layer of GPT-2 124M:
// qkv 768->2304, attproj 768->768, fc 768->3072, fcproj 3072->768, lm_head 768->50304,
// on both backends.
std::vector<KernelBenchRow> bench_gemm_shapes(int repeats);

// The non-GEMM kernels of one layer (and the loss) at the same sizes: attention forward
// and backward, crossentropy_fused, layernorm, gelu, residual, encoder, and adamw over one
// layer's parameters (7,087,872 floats); plus the whole matmul_forward / matmul_backward
// of the fc layer on the default backend (GEMMs + bias), to show the bias overhead.
std::vector<KernelBenchRow> bench_layer_kernels(int repeats);

}  // namespace loom::kernels
