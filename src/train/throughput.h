// Throughput accounting: model FLOPs per token (6N + 12*L*C*T, N = parameters without the
// position embedding, as Megatron and PaLM count); MFU is reported against the measured
// GEMM peak (kernels/bench_kernels.h).
#pragma once

#include <cstdint>
#include "model/config.h"

namespace loom {

// FLOPs per token of one forward + backward: 6N + 12*L*C*T.
double model_flops_per_token(int64_t n_params, const GptConfig& cfg, int T);
constexpr const char* kFlopsFormula = "FLOPs/token = 6N + 12*L*C*T (N excludes wpe)";

}  // namespace loom
