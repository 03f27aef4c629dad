// Trainer checkpoints, sharded: every dp-rank-0 process writes its slices of the
// parameters it stores uniquely (tensor-parallel slices, replicated parameters from tp rank
// 0 only, the tied wte from the first stage only) with their AdamW moments; rank 0 commits
// the manifest once all have written. Resume reads the slices the new layout needs from
// whichever shards hold them, so a checkpoint loads into any (dp, tp, pp, zero) layout.
#include <fmt/format.h>

#include <algorithm>

#include "ckpt/checkpoint.h"
#include "core/check.h"
#include "core/timer.h"
#include "train/trainer.h"

namespace loom {
namespace fs = std::filesystem;

std::vector<ParamSpec> Trainer::unique_params() const {
  bool embed = false;
  for (const ModelChunk& c : model_.layout().chunks) embed |= c.embed;
  std::vector<ParamSpec> out;
  for (const ParamSpec& p : model_.params()) {
    const bool duplicate = (p.split_dim < 0 && grid_->coord().tp > 0) || (p.tied && !embed);
    if (!duplicate) out.push_back(p);
  }
  return out;
}

void Trainer::resume(const fs::path& ckpt_dir) {
  // Every rank reads the slices its layout needs and keeps its shard of the moments.
  const size_t n = model_.weights().size();
  std::vector<float> m(n, 0.0f), v(n, 0.0f);
  const CheckpointState st =
      load_checkpoint(ckpt_dir, model_.params(), model_.weights().data(), m.data(), v.data());
  std::copy(m.begin() + opt_.begin(), m.begin() + opt_.end(), opt_.m().begin());
  std::copy(v.begin() + opt_.begin(), v.begin() + opt_.end(), opt_.v().begin());
  dp_.release_all();
  LOOM_REQUIRE(st.step <= cfg_.train.steps,
               "checkpoint {} is at step {}, past the configured steps={}", ckpt_dir.string(),
               st.step, cfg_.train.steps);
  step_ = int(st.step);
  opt_steps_ = int(st.optimizer_step);  // the manifest's (the step when it has none)
  // fp16 resumes its scale; a checkpoint of another precision starts from the initial one.
  if (scaler_.enabled() && st.loss_scale > 0)
    scaler_.restore({st.loss_scale, st.loss_scale_growth_tracker});
  if (dp_.compressor() && grid_->rank() == 0)
    fmt::print(stderr, "warning: grad_compression='{}': checkpoints do not carry its error "
               "feedback (nor PowerSGD's Q) yet; they start afresh, so this resumed run is not "
               "bitwise the uninterrupted one\n",
               grad_compression_name(dp_.compressor()->kind()));
}

CheckpointState Trainer::checkpoint_state() const {
  CheckpointState st;
  st.step = step_;
  st.next_batch = uint64_t(step_) * cfg_.train.grad_accum;
  st.seed = cfg_.train.seed;
  st.optimizer_step = opt_steps_;
  if (scaler_.enabled()) {
    st.loss_scale = scaler_.state().scale;
    st.loss_scale_growth_tracker = scaler_.state().growth_tracker;
  }
  st.config_toml = cfg_.to_toml();
  st.model = cfg_.model;
  const ParallelConfig& p = cfg_.parallel;
  st.layout = fmt::format("dp={} tp={} pp={} zero={} micro_batch={} grad_accum={} schedule={} "
                          "virtual_stages={} sequence_parallel={}",
                          p.dp, p.tp, p.pp, p.zero, cfg_.train.micro_batch, cfg_.train.grad_accum,
                          p.schedule, p.virtual_stages, p.sequence_parallel);
  return st;
}

void Trainer::full_moments(std::vector<float>& m, std::vector<float>& v, const float** pm,
                           const float** pv) {
  *pm = opt_.m().data();
  *pv = opt_.v().data();
  if (opt_.end() - opt_.begin() == model_.weights().size()) return;
  m.resize(model_.weights().size());
  v.resize(model_.weights().size());
  grid_->dp_comm().allgather(opt_.m().data(), m.data(), opt_.m().size());
  grid_->dp_comm().allgather(opt_.v().data(), v.data(), opt_.v().size());
  *pm = m.data();
  *pv = v.data();
}

fs::path Trainer::save_checkpoint() {
  poll_checkpoint(true);  // one save in flight at a time
  Timer timer;
  const CheckpointState st = checkpoint_state();
  std::vector<float> full_m, full_v;
  const float* m = nullptr;
  const float* v = nullptr;
  full_moments(full_m, full_v, &m, &v);
  dp_.materialize_all();  // ZeRO-3: whole slices for the checkpoint
  if (is_writer()) begin_checkpoint(cfg_.run.dir, step_);
  grid_->world().barrier();
  const fs::path tmp = checkpoint_tmp_dir(cfg_.run.dir, step_);
  const fs::path dir = fs::path(cfg_.run.dir) / "checkpoints" / checkpoint_dir_name(step_);
  const bool writes = grid_->coord().dp == 0;
  if (cfg_.checkpoint.async) {
    // Snapshot to host memory; a background thread writes while training goes on.
    if (writes) {
      auto w = model_.weights();
      snap_w_.assign(w.begin(), w.end());
      snap_m_.assign(m, m + w.size());
      snap_v_.assign(v, v + w.size());
    }
    dp_.release_all();
    ckpt_state_ = st;
    ckpt_pending_ = true;
    ckpt_written_ = !writes;
    if (writes)
      ckpt_thread_ = std::thread([this, tmp, specs = unique_params()] {
        write_checkpoint_shard(tmp, grid_->rank(), specs, snap_w_.data(), snap_m_.data(),
                               snap_v_.data());
        ckpt_written_ = true;
      });
    ckpt_stall_s_ = timer.seconds();
    return dir;
  }
  if (writes)
    write_checkpoint_shard(tmp, grid_->rank(), unique_params(), model_.weights().data(), m, v);
  grid_->world().barrier();
  if (checkpoint_observer_) checkpoint_observer_();
  if (is_writer()) commit_checkpoint(cfg_.run.dir, st, cfg_.run.keep_last);
  dp_.release_all();
  grid_->world().barrier();  // nobody reads a checkpoint before it is complete
  ckpt_stall_s_ = timer.seconds();
  return dir;
}

void Trainer::poll_checkpoint(bool wait) {
  if (!ckpt_pending_) return;
  Timer timer;
  if (!wait) {
    // Every rank must take the same decision: commit only once all writers are done.
    double busy = ckpt_written_ ? 0.0 : 1.0;
    grid_->world().allreduce(&busy, 1, ReduceOp::kSum);
    if (busy > 0) return;
  }
  if (ckpt_thread_.joinable()) ckpt_thread_.join();
  grid_->world().barrier();
  if (checkpoint_observer_) checkpoint_observer_();
  if (is_writer()) commit_checkpoint(cfg_.run.dir, ckpt_state_, cfg_.run.keep_last);
  grid_->world().barrier();
  ckpt_pending_ = false;
  snap_w_ = {};
  snap_m_ = {};
  snap_v_ = {};
  ckpt_stall_s_ += timer.seconds();
}

Trainer::~Trainer() {
  if (ckpt_thread_.joinable()) ckpt_thread_.join();
}

}  // namespace loom
