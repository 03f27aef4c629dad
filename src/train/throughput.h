// Throughput accounting: model FLOPs per token (6N + 12*L*C*T, N = parameters without the
// position embedding, as Megatron and PaLM count) and the machine's measured fp32 GEMM
// peak, against which MFU is reported.
#pragma once

#include <cstdint>

#include "model/config.h"

namespace loom {

// FLOPs per token of one forward + backward: 6N + 12*L*C*T.
double model_flops_per_token(int64_t n_params, const GptConfig& cfg, int T);
constexpr const char* kFlopsFormula = "FLOPs/token = 6N + 12*L*C*T (N excludes wpe)";

// Best GFLOP/s of a square-ish fp32 GEMM (1024 x 3072 x 768) with the current threads and
// default backend: the "peak" MFU is measured against. Takes ~0.3 s.
double measure_gemm_peak_gflops();

}  // namespace loom
