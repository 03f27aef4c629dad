// AdamW with decoupled weight decay over the model's flat buffers. Moments m and v are flat
// buffers in the same layout as the weights (a ZeRO partition is a range of them).
// Whether a parameter decays comes from its spec's flag, never from an index list.
#pragma once

#include <span>
#include <vector>

#include "model/param_spec.h"
#include "train/run_config.h"

namespace loom {

class AdamW {
 public:
  // Owns the moments of the flat range [begin, end) (the whole buffer, or a ZeRO shard).
  AdamW(const TrainConfig& cfg, size_t begin, size_t end)
      : cfg_(cfg), begin_(begin), m_(end - begin, 0.0f), v_(end - begin, 0.0f) {}

  // One update of the owned range with learning rate lr. grads[i] is the gradient of flat
  // index begin + i, multiplied by grad_scale first (the clip coefficient). `t` is the
  // 1-based step count.
  void update(const std::vector<ParamSpec>& specs, std::span<float> weights, const float* grads,
              double lr, float grad_scale, int t);

  size_t begin() const { return begin_; }
  size_t end() const { return begin_ + m_.size(); }
  std::span<float> m() { return m_; }
  std::span<float> v() { return v_; }

 private:
  TrainConfig cfg_;
  size_t begin_;
  std::vector<float> m_;  // first moments of [begin, end)
  std::vector<float> v_;  // second moments of [begin, end)
};

// Global L2 norm of the gradient buffer and the clip coefficient torch's
// clip_grad_norm_ applies: min(1, max_norm / (norm + 1e-6)); 1 when max_norm == 0.
struct ClipResult {
  float norm;
  float scale;
};
ClipResult clip_coefficient(double grad_sum_squares, double max_norm);

}  // namespace loom
