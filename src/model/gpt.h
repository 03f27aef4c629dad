// The GPT-2 model: learned positions, pre-LN blocks, tanh GELU, tied lm_head, vocab padded
// to Vp with the softmax over the real V. Explicit forward and backward over one flat
// weight buffer and one flat grad buffer described by ParamSpecs.
//
// Single tensor-parallel rank for now: the layer code calls kernels on whole tensors; the
// tensor-parallel layers replace these calls with their shard-aware versions.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "comm/process_grid.h"
#include "model/config.h"
#include "model/param_spec.h"

namespace loom {

class Gpt {
 public:
  Gpt(const GptConfig& cfg, const ProcessGrid& grid);

  const GptConfig& config() const { return cfg_; }
  const std::vector<ParamSpec>& params() const { return specs_; }
  // Flat buffers: the parameters' ranges, then zeros up to a multiple of the dp size
  // (so ZeRO partitions divide evenly).
  std::span<float> weights() { return weights_; }
  std::span<const float> weights() const { return weights_; }
  std::span<float> grads() { return grads_; }
  // Parameters counted for FLOPs: all but the position embedding and padded vocab rows.
  int64_t flop_params() const;

  // Allocates activations for batches of B rows of T tokens (done once; never inside the
  // step loop). T <= block_size.
  void reserve(int B, int T);

  // Forward to logits (B,T,Vp); if targets is non-null also the mean loss (else returns 0).
  // Logits stay readable via logits().
  float forward(const int32_t* inputs, const int32_t* targets, int B, int T);
  // Forward for training: computes the mean loss and, fused with it, d(loss)/d(logits)
  // scaled by dloss_scale (the weight of this micro-batch's mean, e.g. 1/grad_accum) in
  // place of the logits. Must be followed by backward().
  float forward_train(const int32_t* inputs, const int32_t* targets, int B, int T,
                      float dloss_scale);
  // Accumulates parameter gradients into grads().
  void backward();
  // Called during backward as gradients become final: with n_layer once ln_f's are done,
  // with l after block l's, with -1 after the embeddings' (the last). Data parallelism
  // uses it to start a bucket's all-reduce while backward goes on. Empty = none.
  void set_backward_hook(std::function<void(int layer)> hook) { hook_ = std::move(hook); }
  // ZeRO-3: `acquire(unit)` runs before a unit's weights are read, `release(unit)` after
  // their last read in this pass (unit -1 = embeddings, l = block l, n_layer = ln_f). The
  // embeddings and ln_f stay acquired from forward_train() to the end of backward().
  void set_unit_hooks(std::function<void(int)> acquire, std::function<void(int)> release) {
    acquire_ = std::move(acquire);
    release_ = std::move(release);
  }
  void zero_grads();

  const float* logits() const { return acts_.logits; }  // (B,T,Vp)
  const float* losses() const { return acts_.losses; }  // (B,T)

 private:
  struct LayerParams {
    float *ln1w, *ln1b, *qkvw, *qkvb, *attprojw, *attprojb;
    float *ln2w, *ln2b, *fcw, *fcb, *fcprojw, *fcprojb;
  };
  struct ModelParams {
    float *wte, *wpe, *lnfw, *lnfb;
    std::vector<LayerParams> layers;
  };
  // Saved activations, views into one arena. Per-layer buffers are (L, ...) stacks.
  struct Activations {
    float* encoded;    // (B,T,C)
    float* ln1;        // (L,B,T,C)
    float* ln1_mean;   // (L,B,T)
    float* ln1_rstd;   // (L,B,T)
    float* qkv;        // (L,B,T,3C)
    float* atty;       // (L,B,T,C)
    float* att;        // (L,B,NH,T,T)
    float* residual2;  // (L,B,T,C)
    float* ln2;        // (L,B,T,C)
    float* ln2_mean;   // (L,B,T)
    float* ln2_rstd;   // (L,B,T)
    float* fch;        // (L,B,T,4C)
    float* fch_gelu;   // (L,B,T,4C)
    float* residual3;  // (L,B,T,C)
    float* lnf;        // (B,T,C)
    float* lnf_mean;   // (B,T)
    float* lnf_rstd;   // (B,T)
    float* logits;     // (B,T,Vp)
    float* losses;     // (B,T)
    float* proj;       // (B,T,C) scratch for attproj / fcproj outputs
  };
  // Gradients of activations, reused by every layer during backward.
  struct ActGrads {
    float* dresidual;  // (B,T,C)
    float* dln;        // (B,T,C)
    float* dqkv;       // (B,T,3C)
    float* datty;      // (B,T,C)
    float* dfch;       // (B,T,4C)
    float* dfch_gelu;  // (B,T,4C)
    float* scratch;    // attention backward scratch
  };

  ModelParams bind(float* base) const;
  void forward_trunk(const int32_t* inputs, int B, int T);
  void block_forward(int l, const float* residual, int B, int T);
  void block_backward(int l, const float* residual, int B, int T);

  GptConfig cfg_;
  const ProcessGrid* grid_;
  std::vector<ParamSpec> specs_;
  std::vector<float> weights_;
  std::vector<float> grads_;
  ModelParams w_, g_;
  std::vector<float> arena_;
  Activations acts_{};
  ActGrads dacts_{};
  int B_ = 0, T_ = 0;           // reserved sizes
  int cur_B_ = 0, cur_T_ = 0;   // sizes of the last forward
  std::vector<int32_t> inputs_; // (B,T) of the last forward, for encoder_backward
  bool have_dlogits_ = false;
  std::function<void(int)> hook_;
  std::function<void(int)> acquire_, release_;
  void acquire(int unit) { if (acquire_) acquire_(unit); }
  void release(int unit) { if (release_) release_(unit); }
};

}  // namespace loom
