// The GPT-2 model: learned positions, pre-LN blocks, tanh GELU, tied lm_head, vocab padded
// to Vp with the softmax over the real V. Explicit forward and backward over one flat
// weight buffer and one flat grad buffer described by ParamSpecs.
//
// Parallel layouts. A rank holds one or more chunks (pipeline virtual stages), each a
// contiguous range of blocks; the first virtual stage also holds the embeddings, the last
// the final layernorm, lm_head and loss (with its own copy of the tied wte when they are
// different stages). Within a chunk every layer is Megatron-style tensor-parallel over the
// grid's tp communicator (model/tp_ops.h): heads split, column/row-parallel linears with
// the conjugate copy-to / reduce-from maps, vocab-parallel embedding and cross-entropy (the
// full logits are never gathered). With sequence parallelism the layernorm and residual
// regions are split along the N = B*T token rows and the maps become all-gather /
// reduce-scatter.
//
// A chunk keeps the activations of several micro-batches at once (one "slot" each) for
// pipeline schedules; the single-stage API (forward / forward_train / backward) uses
// chunk 0, slot 0.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <span>
#include <utility>
#include <vector>

#include "comm/process_grid.h"
#include "core/buffer.h"
#include "model/activations.h"
#include "model/config.h"
#include "model/param_spec.h"

namespace loom {

// One pipeline virtual stage held by this rank.
struct ModelChunk {
  int first_block = 0, end_block = 0;  // blocks [first_block, end_block)
  bool embed = false;                  // virtual stage 0: token + position embeddings
  bool head = false;                   // last virtual stage: ln_f, lm_head, loss
};

struct ModelLayout {
  std::vector<ModelChunk> chunks;  // chunk c = virtual stage c*pp + pp_rank
  bool sequence_parallel = false;
  // One chunk holding everything (no pipeline).
  static ModelLayout whole(const GptConfig& cfg, bool sequence_parallel = false);
};

class Gpt {
 public:
  // The whole model, tensor-parallel over grid.tp_comm() (pipeline size must be 1).
  Gpt(const GptConfig& cfg, const ProcessGrid& grid);
  Gpt(const GptConfig& cfg, const ProcessGrid& grid, const ModelLayout& layout);

  const GptConfig& config() const { return cfg_; }
  const ModelLayout& layout() const { return layout_; }
  const std::vector<ParamSpec>& params() const { return specs_; }
  // Flat buffers: the parameters' ranges, then zeros up to a multiple of the dp size
  // (so ZeRO partitions divide evenly).
  // The fp32 master weights. The non-const access marks the compute-precision copy stale:
  // the next forward remakes it from the masters (once per optimizer step).
  std::span<float> weights() {
    wc_stale_ = true;
    return weights_;
  }
  std::span<const float> weights() const { return weights_; }
  std::span<float> grads() { return grads_; }
  // Parameters counted for FLOPs: all but the position embedding and padded vocab rows
  // (of the whole model, whatever this rank holds).
  int64_t flop_params() const;
  int padded_vocab() const { return Vp_; }
  int tp() const { return tp_size_; }

  // Allocates activations for batches of B rows of T tokens, `slots` micro-batches per
  // chunk (done once; never inside the step loop). T <= block_size.
  void reserve(int B, int T, int slots = 1);
  // Floats of the activation a chunk passes to the next (N*C, or N*C/tp rows with
  // sequence parallelism) for the reserved B, T.
  size_t act_floats() const;
  int slots() const { return nslots_; }  // reserved activation slots per chunk
  size_t arena_bytes() const { return arena_.bytes(); }  // all reserved activations
  // What backward recomputes instead of keeping (model/activations.h); takes effect at
  // the next reserve().
  void set_recompute(Recompute policy);
  Recompute recompute() const { return recompute_; }
  // The attention kernel (model/activations.h); takes effect at the next reserve().
  void set_attention(AttentionKernel kernel);
  AttentionKernel attention() const { return attention_; }

  // The compute precision (autocast, kernels/kernels.h): GEMM operands (weights and the
  // activations they multiply) in bf16 or fp16 with fp32 accumulation; layernorm, softmax,
  // attention, cross-entropy, the residual stream, gradients and the masters stay fp32.
  // The low-precision weight copy is made from the masters once per step (per unit as it
  // is gathered under ZeRO-3). Takes effect at the next reserve().
  void set_precision(DType precision);
  DType precision() const { return precision_; }
  // Bytes of the compute-precision weight copy (0 in fp32), and those resident now (ZeRO-3
  // gives a released unit's pages back).
  size_t compute_copy_bytes() const { return wc_.bytes(); }
  size_t resident_compute_copy_bytes() const;

