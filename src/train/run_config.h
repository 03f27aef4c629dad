// The run configuration: a TOML file with [model], [train], [data], [run] sections.
// Every field carries a doc comment (unit, default); unknown keys are errors.
// `--set section.key=value` overrides apply on top of the file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"

namespace loom {

struct TrainConfig {
  int micro_batch = 4;          // B: rows per micro-batch on each data-parallel rank
  int global_batch = 0;         // sequences per optimizer step; 0 = micro_batch*grad_accum*dp
  int seq_len = 256;            // T: tokens per row; <= model.block_size
  int grad_accum = 1;           // micro-batches per optimizer step
  int steps = 100;              // optimizer steps to run (total, including resumed ones)
  double lr = 6e-4;             // peak learning rate
  double min_lr = 6e-5;         // final learning rate of the cosine schedule
  int warmup_steps = 0;         // linear warm-up steps (lr * (s+1)/warmup)
  std::string lr_schedule = "cosine";  // "cosine" | "constant" (after warm-up)
  double weight_decay = 0.1;    // AdamW decoupled decay, on params whose spec says decay
  double beta1 = 0.9;           // AdamW beta1
  double beta2 = 0.95;          // AdamW beta2
  double eps = 1e-8;            // AdamW epsilon
  double grad_clip = 1.0;       // max global gradient L2 norm; 0 = no clipping
  uint64_t seed = 1337;         // initialisation and shuffling seed
  bool shuffle = false;         // false: llm.c's sequential order; true: per-epoch permutation
  int eval_every = 0;           // steps between validation losses; 0 = never
  int64_t eval_tokens = 32768;  // validation tokens per evaluation (from offset 0)
  int checkpoint_every = 0;     // steps between checkpoints; 0 = only at the end
  // Activation recomputation: "none" | "selective" (attention probabilities and GELU
  // output recomputed in backward) | "full" (each block's forward re-run); results are
  // bitwise those of "none" (model/activations.h).
  std::string recompute = "none";
  // Attention kernel: "flash" (O(T) memory: the per-row log-sum-exp) | "materialized"
  // (keeps the (T,T) probabilities).
  std::string attention = "flash";
  // Compute precision (autocast): "fp32" | "bf16" | "fp16". GEMM operands in bf16/fp16
  // with fp32 accumulation; fp32 master weights, AdamW moments, layernorm, softmax and
  // loss. fp16 adds dynamic loss scaling (GradScaler's: 65536, x2 per 2000 clean steps,
  // x0.5 and the step skipped on an inf/NaN gradient).
  std::string precision = "fp32";
};

struct ParallelConfig {
  int dp = 1;              // data-parallel ranks
  int tp = 1;              // tensor-parallel ranks (n_head must divide by tp)
  int pp = 1;              // pipeline stages; the micro-batches are [train] grad_accum
  int zero = 0;            // ZeRO stage: 0, 1 (optimizer state), 2 (+ gradients), 3 (+ weights;
                           // not with pp > 1)
  double bucket_mb = 25;   // gradient all-reduce bucket size, MiB
  std::string schedule = "1f1b";  // pipeline schedule: "gpipe" | "1f1b" | "interleaved"
  int virtual_stages = 1;  // model chunks per pipeline rank (interleaved: >= 2)
  // Blocks per virtual stage, e.g. "3,4,4,1"; "auto" = balanced by measured cost (loom
  // train times each stage on a probe first: train/stage_profile.h); "" = by FLOP count.
  std::string stage_layers = "auto";
  bool sequence_parallel = false;  // shard layernorm/residual token rows over tp
  // Data-parallel gradient reduction dtype: "fp32" | "bf16" (half the bytes of every
  // all-reduce / reduce; micro-batch accumulation stays fp32).
  std::string grad_reduce = "fp32";
  // Data-parallel gradient compression: "none" | "bf16" (= grad_reduce bf16) | "int8" |
  // "powersgd" (parallel/grad_compression.h); ZeRO 0 and 1 only.
  std::string grad_compression = "none";
  int powersgd_rank = 4;   // the rank of PowerSGD's factors
  int powersgd_start = 10; // reductions left uncompressed first (PyTorch's start_powerSGD_iter)
};

struct CommConfig {
  double timeout_s = 300;  // deadline of every collective, seconds; then the job aborts
};

struct CheckpointConfig {
  bool async = false;  // copy the state to host memory and write it on a background thread
};

struct DataConfig {
  std::string train;  // path of the train token shard (loom prepare's train_000000.bin)
  std::string val;    // path of the validation shard; "" = no validation
};

struct RunSection {
  std::string dir = "runs/default";  // run directory: config, metrics.jsonl, checkpoints
  int threads = 0;                   // OpenMP threads; 0 = host cores / ranks on the host
  int keep_last = 2;                 // checkpoints kept; 0 = all
  std::string gemm = "onednn";       // GEMM backend: "onednn" | "openblas"
  bool trace = false;                // per-rank Chrome traces in dir/trace/ (loom report)
};

struct RunConfig {
  GptConfig model;
  TrainConfig train;
  DataConfig data;
  RunSection run;
  ParallelConfig parallel;
  CommConfig comm;
  CheckpointConfig checkpoint;

  // Throws InputError on inconsistent values.
  void validate() const;
  // The resolved config as TOML (what the run directory records).
  std::string to_toml() const;
};

// Parses TOML text (with `source` naming it in messages), then applies "section.key=value"
// overrides. Unknown sections/keys, wrong types and invalid values -> InputError.
RunConfig parse_run_config(const std::string& toml_text, const std::string& source,
                           const std::vector<std::string>& overrides = {});
RunConfig load_run_config(const std::string& path, const std::vector<std::string>& overrides = {});

}  // namespace loom
