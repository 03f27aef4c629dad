// Throughput accounting: model FLOPs per token (6N + 12*L*C*T, N = parameters without the
// position embedding, as Megatron and PaLM count) and the machine's measured fp32 GEMM
// peak, against which MFU is reported.
#pragma once

#include <cstdint>
#include <string>

#include "core/dtype.h"
#include "model/config.h"

namespace loom {

// FLOPs per token of one forward + backward: 6N + 12*L*C*T.
double model_flops_per_token(int64_t n_params, const GptConfig& cfg, int T);
constexpr const char* kFlopsFormula = "FLOPs/token = 6N + 12*L*C*T (N excludes wpe)";

// Best GFLOP/s of the fc layer's GEMM (1024 x 3072 x 768) with operands in the compute
// precision `t` (kernels::compute_storage: fp16 without a typed GEMM is sgemm's) on the
// current threads and default backend: the "peak" MFU is measured against. ~0.3 s.
double measure_gemm_peak_gflops(DType t = DType::kF32);
// oneDNN's implementation of that GEMM in compute_storage(t) ("dnnl_sgemm" for fp32 storage).
std::string gemm_peak_impl(DType t);

}  // namespace loom
