#include "train/trainer.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <numeric>

#include "ckpt/checkpoint.h"
#include "core/check.h"
#include "core/file_io.h"
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
      opt_(cfg.train, model_.weights().size()),
      train_data_(cfg.data.train, cfg.train.micro_batch, cfg.train.seq_len) {
  cfg_.validate();
  if (!cfg_.data.val.empty())
    val_data_.emplace(cfg_.data.val, cfg_.train.micro_batch, cfg_.train.seq_len);
  kernels::set_default_gemm_backend(kernels::parse_gemm_backend(cfg_.run.gemm));
  const size_t N = size_t(cfg_.train.micro_batch) * cfg_.train.seq_len;
  inputs_.assign(N, 0);
  targets_.assign(N, 0);
  model_.reserve(cfg_.train.micro_batch, cfg_.train.seq_len);
  init_params(model_.params(), cfg_.train.seed, model_.weights().data());
}

void Trainer::resume(const fs::path& ckpt_dir) {
  CheckpointState st = load_checkpoint(ckpt_dir, model_.params(), model_.weights().data(),
                                       opt_.m().data(), opt_.v().data());
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

StepStats Trainer::train_step() {
  const TrainConfig& t = cfg_.train;
  Timer timer;
  StepStats s;
  s.step = step_;
  model_.zero_grads();
  double loss_sum = 0.0;
  for (int i = 0; i < t.grad_accum; ++i) {
    const uint64_t k = uint64_t(step_) * t.grad_accum + i;
    train_data_.load(batch_slot(k), inputs_.data(), targets_.data());
    loss_sum += model_.forward_train(inputs_.data(), targets_.data(), t.micro_batch, t.seq_len,
                                     1.0f / float(t.grad_accum));
    model_.backward();
  }
  s.loss = float(loss_sum / t.grad_accum);
  const ClipResult clip = clip_coefficient(model_.grads(), t.grad_clip);
  s.grad_norm = clip.norm;
  s.lr = learning_rate(t, step_);
  opt_.update(model_.params(), model_.weights(), model_.grads(), s.lr, clip.scale, step_ + 1);
  ++step_;
  s.seconds = timer.seconds();
  s.tokens_per_s = double(t.micro_batch) * t.seq_len * t.grad_accum / s.seconds;
  return s;
}

float Trainer::evaluate(int64_t tokens) {
  LOOM_REQUIRE(val_data_.has_value(), "no validation shard configured ([data] val)");
  const int B = cfg_.train.micro_batch, T = cfg_.train.seq_len;
  const int64_t batches = std::max<int64_t>(1, tokens / (int64_t(B) * T));
  double sum = 0.0;
  for (int64_t k = 0; k < batches; ++k) {
    val_data_->load(uint64_t(k), inputs_.data(), targets_.data());
    sum += model_.forward(inputs_.data(), targets_.data(), B, T);
  }
  return float(sum / double(batches));
}

fs::path Trainer::save_checkpoint() {
  CheckpointState st;
  st.step = step_;
  st.next_batch = uint64_t(step_) * cfg_.train.grad_accum;
  st.seed = cfg_.train.seed;
  st.config_toml = cfg_.to_toml();
  st.model = cfg_.model;
  return loom::save_checkpoint(cfg_.run.dir, model_.params(), model_.weights().data(),
                               opt_.m().data(), opt_.v().data(), st, cfg_.run.keep_last);
}

double Trainer::flops_per_token() const {
  return model_flops_per_token(model_.flop_params(), cfg_.model, cfg_.train.seq_len);
}

}  // namespace loom
