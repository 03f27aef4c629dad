// `loom bench generate`: inference speed beside PyTorch and the machine's limits, in one run.
// Validates first (greedy tokens decoded on the KV cache are the full forward's, and
// PyTorch's KV-cache decode gives the same logits on the same weights), then reports, per
// precision: time to first token of a prompt and prefill tokens/s, decode tokens/s at each
// batch size, the KV cache bytes per token; beside them PyTorch's figures, the memory-
// bandwidth bound of a batch-1 step (read bandwidth / weight bytes per token) and the
// compute bound of the prompt (its FLOPs / the GEMM peak), with the ratios; and bf16's
// top-1 agreement with fp32 over the positions fp32 decoded. Prints a table, writes JSON.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "model/gpt.h"

namespace loom {

struct GenerateBenchOptions {
  int threads = 2;
  int prompt_len = 128;        // the prompt of the TTFT and decode measurements
  int decode_steps = 32;       // timed steps per batch size
  std::vector<int> batches{1, 4, 16};
  std::vector<std::string> precisions{"fp32", "bf16"};
  int agreement_positions = 1000;  // fp32's greedy tokens that bf16 is compared on
  std::filesystem::path torch_script;  // reference/torch_decode.py
  std::filesystem::path json_out;
  std::string cpu;  // kernels::cpu_summary()
};

// `model`: single process (its weights are read; its activations are used for the full
// forward check). Returns the process exit code: non-zero when validation fails.
int bench_generate(Gpt& model, const GenerateBenchOptions& opt);

}  // namespace loom
