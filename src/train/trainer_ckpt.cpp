// Trainer checkpoints: whole tensors (gpt2_param_specs layout) whatever the layout. Under
// tensor or pipeline parallelism each rank writes its slices into a whole-model buffer and
// the buffers are summed onto world rank 0 (every element has exactly one contributor:
// dp rank 0, tp rank 0 for replicated parameters, the first stage for the tied wte), so
// the sum is exact. Resume reads the whole checkpoint on every rank and keeps its slices,
// so a checkpoint loads into any (dp, tp, pp, zero) layout.
#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "ckpt/checkpoint.h"
#include "core/check.h"
#include "train/trainer.h"

namespace loom {
namespace fs = std::filesystem;

namespace {

bool whole_layout(const ProcessGrid& g) { return g.shape().tp == 1 && g.shape().pp == 1; }

// Rows of wte in the checkpoint (Vp at tp = 1) and in this rank's global view (Vp at tp).
struct VocabRows {
  int64_t ckpt, tp;
};

}  // namespace

std::vector<float> Trainer::gather_whole(const float* flat) {
  const std::vector<ParamSpec> whole = gpt2_param_specs(cfg_.model);
  std::vector<float> out(flat_size(whole), 0.0f);
  const VocabRows rows{cfg_.model.padded_vocab(), cfg_.model.padded_vocab(model_.tp())};
  const int64_t C = cfg_.model.n_embd;
  bool embed = false;
  for (const ModelChunk& c : model_.layout().chunks) embed |= c.embed;
  const bool contributes = grid_->coord().dp == 0;
  for (const ParamSpec& p : model_.params()) {
    const bool duplicate = (p.split_dim < 0 && grid_->coord().tp > 0) || (p.tied && !embed);
    if (!contributes || duplicate) continue;
    float* dst = out.data() + find_param(whole, p.name).offset;
    if (p.tied && rows.tp != rows.ckpt) {
      std::vector<float> tmp(size_t(rows.tp * C), 0.0f);
      local_to_global(p, flat + p.offset, tmp.data());
      std::copy(tmp.begin(), tmp.begin() + rows.ckpt * C, dst);
    } else {
      local_to_global(p, flat + p.offset, dst);
    }
  }
  grid_->world().reduce_async(out.data(), out.size(), 0)->wait();
  return out;
}

void Trainer::scatter_whole(const float* in, float* flat) {
  const std::vector<ParamSpec> whole = gpt2_param_specs(cfg_.model);
  const VocabRows rows{cfg_.model.padded_vocab(), cfg_.model.padded_vocab(model_.tp())};
  const int64_t C = cfg_.model.n_embd;
  for (const ParamSpec& p : model_.params()) {
    const float* src = in + find_param(whole, p.name).offset;
    if (p.tied && rows.tp != rows.ckpt) {
      std::vector<float> tmp(size_t(rows.tp * C), 0.0f);  // extra padding rows are zero
      std::copy(src, src + rows.ckpt * C, tmp.begin());
      slice_to_local(p, tmp.data(), flat + p.offset);
    } else {
      slice_to_local(p, src, flat + p.offset);
    }
  }
}

void Trainer::resume(const fs::path& ckpt_dir) {
  // Every rank reads the whole checkpoint and keeps its slices and shard of the moments.
  const size_t n = model_.weights().size();
  std::vector<float> m(n, 0.0f), v(n, 0.0f);
  CheckpointState st;
  if (whole_layout(*grid_)) {
    st = load_checkpoint(ckpt_dir, model_.params(), model_.weights().data(), m.data(), v.data());
  } else {
    const std::vector<ParamSpec> whole = gpt2_param_specs(cfg_.model);
    std::vector<float> w_all(flat_size(whole)), m_all(w_all.size(), 0.0f),
        v_all(w_all.size(), 0.0f);
    st = load_checkpoint(ckpt_dir, whole, w_all.data(), m_all.data(), v_all.data());
    scatter_whole(w_all.data(), model_.weights().data());
    scatter_whole(m_all.data(), m.data());
    scatter_whole(v_all.data(), v.data());
  }
  std::copy(m.begin() + opt_.begin(), m.begin() + opt_.end(), opt_.m().begin());
  std::copy(v.begin() + opt_.begin(), v.begin() + opt_.end(), opt_.v().begin());
  dp_.release_all();
  LOOM_REQUIRE(st.step <= cfg_.train.steps,
               "checkpoint {} is at step {}, past the configured steps={}", ckpt_dir.string(),
               st.step, cfg_.train.steps);
  step_ = int(st.step);
}

fs::path Trainer::save_checkpoint() {
  CheckpointState st;
  st.step = step_;
  st.next_batch = uint64_t(step_) * cfg_.train.grad_accum;
  st.seed = cfg_.train.seed;
  st.config_toml = cfg_.to_toml();
  st.model = cfg_.model;
  // ZeRO: gather the moment shards so every rank holds its slice's whole moments.
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
  const std::function<void()> mid_save = [this] {
    if (checkpoint_observer_) checkpoint_observer_();
  };
  if (whole_layout(*grid_)) {
    if (is_writer())
      dir = loom::save_checkpoint(cfg_.run.dir, model_.params(), model_.weights().data(), m, v,
                                  st, cfg_.run.keep_last, mid_save);
  } else {
    const std::vector<float> w_all = gather_whole(model_.weights().data());
    const std::vector<float> m_all = gather_whole(m), v_all = gather_whole(v);
    if (is_writer())
      dir = loom::save_checkpoint(cfg_.run.dir, gpt2_param_specs(cfg_.model), w_all.data(),
                                  m_all.data(), v_all.data(), st, cfg_.run.keep_last, mid_save);
  }
  if (!is_writer()) mid_save();
  dp_.release_all();
  grid_->world().barrier();  // nobody reads a checkpoint before it is complete
  return dir;
}

}  // namespace loom
