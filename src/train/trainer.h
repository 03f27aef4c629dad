// The training loop: micro-batches with gradient accumulation, global-norm clipping,
// AdamW, LR schedule, periodic validation, checkpoints, metrics.jsonl and a live
// progress line. Deterministic: the same seed gives bitwise the same losses, and resuming
// from a checkpoint continues bitwise as if never stopped.
#pragma once

#include <nlohmann/json.hpp>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <thread>

#include "ckpt/checkpoint.h"
#include "comm/process_grid.h"
#include "data/loader.h"
#include "model/gpt.h"
#include "core/memory.h"
#include "core/trace.h"
#include "parallel/data_parallel.h"
#include "parallel/partition.h"
#include "parallel/pipeline.h"
#include "train/loss_scaler.h"
#include "train/metrics_log.h"
#include "train/optimizer.h"
#include "train/run_config.h"

namespace loom {

struct StepStats {
  int step = 0;         // 0-based index of the step just taken
  float loss = 0;       // mean over the step's micro-batches
  double lr = 0;
  float grad_norm = 0;  // before clipping
  double seconds = 0;
  double tokens_per_s = 0;
  // fp16: the loss scale the step ran with, and whether an inf/NaN gradient skipped it.
  float loss_scale = 1;
  bool skipped = false;
};

// Data parallel: the global micro-batch has micro_batch * dp rows; dp rank r trains on rows
// [r*micro_batch, (r+1)*micro_batch), so every dp size sees exactly the single process's
// data. Tensor parallel: every tp rank reads the same rows. Pipeline parallel: the step's
// grad_accum micro-batches run through the schedule's executor; the first stage reads the
// tokens, the last the targets. Only world rank 0 prints, writes metrics and checkpoints.
class Trainer {
 public:
  Trainer(const RunConfig& cfg, const ProcessGrid& grid);
  ~Trainer();  // waits for an asynchronous save still writing (without committing it)

  // Loads weights, optimizer moments and position from a checkpoint directory.
  void resume(const std::filesystem::path& ckpt_dir);

  StepStats train_step();
  // Mean loss over the first `tokens` tokens of the validation shard (batches of B*T
  // advancing by B*T from offset 0).
  float evaluate(int64_t tokens);
  // Saves a checkpoint (collective). With [checkpoint] async the state is copied to host
  // memory and written by a background thread while training goes on; the save is
  // committed (manifest written, directory renamed) at the first step start where every
  // writer has finished, or by finish_checkpoint(). Returns the checkpoint's final path.
  std::filesystem::path save_checkpoint();
  // Commits a pending asynchronous save, waiting for its writers (collective; no-op if none).
  void finish_checkpoint() { poll_checkpoint(true); }
  // Seconds the training loop spent on the last save: the whole save when synchronous;
  // when asynchronous, the snapshot plus the commit.
  double last_checkpoint_stall() const { return ckpt_stall_s_; }

  // The whole run: steps until train.steps, with eval, checkpoints, metrics and progress.
  void run(std::FILE* progress);

  int next_step() const { return step_; }
  // The pipeline partition (one virtual stage covering everything when pp = 1).
  const StagePartition& partition() const { return partition_; }
  // Per-rank Chrome trace (enabled by enable_trace); written by write_trace().
  void enable_trace(Trace::Clock::time_point origin);
  void write_trace();
  Trace& trace() { return trace_; }
  // Called at the start of every step of run() with the step index (heartbeats, fault
  // injection), and in the middle of every checkpoint save: after the tensor files are
  // written, before the manifest is committed.
  void set_step_observer(std::function<void(int step)> f) { step_observer_ = std::move(f); }
  void set_checkpoint_observer(std::function<void()> f) { checkpoint_observer_ = std::move(f); }
  // Called with true before and false after work between steps that is not a step (an
  // evaluation, a checkpoint save): heartbeats then report no progress timing.
  void set_busy_observer(std::function<void(bool)> f) { busy_observer_ = std::move(f); }
  // Fault injection (--inject-fault disk-full:step=S): metrics writes from step S on fail
  // as on a full disk.
  void set_metrics_fault(int step) { metrics_fault_step_ = step; }
  // Wall seconds of the last step's pipeline run (0 when pp = 1).
  double last_pipeline_seconds() const { return last_pipe_.seconds; }
  Gpt& model() { return model_; }
  DataParallel& data_parallel() { return dp_; }
  AdamW& optimizer() { return opt_; }
  LossScaler& loss_scaler() { return scaler_; }
  // AdamW updates taken (the steps minus those fp16 loss scaling skipped).
  int optimizer_steps() const { return opt_steps_; }
  const RunConfig& config() const { return cfg_; }
  // Model FLOPs per token (6N + 12*L*C*T) and the measured GEMM peak used for MFU.
  double flops_per_token() const;

