// The layers of Gpt: embeddings, transformer blocks and the head, each tensor-parallel
// over the tp communicator (identity maps at tp = 1, where the calls are the single-rank
// kernels exactly). Megatron's conjugate maps:
//   copy-to-tp   (f): forward identity,   backward all-reduce     (column-parallel input)
//   reduce-from  (g): forward all-reduce, backward identity       (row-parallel output)
// and with sequence parallelism f = all-gather / reduce-scatter, g = reduce-scatter /
// all-gather over the N = B*T token rows.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/check.h"
#include "kernels/kernels.h"
#include "model/gpt.h"
#include "model/tp_ops.h"

namespace loom {
namespace k = kernels;

const float* Gpt::reduce_rows(float* partial, float* local, int N) {
  if (tp_size_ == 1) return partial;
  Comm& tpc = grid_->tp_comm();
  if (sp_) {
    tpc.reduce_scatter(partial, local, size_t(Nl(N)) * cfg_.n_embd);
    return local;
  }
  tpc.allreduce(partial, size_t(N) * cfg_.n_embd, ReduceOp::kSum);
  return partial;
}

const float* Gpt::gather_rows(const float* local, float* full, int N) {
  if (!sp_) return local;
  grid_->tp_comm().allgather(local, full, size_t(Nl(N)) * cfg_.n_embd);
  return full;
}

Gpt::BlockViews Gpt::block_views(const Slot& a, int j) const {
  const ActDims d = dims(a.B, a.T);
  BlockViews v{a.at};
  for (const ActEntry& e : activation_table()) {
    if (e.scope != ActScope::kBlock) continue;
    const size_t n = size_t(e.numel(d));  // strides of the micro-batch's own B, T
    v.at[size_t(e.id)] = a.at[size_t(e.id)].slice(kept(e, recompute_) ? size_t(j) * n : 0, n);
  }
  return v;
}

void Gpt::layernorm_rows(const TensorView& full, float* mean, float* rstd, const float* in,
                         const float* w, const float* b, int N) {
  float* rows = staged(full);
  float* out = sp_ ? scr(act::kLocal) : rows;
  k::layernorm_forward(out, mean, rstd, in, w, b, Nl(N), cfg_.n_embd);
  gather_rows(out, rows, N);
  store_compute(full, rows, size_t(N) * cfg_.n_embd);
}

void Gpt::gelu_rows(const BlockViews& v, size_t n) {
  const TensorView& dst = v.t(act::kFchGelu);
  if (precision_ == DType::kF32) return k::gelu_forward(dst.f32(), v(act::kFch), n);
  // Through the (N,C) stage, a stage-full at a time (elementwise, so the blocks are exact).
  const size_t step = scratch_[size_t(act::kProj)].numel;
  for (size_t i = 0; i < n; i += step) {
    const size_t m = std::min(step, n - i);
    k::gelu_forward(staged(dst), v(act::kFch) + i, m);
    store_compute(dst.slice(i, m), staged(dst), m);
  }
}

float* Gpt::staged(const TensorView& dst) const {
  return precision_ == DType::kF32 ? dst.f32() : scr(act::kProj);
}

void Gpt::store_compute(const TensorView& dst, const float* src, size_t n) {
  if (precision_ == DType::kF32) return;  // src is dst (staged)
  LOOM_CHECK(n <= dst.numel, "compute store of {} elements into {}", n, dst.numel);
  k::to_compute(precision_, dst.data, src, n);
}

void Gpt::linear_forward(float* out, const TensorView& inp, const float* w, const float* b,
                         int N, int C, int OC) {
  k::matmul_forward_typed(precision_, out, inp.data, cw(w), b, N, C, OC);
}

void Gpt::linear_backward(float* dinp, float* dw, float* db, const float* dout,
                          const TensorView& inp, const float* w, int N, int C, int OC,
                          act::Id stage_id) {
  const TensorView& stage = scratch_[size_t(stage_id)];
  k::matmul_backward_typed(precision_, dinp, dw, db, dout, inp.data, cw(w), stage.data,
                           stage.numel, N, C, OC);
}

void Gpt::recompute_block(int l, int j, Slot& a, const float* residual) {
  using namespace act;
  if (recompute_ == Recompute::kNone) return;
  if (recompute_ == Recompute::kFull) return block_forward(l, j, a, residual, true);
  const int tp = tp_size_, Cl = cfg_.n_embd / tp, NHl = cfg_.n_head / tp, N = a.B * a.T;
  const BlockViews v = block_views(a, j);
  const BlockParams& p = w_.blocks[size_t(l)];
  // The same kernels on the same kept inputs rewrite the same statistics.
  layernorm_rows(v.t(kLn1), v(kLn1Mean), v(kLn1Rstd), residual, p.ln1w, p.ln1b, N);
  layernorm_rows(v.t(kLn2), v(kLn2Mean), v(kLn2Rstd), v(kResidual2), p.ln2w, p.ln2b, N);
  if (attention_ == AttentionKernel::kMaterialized)
    k::attention_probs(v(act::kAtt), v(act::kQkv), a.B, a.T, Cl, NHl);
  gelu_rows(v, size_t(N) * 4 * Cl);
}

float* Gpt::ln_grad(float* real) {
  if (!sp_) return real;
  for (const SpEntry& e : sp_index_)
    if (e.grad == real) return scr(act::kSpGrads) + e.offset;
  LOOM_CHECK(false, "no sequence-parallel gradient slot for this parameter");
  __builtin_unreachable();
}

void Gpt::finish_sp_grads(const ModelChunk& ch) {
  grid_->tp_comm().allreduce(scr(act::kSpGrads), sp_grads_size_, ReduceOp::kSum);
  for (const SpEntry& e : sp_index_) {
    const bool mine = (e.layer >= ch.first_block && e.layer < ch.end_block) ||
                      (e.layer < 0 && ch.embed) || (e.layer == cfg_.n_layer && ch.head);
    if (!mine) continue;
    const float* src = scr(act::kSpGrads) + e.offset;
    for (size_t i = 0; i < e.numel; ++i) e.grad[i] += src[i];
  }
}

void Gpt::embed_forward(Slot& a, const int32_t* tokens) {
  const int B = a.B, T = a.T, C = cfg_.n_embd, N = B * T, V = cfg_.vocab_size;
  for (int i = 0; i < N; ++i)
    LOOM_REQUIRE(tokens[i] >= 0 && tokens[i] < V, "token id {} at position {} is outside the "
                 "vocabulary [0, {})", tokens[i], i, V);
  std::copy(tokens, tokens + N, a.tokens.begin());
  float* input = a.f(act::kInput);
  if (tp_size_ == 1) {
    k::encoder_forward(input, tokens, w_.wte, w_.wpe, B, T, C);
    return;
  }
  const int Vl = Vp_ / tp_size_, v0 = tp_rank_ * Vl, nl = Nl(N);
  // Each rank looks up the tokens of its vocabulary rows (zeros elsewhere); the sum over
  // tp ranks is exact (one non-zero term).
  float* proj = scr(act::kProj);
  vocab_embedding_lookup(proj, tokens, w_.wte, N, C, v0, Vl);
  const float* rows = reduce_rows(proj, input, N);
  if (rows != input) std::memcpy(input, rows, size_t(nl) * C * sizeof(float));
  add_positions(input, w_.wpe, nl, sp_ ? tp_rank_ * nl : 0, T, C);
}

void Gpt::embed_backward(Slot& a) {
  const int B = a.B, T = a.T, C = cfg_.n_embd, N = B * T, nl = Nl(N);
  const float* dres = scr(act::kDresidual);
  if (tp_size_ == 1) {
    k::encoder_backward(g_.wte, g_.wpe, dres, a.tokens.data(), B, T, C);
    return;
  }
  const int Vl = Vp_ / tp_size_, v0 = tp_rank_ * Vl;
  const float* full = gather_rows(dres, scr(act::kDresFull), N);
  vocab_embedding_backward(g_.wte, full, a.tokens.data(), N, C, v0, Vl);
  positions_backward(ln_grad(g_.wpe), dres, nl, sp_ ? tp_rank_ * nl : 0, T, C);
}

void Gpt::block_forward(int l, int j, Slot& a, const float* residual, bool recompute) {
  using namespace act;
  const int B = a.B, T = a.T, C = cfg_.n_embd, N = B * T, nl = Nl(N);
  const int tp = tp_size_, Cl = C / tp, NHl = cfg_.n_head / tp;
  const size_t nc = size_t(N) * C, nlc = size_t(nl) * C;
  const BlockParams& p = w_.blocks[size_t(l)];
  const BlockViews v = block_views(a, j);
  float *proj = scr(kProj), *local = scr(kLocal);
  // Row-parallel biases are added once (tp rank 0), before the partial sums are reduced.
  const float* rowbias_attn = tp_rank_ == 0 ? p.attprojb : nullptr;
  const float* rowbias_mlp = tp_rank_ == 0 ? p.fcprojb : nullptr;
  layernorm_rows(v.t(kLn1), v(kLn1Mean), v(kLn1Rstd), residual, p.ln1w, p.ln1b, N);
  linear_forward(v(kQkv), v.t(kLn1), p.qkvw, p.qkvb, N, C, 3 * Cl);
  float* atty = staged(v.t(kAtty));
  if (attention_ == AttentionKernel::kFlash)
    k::flash_attention_forward(atty, v(kLse), v(kQkv), B, T, Cl, NHl);
  else
    k::attention_forward(atty, v(kAtt), v(kQkv), B, T, Cl, NHl);
  store_compute(v.t(kAtty), atty, nc / tp);
  linear_forward(proj, v.t(kAtty), p.attprojw, rowbias_attn, N, Cl, C);
  k::residual_forward(v(kResidual2), residual, reduce_rows(proj, local, N), nlc);
  layernorm_rows(v.t(kLn2), v(kLn2Mean), v(kLn2Rstd), v(kResidual2), p.ln2w, p.ln2b, N);
  linear_forward(v(kFch), v.t(kLn2), p.fcw, p.fcb, N, C, 4 * Cl);
  gelu_rows(v, 4 * nc / tp);
  if (recompute) return;  // backward needs nothing the last projection makes
  linear_forward(proj, v.t(kFchGelu), p.fcprojw, rowbias_mlp, N, 4 * Cl, C);
  k::residual_forward(v(kResidual3), v(kResidual2), reduce_rows(proj, local, N), nlc);
}

void Gpt::block_backward(int l, int j, Slot& a, const float* residual) {
  using namespace act;
  const int B = a.B, T = a.T, C = cfg_.n_embd, N = B * T, nl = Nl(N);
  const int tp = tp_size_, Cl = C / tp, NHl = cfg_.n_head / tp;
  const size_t nc = size_t(N) * C;
  const BlockParams& p = w_.blocks[size_t(l)];
  const BlockParams& dp = g_.blocks[size_t(l)];
  const BlockViews v = block_views(a, j);
  float* dres = scr(kDresidual);  // in: d residual3 (Nl rows); out: d residual
  float *dres_full = scr(kDresFull), *dln = scr(kDln), *dln_local = scr(kDlnLocal);
  // One wide buffer holds d fch_gelu, then d fch (in place), then d qkv.
  float *dfch = scr(kDfch), *datty = scr(kDatty), *dqkv = dfch;
  const float* d3 = gather_rows(dres, dres_full, N);  // all N rows for the row-parallel
  linear_backward(dfch, dp.fcprojw, dp.fcprojb, d3, v.t(kFchGelu), p.fcprojw, N, 4 * Cl, C);
  k::gelu_backward(dfch, v(kFch), dfch, 4 * nc / tp);
  linear_backward(dln, dp.fcw, dp.fcb, dfch, v.t(kLn2), p.fcw, N, C, 4 * Cl);
  // residual3 = residual2 + mlp(ln2(residual2)): the LN path accumulates into dres.
  k::layernorm_backward(dres, ln_grad(dp.ln2w), ln_grad(dp.ln2b),
                        reduce_rows(dln, dln_local, N), v(kResidual2), p.ln2w, v(kLn2Mean),
                        v(kLn2Rstd), nl, C);
  const float* d2 = gather_rows(dres, dres_full, N);
  linear_backward(datty, dp.attprojw, dp.attprojb, d2, v.t(kAtty), p.attprojw, N, Cl, C);
  if (attention_ == AttentionKernel::kFlash) {
    // The attention output as the projection saw it (rounded to the compute precision).
    const TensorView& out = v.t(kAtty);
    k::flash_attention_backward(dqkv, scr(kAttScratch), datty, v(kQkv), out.data, out.dtype,
                                v(kLse), B, T, Cl, NHl);
  } else {
    k::attention_backward(dqkv, scr(kAttScratch), datty, v(kQkv), v(kAtt), B, T, Cl, NHl);
  }
  linear_backward(dln, dp.qkvw, dp.qkvb, dqkv, v.t(kLn1), p.qkvw, N, C, 3 * Cl);
  k::layernorm_backward(dres, ln_grad(dp.ln1w), ln_grad(dp.ln1b),
                        reduce_rows(dln, dln_local, N), residual, p.ln1w, v(kLn1Mean),
                        v(kLn1Rstd), nl, C);
}

namespace {

float mean_loss(const float* losses, int N) {
  double sum = 0.0;
  for (int i = 0; i < N; ++i) sum += losses[i];
  return float(sum / N);
}

void check_targets(const int32_t* targets, int N, int V) {
  for (int i = 0; i < N; ++i)
    LOOM_REQUIRE(targets[i] >= 0 && targets[i] < V,
                 "target id {} at position {} is outside the vocabulary [0, {})", targets[i], i,
                 V);
}

}  // namespace

float Gpt::head_forward(Slot& a, const float* x, const int32_t* targets, float dloss_scale) {
  using namespace act;
  const int C = cfg_.n_embd, N = a.B * a.T, Vl = Vp_ / tp_size_;
  const TensorView& lnf = scratch_[size_t(kLnf)];
  layernorm_rows(lnf, a.f(kLnfMean), a.f(kLnfRstd), x, w_.lnfw, w_.lnfb, N);
  if (!targets) {  // logits wanted: all of them, outside the arena
    logits_.resize(size_t(N) * size_t(Vl));
    linear_forward(logits_.data(), lnf, w_.wte, nullptr, N, C, Vl);
    return 0.0f;
  }
  check_targets(targets, N, cfg_.vocab_size);
  const bool train = dloss_scale > 0;
  const int rows = std::min(N, head_rows_);
  for (int r0 = 0; r0 < N; r0 += rows) {
    const int n = std::min(rows, N - r0);
    const TensorView in = lnf.slice(size_t(r0) * C, size_t(n) * C);
    head_rows_forward(a, in, targets, r0, n, train ? dloss_scale / float(N) : 0.0f);
  }
  a.have_dlogits = train;
  return mean_loss(a.f(kLosses), N);
}

void Gpt::head_rows_forward(Slot& a, const TensorView& in, const int32_t* targets, int r0,
                            int n, float dscale) {
  using namespace act;
  const int C = cfg_.n_embd, V = cfg_.vocab_size;
  const int Vl = Vp_ / tp_size_, v0 = tp_rank_ * Vl;
  float *logits = scr(kLogits), *losses = a.f(kLosses) + r0;
  const int32_t* tg = targets + r0;
  linear_forward(logits, in, w_.wte, nullptr, n, C, Vl);
  if (tp_size_ == 1) {
    if (dscale > 0) k::crossentropy_fused(losses, logits, tg, n, V, Vp_, dscale);
    else k::crossentropy_forward(losses, logits, tg, n, V, Vp_);
  } else {
    // Vocab-parallel: (max, sum exp, target logit) per token from every rank.
    float* stats = scr(kCeStats);
    float* mine = stats + size_t(tp_size_) * n * 3;
    k::vocab_ce_local_stats(mine, logits, tg, n, Vl, v0, V, /*keep_exps=*/dscale > 0);
    grid_->tp_comm().allgather(mine, stats, size_t(n) * 3);
    k::vocab_ce_finish(losses, logits, stats, tp_size_, tg, n, Vl, v0, V, dscale);
  }
  // logits now hold d loss/d logits: this block's part of wte's gradient and of d lnf.
  if (dscale > 0)
    linear_backward(a.f(kDlnf) + size_t(r0) * C, g_.wte, nullptr, logits, in, w_.wte, n, C, Vl,
                    kHeadStage);
}

void Gpt::head_backward(Slot& a, const float* x) {
  using namespace act;
  const int C = cfg_.n_embd, N = a.B * a.T, nl = Nl(N);
  float* dres = scr(kDresidual);
  // d lnf was written by the forward (head_rows_forward).
  const float* dln = reduce_rows(a.f(kDlnf), scr(kDlnLocal), N);
  std::fill_n(dres, size_t(nl) * C, 0.0f);
  k::layernorm_backward(dres, ln_grad(g_.lnfw), ln_grad(g_.lnfb), dln, x, w_.lnfw,
                        a.f(kLnfMean), a.f(kLnfRstd), nl, C);
}

}  // namespace loom
