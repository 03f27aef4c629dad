// Dynamic loss scaling with torch.cuda.amp.GradScaler's semantics, for fp16 training: the
// loss (so every gradient) is multiplied by `scale` so small fp16 gradients do not flush to
// zero; the optimizer sees the gradients divided by it again. A step whose gradients hold an
// inf or NaN anywhere on the grid is skipped (weights and moments untouched) and the scale
// halves; after `growth_interval` clean steps in a row it doubles. The found-inf decision
// must be the same on every rank (the trainer derives it from the grid-wide gradient norm),
// so every rank's scaler stays in the same state; the state goes into checkpoints.
#pragma once

namespace loom {

struct LossScalerState {
  float scale = 65536.0f;  // torch's init_scale
  int growth_tracker = 0;  // clean steps since the last change
  bool operator==(const LossScalerState&) const = default;
};

class LossScaler {
 public:
  struct Options {
    float init_scale = 65536.0f;
    float growth_factor = 2.0f;
    float backoff_factor = 0.5f;
    int growth_interval = 2000;
  };
  // Disabled: scale() is 1 and every step runs (fp32, bf16).
  explicit LossScaler(bool enabled);
  LossScaler(bool enabled, const Options& opt);

  bool enabled() const { return enabled_; }
  float scale() const { return enabled_ ? st_.scale : 1.0f; }
  // After a step's gradients are final: whether the optimizer step runs, and the state
  // for the next step (GradScaler.update).
  bool update(bool found_inf);

  const LossScalerState& state() const { return st_; }
  void restore(const LossScalerState& s);  // Error on a non-positive or non-finite scale

 private:
  bool enabled_;
  Options opt_;
  LossScalerState st_;
};

}  // namespace loom