  // ---- pipeline API -----------------------------------------------------------------
  // Forward of chunk `chunk` for the micro-batch in `slot`. The embed chunk reads `tokens`
  // (B,T), others `in` (act_floats); the head chunk computes the mean loss over `targets`
  // and returns it (0 elsewhere), others write `out`. dloss_scale > 0: training, the head
  // also writes d(loss)/d(logits) scaled by it (the weight of this micro-batch's mean);
  // dloss_scale <= 0: evaluation (targets may then be null: logits only).
  float forward_chunk(int chunk, int slot, const int32_t* tokens, const int32_t* targets,
                      const float* in, float* out, int B, int T, float dloss_scale);
  // Backward of the slot's micro-batch: `dout` is d(loss)/d(out) (null on the head chunk);
  // writes d(loss)/d(in) to `din` (null on the embed chunk). Accumulates into grads().
  void backward_chunk(int chunk, int slot, const float* dout, float* din);

  // ---- single-stage API (chunk 0, slot 0) -----------------------------------------
  // Forward to logits (B,T,Vp/tp); if targets is non-null also the mean loss (else 0).
  float forward(const int32_t* inputs, const int32_t* targets, int B, int T);
  // Forward for training with the fused loss gradient; must be followed by backward().
  float forward_train(const int32_t* inputs, const int32_t* targets, int B, int T,
                      float dloss_scale);
  void backward();

  // Called during backward as gradients become final for this micro-batch: with n_layer
  // once ln_f's are done (head chunk), with l after block l's, with -1 after the
  // embeddings' (embed chunk). Data parallelism uses it to start a bucket's all-reduce
  // while backward goes on. Empty = none.
  void set_backward_hook(std::function<void(int layer)> hook) { hook_ = std::move(hook); }
  const std::function<void(int)>& backward_hook() const { return hook_; }
  // ZeRO-3: `acquire(unit)` runs before a unit's weights are read, `release(unit)` after
  // their last read in this pass (unit -1 = embeddings, l = block l, n_layer = ln_f). The
  // embeddings and ln_f stay acquired from forward_train() to the end of backward().
  void set_unit_hooks(std::function<void(int)> acquire, std::function<void(int)> release) {
    acquire_ = std::move(acquire);
    release_ = std::move(release);
  }
  // The hooks set now (to wrap them: a memory probe, a profiler).
  std::pair<std::function<void(int)>, std::function<void(int)>> unit_hooks() const {
    return {acquire_, release_};
  }
  void zero_grads();

  // Flat ranges [begin, end) whose gradients another rank also holds and counts in the
  // global norm (tp-replicated parameters on tp ranks > 0; the head's copy of wte when
  // the embeddings live on another pipeline stage).
  std::vector<std::pair<size_t, size_t>> norm_duplicate_ranges() const;
  // At a low precision, the flat ranges of the parameters forward and backward read only
  // through their compute copy: the blocks' linear weights (ZeRO may gather them as
  // low-precision words). The embeddings (fp32 lookup, as autocast), layernorms and biases
  // are read in fp32. Empty in fp32.
  std::vector<std::pair<size_t, size_t>> compute_only_ranges() const;
  // The flat range of the tied wte on this rank (empty if it holds none).
  std::pair<size_t, size_t> wte_range() const;

  // (B,T,Vp/tp) of the last forward without targets (a forward with targets computes the
  // logits a block of rows at a time and keeps none).
  const float* logits() const;
  // Rows of logits the head computes at once (activations.h kHeadRows by default): memory
  // rows x Vp/tp floats against re-reading wte once per block. Reserve again after.
  void set_head_rows(int rows);
  const float* losses() const;  // (B,T)

 private:
  struct BlockParams {
    float *ln1w, *ln1b, *qkvw, *qkvb, *attprojw, *attprojb;
    float *ln2w, *ln2b, *fcw, *fcb, *fcprojw, *fcprojb;
  };
  struct Params {
    float *wte = nullptr, *wpe = nullptr, *lnfw = nullptr, *lnfb = nullptr;
    std::vector<BlockParams> blocks;  // indexed by global block (null where not held)
  };
  // Saved activations of one chunk for one micro-batch: a view per chunk, block (the
  // stack over the chunk's blocks, or the shared copy of a recomputed entry) and head
  // entry of activation_table() (model/activations.h); scratch entries are in scratch_.
  struct Slot {
    std::array<TensorView, act::kCount> at{};
    std::vector<int32_t> tokens;  // (N) embed chunk: inputs, for the embedding backward
    int B = 0, T = 0;
    bool have_dlogits = false;
    float* f(act::Id id) const { return at[size_t(id)].f32(); }
    const TensorView& t(act::Id id) const { return at[size_t(id)]; }
  };
  // Block j's views of a slot's block entries (and the chunk/head ones unchanged).
  struct BlockViews {
    std::array<TensorView, act::kCount> at{};
    float* operator()(act::Id id) const { return at[size_t(id)].f32(); }
    const TensorView& t(act::Id id) const { return at[size_t(id)]; }
  };