 private:
  // Which batch slot of the shard micro-batch k reads (llm.c order, or shuffled per epoch).
  uint64_t batch_slot(uint64_t k);
  // Mean of a per-rank value over the data-parallel group.
  double dp_mean(double local);
  double run_pipeline();          // pp > 1: the schedule; returns the summed loss (last stage)
  void sync_tied_embedding();     // pp > 1: sum wte's gradients of the first and last stages
  double global_grad_sum_squares();
  // A non-finite loss or gradient norm (both reduced, so every rank sees it) ends the run
  // before the optimizer step: no checkpoint ever holds that state. Names the step, which
  // value, and this rank's first parameter whose gradient is not finite.
  [[noreturn]] void stop_non_finite(float loss, float norm);
  // Appends the step's record (world rank 0) and agrees across ranks whether it failed;
  // returns the error, or "".
  std::string write_metrics(MetricsLog& metrics, const nlohmann::json& rec, int step);
  // A run write failed: a final checkpoint attempt (collective), then an Error saying both.
  [[noreturn]] void stop_on_write_error(const std::string& error, std::FILE* out);
  // The most any rank's resident memory grew over the run (its peak above what it held
  // when the trainer was made), beside `predicted`: written to RUN/memory.json by the
  // writer, returned as a line for the progress output. Collective over the world.
  std::string record_peak_memory(double predicted);
  float evaluate_pipeline(int64_t batches);
  void load_rows(uint64_t k, int32_t* inputs, int32_t* targets);
  // The parameters this rank stores in checkpoints: all but the copies another rank holds.
  std::vector<ParamSpec> unique_params() const;
  static ModelLayout make_layout(const RunConfig& cfg, const ProcessGrid& grid,
                                 const StagePartition& part);
  static StagePartition make_partition(const RunConfig& cfg);
  CheckpointState checkpoint_state() const;
  // Gathers the moment shards (ZeRO) into full per-rank buffers when needed.
  void full_moments(std::vector<float>& m, std::vector<float>& v, const float** pm,
                    const float** pv);
  // Async saves: commit if every writer is done (or, with wait, once they are).
  void poll_checkpoint(bool wait);
  bool is_writer() const { return grid_->rank() == 0; }

  ProcessMemory at_start_;    // read first: what the run's peak memory is measured above
  MemoryLimit memory_limit_;  // read before anything is allocated; checked by checked()
  RunConfig cfg_;
  const ProcessGrid* grid_;
  StagePartition partition_;
  Gpt model_;
  DataParallel dp_;
  AdamW opt_;
  LossScaler scaler_;
  int opt_steps_ = 0;
  Trace trace_;
  std::unique_ptr<PipelineExecutor> pipe_;
  std::function<void(int)> step_observer_;
  std::function<void()> checkpoint_observer_;
  int metrics_fault_step_ = -1;
  std::function<void(bool)> busy_observer_;
  // Asynchronous save in flight: its writer thread, snapshot and state.
  std::thread ckpt_thread_;
  std::atomic<bool> ckpt_written_{false};
  bool ckpt_pending_ = false;
  CheckpointState ckpt_state_;
  std::vector<float> snap_w_, snap_m_, snap_v_;
  double ckpt_stall_s_ = 0;
  PipelineStats last_pipe_;
  std::vector<float> tied_peer_grad_;  // pp > 1: the other end stage's wte gradient
  TokenLoader train_data_;
  std::optional<TokenLoader> val_data_;
  std::vector<int32_t> inputs_, targets_;  // (B,T), this rank's rows
  int step_ = 0;                           // next optimizer step to run
  std::vector<uint32_t> perm_;             // shuffled slot order of perm_epoch_
  int64_t perm_epoch_ = -1;
};

}  // namespace loom
