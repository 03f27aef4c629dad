// `loom bench train`: loom's training step beside PyTorch's on the same model, weights,
// batches and thread count, in the same run. Validates (the two runs' losses agree) before
// it reports; prints a table and writes JSON.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "comm/process_grid.h"
#include "core/timer.h"
#include "train/run_config.h"

namespace loom {

struct TrainBenchOptions {
  int threads = 2;
  int steps = 5;    // timed steps
  int warmup = 1;   // untimed steps first
  std::filesystem::path torch_script;  // bench/torch_train.py
  std::filesystem::path json_out;      // where the JSON goes
  std::string openblas;  // kernels::use_best_openblas_core()'s line, printed and in the JSON
  std::string cpu;       // kernels::cpu_summary()
};

// Returns the process exit code (non-zero when validation fails).
int bench_train(RunConfig cfg, const TrainBenchOptions& opt);

// Data-parallel weak scaling, run under mpirun with every rank of `grid` (dp = world size,
// 1 thread per rank): tokens/s at dp=1 (rank 0 alone) and at dp=n with the same per-rank
// micro-batch, the weak-scaling efficiency tps_n / (n * tps_1), and the fraction of the
// gradient bytes whose all-reduce completed behind backward (buckets already done when the
// optimizer asked), beside the exposed wait and the all-reduce time with nothing to overlap.
int bench_train_dp(RunConfig cfg, const TrainBenchOptions& opt, const ProcessGrid& grid);

// Pipeline schedules on pp = world size ranks (1 thread each): for 1F1B and interleaved
// (v = 2) at m = 2, 4, 8 micro-batches, tokens/s and the measured bubble (idle fraction of
// the executor, from the step's forward/backward times) beside the simulator's prediction
// for the same schedule with the measured forward and backward times; then the simulator's
// bubble for larger pipelines. Validates the first step's loss against one process first.
int bench_train_pp(RunConfig cfg, const TrainBenchOptions& opt, const ProcessGrid& grid);

// Checkpoint write bandwidth (weights + moments of cfg.model, whole tensors, fsynced and
// renamed) beside `dd conv=fsync` of the same bytes into `dir`; validates a load first.
int bench_checkpoint(const RunConfig& cfg, const std::filesystem::path& dir, int repeats,
                     const std::filesystem::path& json_out);

// Activation memory and step time of one model over recompute x attention x precision x T:
// predicted (the activation table) beside measured (the model's arena, the peak RSS growth)
// with the median step time; validates that every policy's losses are bitwise the first's
// of the same T, precision and attention (list "none" first). Returns non-zero when not.
struct MemoryBenchOptions {
  std::vector<int> seq_lens{256, 1024};
  std::vector<std::string> recompute{"none", "selective", "full"};
  std::vector<std::string> attention{"flash", "materialized"};
  std::vector<std::string> precision{"fp32"};
  int threads = 2, steps = 2, warmup = 1;
  std::filesystem::path json_out;
  std::string cpu;
};
int bench_memory(RunConfig cfg, const MemoryBenchOptions& opt);

// Shared by the benchmarks: a shard of random tokens long enough for every step of cfg
// (speed does not depend on the text). (The median is core/timer.h's.)
void write_random_shard(const std::filesystem::path& path, const RunConfig& cfg);

}  // namespace loom