  Params bind(float* base) const;
  void init_layout();
  // recompute: re-running for backward, which needs no block output (the last GEMM and
  // residual are skipped).
  void block_forward(int l, int j, Slot& a, const float* residual, bool recompute = false);
  void block_backward(int l, int j, Slot& a, const float* residual);
  void embed_forward(Slot& a, const int32_t* tokens);
  void embed_backward(Slot& a);
  float head_forward(Slot& a, const float* x, const int32_t* targets, float dloss_scale);
  // Rows [r0, r0 + n) of the head: logits, loss and, training (dscale > 0: the loss
  // gradient's scale), d loss/d logits, then wte's gradient and d lnf from them.
  void head_rows_forward(Slot& a, const TensorView& in, const int32_t* targets, int r0, int n,
                         float dscale);
  void head_backward(Slot& a, const float* x);
  void finish_sp_grads(const ModelChunk& ch);
  // The tensor-parallel maps (identity at tp = 1). Partial sums (N,C) of a row-parallel
  // output or a column-parallel input gradient -> this rank's token rows: all-reduced in
  // place, or reduce-scattered into `local` under sequence parallelism.
  const float* reduce_rows(float* partial, float* local, int N);
  // This rank's token rows -> all N rows: all-gathered into `full` under sequence
  // parallelism, else `local` itself.
  const float* gather_rows(const float* local, float* full, int N);
  BlockViews block_views(const Slot& a, int j) const;
  // Re-runs what the recompute policy dropped from block l (j-th of its chunk) before its
  // backward: nothing, the attention probabilities and GELU output, or the block forward.
  void recompute_block(int l, int j, Slot& a, const float* residual);
  // Layernorm region -> column-parallel input: the LN of this rank's rows of `in` into
  // `full` (all N rows, all-gathered under sequence parallelism; in the compute
  // precision), with its mean and rstd.
  void layernorm_rows(const TensorView& full, float* mean, float* rstd, const float* in,
                      const float* w, const float* b, int N);
  float* scr(act::Id id) const { return scratch_[size_t(id)].f32(); }
  // The GELU of the block's fch into fch_gelu (n elements, in the compute precision).
  void gelu_rows(const BlockViews& v, size_t n);
  // ---- compute precision ----
  // The compute copy of the master weights at `master` (the master itself in fp32).
  const void* cw(const float* master) const;
  // Remakes the compute copy of every weight (if stale) / of one ZeRO-3 unit.
  void refresh_compute_weights();
  void cast_unit(int unit);
  // ZeRO-3: gives the pages of a released unit's compute copy back (the next acquire casts
  // it again), so the copy, like the masters, is resident one unit at a time.
  void discard_unit(int unit);
  // fp32 values -> a compute-precision entry (a copy in fp32).
  void store_compute(const TensorView& dst, const float* src, size_t n);
  // Where an fp32 kernel writes what goes to `dst`: dst itself in fp32, else the (N,C)
  // forward stage (kProj).
  float* staged(const TensorView& dst) const;
  // The linear layer with inp (a compute-precision entry) and the compute copy of w.
  void linear_forward(float* out, const TensorView& inp, const float* w, const float* b, int N,
                      int C, int OC);
  // `stage`: the scratch entry the output gradient is rounded into (kStageLow for the
  // blocks, kHeadStage for the head).
  void linear_backward(float* dinp, float* dw, float* db, const float* dout,
                       const TensorView& inp, const float* w, int N, int C, int OC,
                       act::Id stage = act::kStageLow);
  ActDims dims(int B, int T) const;
  std::vector<ChunkShape> chunk_shapes() const;
  // LN parameter gradients: to the real grads, or under sequence parallelism to the
  // chunk's partial-sum scratch (all-reduced over tp at the end of the chunk).
  float* ln_grad(float* real);
  int Nl(int N) const { return sp_ ? N / tp_size_ : N; }

  GptConfig cfg_;
  const ProcessGrid* grid_;
  ModelLayout layout_;
  int tp_size_ = 1, tp_rank_ = 0, Vp_ = 0;
  bool sp_ = false;
  std::vector<ParamSpec> specs_;
  std::vector<float> weights_;
  std::vector<float> grads_;
  Params w_, g_;
  DType precision_ = DType::kF32;
  Buffer wc_;              // compute copy of weights_ (same flat layout); empty in fp32
  bool wc_stale_ = true;
  Recompute recompute_ = Recompute::kNone;
  int head_rows_ = kHeadRows;
  std::vector<float> logits_;  // the last forward without targets
  AttentionKernel attention_ = AttentionKernel::kFlash;
  Buffer arena_;
  std::vector<std::vector<Slot>> slots_;  // [chunk][slot]
  std::array<TensorView, act::kCount> scratch_{};
  size_t sp_grads_size_ = 0;
  struct SpEntry {
    float* grad;      // the real gradient
    size_t offset;    // into the sp_grads scratch
    size_t numel;
    int layer;
  };
  std::vector<SpEntry> sp_index_;
  int B_ = 0, T_ = 0, nslots_ = 0;  // reserved sizes
  std::function<void(int)> hook_;
  std::function<void(int)> acquire_, release_;
  void acquire(int unit) {
    if (acquire_) acquire_(unit);
    if (acquire_ && precision_ != DType::kF32) cast_unit(unit);
  }
  void release(int unit) {
    if (release_) release_(unit);
    if (release_ && precision_ != DType::kF32) discard_unit(unit);
  }
  void hook(int unit) { if (hook_) hook_(unit); }
};

}  // namespace loom
