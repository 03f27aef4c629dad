#include "train/trainer.h"

#include <fmt/format.h>

#include <algorithm>
#include <numeric>

#include "ckpt/checkpoint.h"
#include "core/check.h"
#include "core/philox.h"
#include "core/timer.h"
#include "kernels/kernels.h"
#include "train/schedule.h"
#include "train/throughput.h"

namespace loom {
namespace fs = std::filesystem;

Trainer::Trainer(const RunConfig& cfg, const ProcessGrid& grid)
    : cfg_(cfg),
      grid_(&grid),
      model_(cfg.model, grid),
      dp_(model_, grid.dp_comm(), cfg.parallel.zero, cfg.parallel.bucket_mb),
      opt_(cfg.train, dp_.shard_begin(), dp_.shard_end()),
      train_data_(cfg.data.train, cfg.train.micro_batch * grid.shape().dp, cfg.train.seq_len) {
  cfg_.validate();
  LOOM_REQUIRE(cfg_.parallel.dp == grid.shape().dp && cfg_.parallel.tp == grid.shape().tp &&
                   cfg_.parallel.pp == grid.shape().pp,
               "config asks for dp={} tp={} pp={} but the process grid is dp={} tp={} pp={}",
               cfg_.parallel.dp, cfg_.parallel.tp, cfg_.parallel.pp, grid.shape().dp,
               grid.shape().tp, grid.shape().pp);
  if (!cfg_.data.val.empty())
    val_data_.emplace(cfg_.data.val, cfg_.train.micro_batch * grid.shape().dp,
                      cfg_.train.seq_len);
  kernels::set_default_gemm_backend(kernels::parse_gemm_backend(cfg_.run.gemm));
  const size_t N = size_t(cfg_.train.micro_batch) * cfg_.train.seq_len;
  inputs_.assign(N, 0);
  targets_.assign(N, 0);
  model_.reserve(cfg_.train.micro_batch, cfg_.train.seq_len);
  init_params(model_.params(), cfg_.train.seed, model_.weights().data());
  dp_.release_all();  // ZeRO-3: keep only this rank's shard resident
}

void Trainer::resume(const fs::path& ckpt_dir) {
  // Every rank reads the whole checkpoint and keeps its shard of the moments.
  std::vector<float> m(model_.weights().size()), v(model_.weights().size());
  CheckpointState st = load_checkpoint(ckpt_dir, model_.params(), model_.weights().data(),
                                       m.data(), v.data());
  std::copy(m.begin() + opt_.begin(), m.begin() + opt_.end(), opt_.m().begin());
  std::copy(v.begin() + opt_.begin(), v.begin() + opt_.end(), opt_.v().begin());
  dp_.release_all();
  LOOM_REQUIRE(st.step <= cfg_.train.steps,
               "checkpoint {} is at step {}, past the configured steps={}", ckpt_dir.string(),
               st.step, cfg_.train.steps);
  step_ = int(st.step);
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

double Trainer::dp_mean(double local) {
  if (grid_->shape().dp == 1) return local;
  grid_->dp_comm().allreduce(&local, 1, ReduceOp::kSum);
  return local / grid_->shape().dp;
}

StepStats Trainer::train_step() {
  const TrainConfig& t = cfg_.train;
  const int dp = grid_->shape().dp, row0 = grid_->coord().dp * t.micro_batch;
  Timer timer;
  StepStats s;
  s.step = step_;
  dp_.zero_grads();
  double loss_sum = 0.0;
  for (int i = 0; i < t.grad_accum; ++i) {
    if (grid_->progress()) *grid_->progress() = CommProgress{step_, i};
    const uint64_t k = uint64_t(step_) * t.grad_accum + i;
    train_data_.load_rows(batch_slot(k), row0, t.micro_batch, inputs_.data(), targets_.data());
    if (i == t.grad_accum - 1) dp_.arm_for_last_micro_batch();
    // Each rank's mean is weighted 1/(accum*dp): the all-reduced sum is the global mean.
    loss_sum += model_.forward_train(inputs_.data(), targets_.data(), t.micro_batch, t.seq_len,
                                     1.0f / float(t.grad_accum * dp));
    model_.backward();
  }
  const float* grads = dp_.finish();
  s.loss = float(dp_mean(loss_sum / t.grad_accum));
  const ClipResult clip = clip_coefficient(dp_.grad_sum_squares(), t.grad_clip);
  s.grad_norm = clip.norm;
  s.lr = learning_rate(t, step_);
  opt_.update(model_.params(), model_.weights(), grads, s.lr, clip.scale, step_ + 1);
  dp_.gather_weights();
  ++step_;
  s.seconds = timer.seconds();
  s.tokens_per_s = double(t.micro_batch) * dp * t.seq_len * t.grad_accum / s.seconds;
  return s;
}

float Trainer::evaluate(int64_t tokens) {
  LOOM_REQUIRE(val_data_.has_value(), "no validation shard configured ([data] val)");
  const int B = cfg_.train.micro_batch, T = cfg_.train.seq_len, dp = grid_->shape().dp;
  const int64_t batches = std::max<int64_t>(1, tokens / (int64_t(B) * dp * T));
  double sum = 0.0;
  for (int64_t k = 0; k < batches; ++k) {
    val_data_->load_rows(uint64_t(k), grid_->coord().dp * B, B, inputs_.data(), targets_.data());
    sum += model_.forward(inputs_.data(), targets_.data(), B, T);
  }
  return float(dp_mean(sum / double(batches)));
}

fs::path Trainer::save_checkpoint() {
  CheckpointState st;
  st.step = step_;
  st.next_batch = uint64_t(step_) * cfg_.train.grad_accum;
  st.seed = cfg_.train.seed;
  st.config_toml = cfg_.to_toml();
  st.model = cfg_.model;
  // ZeRO: gather the moment shards so the checkpoint holds whole tensors.
  const float* m = opt_.m().data();
  const float* v = opt_.v().data();
  std::vector<float> full_m, full_v;
  if (opt_.end() - opt_.begin() != model_.weights().size()) {
    full_m.resize(model_.weights().size());
    full_v.resize(model_.weights().size());
    grid_->dp_comm().allgather(opt_.m().data(), full_m.data(), opt_.m().size());
    grid_->dp_comm().allgather(opt_.v().data(), full_v.data(), opt_.v().size());
    m = full_m.data();
    v = full_v.data();
  }
  fs::path dir = fs::path(cfg_.run.dir) / "checkpoints" / checkpoint_dir_name(step_);
  dp_.materialize_all();  // ZeRO-3: whole tensors for the checkpoint
  if (is_writer())
    dir = loom::save_checkpoint(cfg_.run.dir, model_.params(), model_.weights().data(), m, v, st,
                                cfg_.run.keep_last);
  dp_.release_all();
  grid_->world().barrier();  // nobody reads a checkpoint before it is complete
  return dir;
}

double Trainer::flops_per_token() const {
  return model_flops_per_token(model_.flop_params(), cfg_.model, cfg_.train.seq_len);
}

}  // namespace loom
