// `loom bench train`: loom's training step beside PyTorch's on the same model, weights,
// batches and thread count, in the same run. Validates (the two runs' losses agree) before
// it reports; prints a table and writes JSON.
#pragma once

#include <filesystem>
#include <string>

#include "train/run_config.h"

namespace loom {

struct TrainBenchOptions {
  int threads = 2;
  int steps = 5;    // timed steps
  int warmup = 1;   // untimed steps first
  std::filesystem::path torch_script;  // bench/torch_train.py
  std::filesystem::path json_out;      // where the JSON goes
};

// Returns the process exit code (non-zero when validation fails).
int bench_train(RunConfig cfg, const TrainBenchOptions& opt);

}  // namespace loom
