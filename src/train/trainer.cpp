#include "train/trainer.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/check.h"
#include "core/philox.h"
#include "core/memory.h"
#include "core/threads.h"
#include "core/timer.h"
#include "kernels/kernels.h"
#include "train/memory_need.h"
#include "train/schedule.h"
#include "train/throughput.h"

namespace loom {
namespace fs = std::filesystem;

namespace {

RunConfig checked(const RunConfig& cfg, const ProcessGrid& grid, const MemoryLimit& limit) {
  cfg.validate();
  // Before the partition and the model allocate anything the config describes.
  require_memory_fits(cfg, limit);
  LOOM_REQUIRE(cfg.parallel.dp == grid.shape().dp && cfg.parallel.tp == grid.shape().tp &&
                   cfg.parallel.pp == grid.shape().pp,
               "config asks for dp={} tp={} pp={} but the process grid is dp={} tp={} pp={}",
               cfg.parallel.dp, cfg.parallel.tp, cfg.parallel.pp, grid.shape().dp,
               grid.shape().tp, grid.shape().pp);
  return cfg;
}

}  // namespace

StagePartition Trainer::make_partition(const RunConfig& cfg) {
  // "auto" is resolved by measurement before a trainer is made (train/stage_profile.h);
  // left unresolved it is the FLOP-balanced split.
  return stage_partition(cfg);
}

ModelLayout Trainer::make_layout(const RunConfig& cfg, const ProcessGrid& grid,
                                 const StagePartition& part) {
  const int p = grid.shape().pp, r = grid.coord().pp, S = part.stages();
  ModelLayout layout;
  layout.sequence_parallel = cfg.parallel.sequence_parallel;
  for (int c = 0; c < cfg.parallel.virtual_stages; ++c) {
    const int vs = c * p + r;
    layout.chunks.push_back(ModelChunk{part.first[size_t(vs)], part.first[size_t(vs) + 1],
                                       vs == 0, vs == S - 1});
  }
  return layout;
}

Trainer::Trainer(const RunConfig& cfg, const ProcessGrid& grid)
    : at_start_(read_process_memory()),
      memory_limit_(available_memory(host_share().local_ranks)),
      cfg_(checked(cfg, grid, memory_limit_)),
      grid_(&grid),
      partition_(make_partition(cfg_)),
      model_(cfg_.model, grid, make_layout(cfg_, grid, partition_)),
      dp_(model_, grid.dp_comm(), cfg_.parallel.zero, cfg_.parallel.bucket_mb),
      opt_(cfg_.train, dp_.shard_begin(), dp_.shard_end()),
      scaler_(cfg_.train.precision == "fp16"),
      train_data_(cfg_.data.train, cfg_.train.micro_batch * grid.shape().dp, cfg_.train.seq_len) {
  if (!cfg_.data.val.empty())
    val_data_.emplace(cfg_.data.val, cfg_.train.micro_batch * grid.shape().dp,
                      cfg_.train.seq_len);
  kernels::set_default_gemm_backend(kernels::parse_gemm_backend(cfg_.run.gemm));
  const int B = cfg_.train.micro_batch, T = cfg_.train.seq_len, tp = grid.shape().tp;
  const size_t N = size_t(B) * T;
  inputs_.assign(N, 0);
  targets_.assign(N, 0);
  int slots = 1;
  if (grid.shape().pp > 1) {
    const ParallelConfig& p = cfg_.parallel;
    const size_t act = (p.sequence_parallel && tp > 1 ? N / size_t(tp) : N) * cfg_.model.n_embd;
    pipe_ = std::make_unique<PipelineExecutor>(
        grid.pp_comm(), build_schedule(p.schedule, p.pp, cfg_.train.grad_accum, p.virtual_stages),
        cfg_.train.grad_accum, p.virtual_stages, act, &trace_, grid.progress());
    for (int c = 0; c < p.virtual_stages; ++c) slots = std::max(slots, pipe_->peak_inflight(c));
  }
  model_.set_recompute(parse_recompute(cfg_.train.recompute));
  model_.set_attention(parse_attention(cfg_.train.attention));
  model_.set_precision(parse_dtype(cfg_.train.precision));
  dp_.set_grad_reduce(parse_dtype(cfg_.parallel.grad_reduce));
  dp_.set_compression(parse_grad_compression(cfg_.parallel.grad_compression),
                      cfg_.parallel.powersgd_rank, cfg_.parallel.powersgd_start,
                      cfg_.train.seed);
  dp_.set_weight_gather(model_.precision());
  model_.reserve(B, T, slots);
  init_params(model_.params(), cfg_.train.seed, model_.weights().data());
  dp_.set_norm_exclusions(model_.norm_duplicate_ranges());
  dp_.release_all();  // ZeRO-3: keep only this rank's shard resident
}

void Trainer::enable_trace(Trace::Clock::time_point origin) { trace_.enable(grid_->rank(), origin); }

void Trainer::write_trace() {
  if (!trace_.enabled()) return;
  const fs::path dir = fs::path(cfg_.run.dir) / "trace";
  fs::create_directories(dir);
  trace_.write(dir / fmt::format("rank_{:05}.json", grid_->rank()), grid_->describe());
}

uint64_t Trainer::batch_slot(uint64_t k) {
  const uint64_t nb = train_data_.batches_per_epoch();
  if (!cfg_.train.shuffle) return k % nb;
  const int64_t epoch = int64_t(k / nb);
  if (epoch != perm_epoch_) {
    // Fisher-Yates driven by Philox(seed, epoch): the order depends only on (seed, epoch).
    perm_.resize(nb);
    std::iota(perm_.begin(), perm_.end(), 0u);
    const Philox rng(cfg_.train.seed, name_hash("data.shuffle") + uint64_t(epoch));
    for (uint64_t i = nb - 1; i > 0; --i) {
      uint64_t j = uint64_t(rng.uniform(i) * double(i + 1));
      std::swap(perm_[i], perm_[std::min(j, i)]);
    }
    perm_epoch_ = epoch;
  }
  return perm_[k % nb];
}

void Trainer::load_rows(uint64_t k, int32_t* inputs, int32_t* targets) {
  const int row0 = grid_->coord().dp * cfg_.train.micro_batch;
  train_data_.load_rows(batch_slot(k), row0, cfg_.train.micro_batch, inputs, targets);
}

double Trainer::dp_mean(double local) {
  if (grid_->shape().dp == 1) return local;
  grid_->dp_comm().allreduce(&local, 1, ReduceOp::kSum);
  return local / grid_->shape().dp;
}

double Trainer::global_grad_sum_squares() {
  double s = dp_.grad_sum_squares();  // this (pp, tp) slice's unique parameters
  if (grid_->shape().tp > 1) grid_->tp_comm().allreduce(&s, 1, ReduceOp::kSum);
  if (grid_->shape().pp > 1) grid_->pp_comm().allreduce(&s, 1, ReduceOp::kSum);
  return s;
}

StepStats Trainer::train_step() {
  const TrainConfig& t = cfg_.train;
  const int dp = grid_->shape().dp;
  poll_checkpoint(false);  // commit an asynchronous save once every writer is done
  Timer timer;
  TraceScope span(&trace_, fmt::format("step {}", step_), "step", kLaneStep, -1, step_);
  StepStats s;
  s.step = step_;
  s.loss_scale = scaler_.scale();
  dp_.zero_grads();
  double loss_sum = 0.0;
  if (pipe_) {
    loss_sum = run_pipeline();
  } else {
    for (int i = 0; i < t.grad_accum; ++i) {
      if (grid_->progress()) *grid_->progress() = CommProgress{step_, i};
      load_rows(uint64_t(step_) * t.grad_accum + i, inputs_.data(), targets_.data());
      if (i == t.grad_accum - 1) dp_.arm_for_last_micro_batch();
      TraceScope f(&trace_, fmt::format("F mb{}", i), "compute", kLaneCompute, -1, step_, i);
      // Each rank's mean is weighted 1/(accum*dp): the all-reduced sum is the global mean
      // (times the loss scale: fp16 gradients are scaled until the optimizer).
      loss_sum += model_.forward_train(inputs_.data(), targets_.data(), t.micro_batch,
                                       t.seq_len, s.loss_scale / float(t.grad_accum * dp));
      model_.backward();
    }
  }
  const float* grads = dp_.finish();
  s.loss = float(dp_mean(loss_sum / t.grad_accum));
  // The grid-wide sum of squares is the same on every rank, so is the found-inf decision.
  const double scaled_sq = global_grad_sum_squares();
  const double ls = double(s.loss_scale);
  const ClipResult clip = clip_coefficient(scaled_sq / (ls * ls), t.grad_clip);
  s.grad_norm = clip.norm;
  const bool found_inf = !std::isfinite(scaled_sq);
  if (!std::isfinite(s.loss) || (found_inf && !scaler_.enabled()))
    stop_non_finite(s.loss, clip.norm);
  s.lr = learning_rate(t, step_);
  s.skipped = !scaler_.update(found_inf);
  if (!s.skipped) {
    opt_.update(model_.params(), model_.weights(), grads, s.lr, clip.scale / s.loss_scale,
                ++opt_steps_);
    dp_.gather_weights();
  }
  ++step_;
  s.seconds = timer.seconds();
  s.tokens_per_s = double(t.micro_batch) * dp * t.seq_len * t.grad_accum / s.seconds;
  return s;
}

void Trainer::stop_non_finite(float loss, float norm) {
  std::string where;
  if (!std::isfinite(norm)) {
    const float* g = model_.grads().data();
    for (const ParamSpec& p : model_.params()) {
      const float* end = g + p.offset + p.numel;
      const float* bad =
          std::find_if(g + p.offset, end, [](float x) { return !std::isfinite(x); });
      if (bad != end) {
        where = fmt::format(" (on this rank first in the gradient of {}, element {}: {})", p.name,
                            bad - (g + p.offset), *bad);
        break;
      }
    }
  }
  // Exit status 4: `loom launch` does not restart it, since resuming repeats it.
  throw Error(fmt::format(
                  "step {}: the {} is {}{}; stopping before the optimizer step, so no checkpoint "
                  "holds this state (lower train.lr, keep train.grad_clip on, or check the data "
                  "and the weights)",
                  step_ + 1, std::isfinite(loss) ? "gradient norm" : "loss",
                  std::isfinite(loss) ? norm : loss, where),
              4);
}

float Trainer::evaluate(int64_t tokens) {
  LOOM_REQUIRE(val_data_.has_value(), "no validation shard configured ([data] val)");
  const int B = cfg_.train.micro_batch, T = cfg_.train.seq_len, dp = grid_->shape().dp;
  const int64_t batches = std::max<int64_t>(1, tokens / (int64_t(B) * dp * T));
  if (pipe_) return float(dp_mean(evaluate_pipeline(batches)));
  double sum = 0.0;
  for (int64_t k = 0; k < batches; ++k) {
    val_data_->load_rows(uint64_t(k), grid_->coord().dp * B, B, inputs_.data(), targets_.data());
    sum += model_.forward(inputs_.data(), targets_.data(), B, T);
  }
  return float(dp_mean(sum / double(batches)));
}

double Trainer::flops_per_token() const {
  return model_flops_per_token(model_.flop_params(), cfg_.model, cfg_.train.seq_len);
}

}  // namespace loom
