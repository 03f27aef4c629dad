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
  const size_t tp = size_t(tp_size_), N = size_t(a.B) * a.T, nl = size_t(Nl(int(N)));
  const size_t nc = N * cfg_.n_embd, nlc = nl * cfg_.n_embd, jj = size_t(j);
  const size_t att = size_t(a.B) * (cfg_.n_head / tp) * a.T * a.T;
  return BlockViews{a.ln1 + jj * nc,           a.ln1_mean + jj * nl,     a.ln1_rstd + jj * nl,
                    a.qkv + jj * 3 * nc / tp,  a.atty + jj * nc / tp,    a.att + jj * att,
                    a.residual2 + jj * nlc,    a.ln2 + jj * nc,          a.ln2_mean + jj * nl,
                    a.ln2_rstd + jj * nl,      a.fch + jj * 4 * nc / tp, a.fch_gelu + jj * 4 * nc / tp,
                    a.residual3 + jj * nlc};
}

float* Gpt::ln_grad(float* real) {
  if (!sp_) return real;
  for (const SpEntry& e : sp_index_)
    if (e.grad == real) return s_.sp_grads + e.offset;
  LOOM_CHECK(false, "no sequence-parallel gradient slot for this parameter");
  __builtin_unreachable();
}

void Gpt::finish_sp_grads(const ModelChunk& ch) {
  grid_->tp_comm().allreduce(s_.sp_grads, sp_grads_size_, ReduceOp::kSum);
  for (const SpEntry& e : sp_index_) {
    const bool mine = (e.layer >= ch.first_block && e.layer < ch.end_block) ||
                      (e.layer < 0 && ch.embed) || (e.layer == cfg_.n_layer && ch.head);
    if (!mine) continue;
    const float* src = s_.sp_grads + e.offset;
    for (size_t i = 0; i < e.numel; ++i) e.grad[i] += src[i];
  }
}

void Gpt::embed_forward(Slot& a, const int32_t* tokens) {
  const int B = a.B, T = a.T, C = cfg_.n_embd, N = B * T, V = cfg_.vocab_size;
  for (int i = 0; i < N; ++i)
    LOOM_REQUIRE(tokens[i] >= 0 && tokens[i] < V, "token id {} at position {} is outside the "
                 "vocabulary [0, {})", tokens[i], i, V);
  std::copy(tokens, tokens + N, a.tokens.begin());
  if (tp_size_ == 1) {
    k::encoder_forward(a.input, tokens, w_.wte, w_.wpe, B, T, C);
    return;
  }
  const int Vl = Vp_ / tp_size_, v0 = tp_rank_ * Vl, nl = Nl(N);
  // Each rank looks up the tokens of its vocabulary rows (zeros elsewhere); the sum over
  // tp ranks is exact (one non-zero term).
  vocab_embedding_lookup(s_.proj, tokens, w_.wte, N, C, v0, Vl);
  const float* rows = reduce_rows(s_.proj, a.input, N);
  if (rows != a.input) std::memcpy(a.input, rows, size_t(nl) * C * sizeof(float));
  add_positions(a.input, w_.wpe, nl, sp_ ? tp_rank_ * nl : 0, T, C);
}

void Gpt::embed_backward(Slot& a) {
  const int B = a.B, T = a.T, C = cfg_.n_embd, N = B * T, nl = Nl(N);
  if (tp_size_ == 1) {
    k::encoder_backward(g_.wte, g_.wpe, s_.dresidual, a.tokens.data(), B, T, C);
    return;
  }
  const int Vl = Vp_ / tp_size_, v0 = tp_rank_ * Vl;
  const float* full = gather_rows(s_.dresidual, s_.dres_full, N);
  vocab_embedding_backward(g_.wte, full, a.tokens.data(), N, C, v0, Vl);
  positions_backward(ln_grad(g_.wpe), s_.dresidual, nl, sp_ ? tp_rank_ * nl : 0, T, C);
}

void Gpt::block_forward(int l, int j, Slot& a, const float* residual) {
  const int B = a.B, T = a.T, C = cfg_.n_embd, N = B * T, nl = Nl(N);
  const int tp = tp_size_, Cl = C / tp, NHl = cfg_.n_head / tp;
  const size_t nc = size_t(N) * C, nlc = size_t(nl) * C;
  const BlockParams& p = w_.blocks[size_t(l)];
  const BlockViews v = block_views(a, j);
  // Layernorm region -> column-parallel input (all-gathered under sequence parallelism).
  auto layernorm_to_full = [&](float* full, float* mean, float* rstd, const float* in,
                               const float* w, const float* b) {
    float* out = sp_ ? s_.local : full;
    k::layernorm_forward(out, mean, rstd, in, w, b, nl, C);
    gather_rows(out, full, N);
  };
  // Row-parallel biases are added once (tp rank 0), before the partial sums are reduced.
  const float* rowbias_attn = tp_rank_ == 0 ? p.attprojb : nullptr;
  const float* rowbias_mlp = tp_rank_ == 0 ? p.fcprojb : nullptr;
  layernorm_to_full(v.ln1, v.ln1_mean, v.ln1_rstd, residual, p.ln1w, p.ln1b);
  k::matmul_forward(v.qkv, v.ln1, p.qkvw, p.qkvb, N, C, 3 * Cl);
  k::attention_forward(v.atty, v.att, v.qkv, B, T, Cl, NHl);
  k::matmul_forward(s_.proj, v.atty, p.attprojw, rowbias_attn, N, Cl, C);
  k::residual_forward(v.residual2, residual, reduce_rows(s_.proj, s_.local, N), nlc);
  layernorm_to_full(v.ln2, v.ln2_mean, v.ln2_rstd, v.residual2, p.ln2w, p.ln2b);
  k::matmul_forward(v.fch, v.ln2, p.fcw, p.fcb, N, C, 4 * Cl);
  k::gelu_forward(v.fch_gelu, v.fch, 4 * nc / tp);
  k::matmul_forward(s_.proj, v.fch_gelu, p.fcprojw, rowbias_mlp, N, 4 * Cl, C);
  k::residual_forward(v.residual3, v.residual2, reduce_rows(s_.proj, s_.local, N), nlc);
}

void Gpt::block_backward(int l, int j, Slot& a, const float* residual) {
  const int B = a.B, T = a.T, C = cfg_.n_embd, N = B * T, nl = Nl(N);
  const int tp = tp_size_, Cl = C / tp, NHl = cfg_.n_head / tp;
  const size_t nc = size_t(N) * C;
  const BlockParams& p = w_.blocks[size_t(l)];
  const BlockParams& dp = g_.blocks[size_t(l)];
  const BlockViews v = block_views(a, j);
  float* dres = s_.dresidual;  // in: d residual3 (Nl rows); out: d residual
  const float* d3 = gather_rows(dres, s_.dres_full, N);  // all N rows for the row-parallel
  k::matmul_backward(s_.dfch_gelu, dp.fcprojw, dp.fcprojb, d3, v.fch_gelu, p.fcprojw, N, 4 * Cl,
                     C);
  k::gelu_backward(s_.dfch, v.fch, s_.dfch_gelu, 4 * nc / tp);
  k::matmul_backward(s_.dln, dp.fcw, dp.fcb, s_.dfch, v.ln2, p.fcw, N, C, 4 * Cl);
  // residual3 = residual2 + mlp(ln2(residual2)): the LN path accumulates into dres.
  k::layernorm_backward(dres, ln_grad(dp.ln2w), ln_grad(dp.ln2b),
                        reduce_rows(s_.dln, s_.dln_local, N), v.residual2, p.ln2w, v.ln2_mean,
                        v.ln2_rstd, nl, C);
  const float* d2 = gather_rows(dres, s_.dres_full, N);
  k::matmul_backward(s_.datty, dp.attprojw, dp.attprojb, d2, v.atty, p.attprojw, N, Cl, C);
  k::attention_backward(s_.dqkv, s_.att_scratch, s_.datty, v.qkv, v.att, B, T, Cl, NHl);
  k::matmul_backward(s_.dln, dp.qkvw, dp.qkvb, s_.dqkv, v.ln1, p.qkvw, N, C, 3 * Cl);
  k::layernorm_backward(dres, ln_grad(dp.ln1w), ln_grad(dp.ln1b),
                        reduce_rows(s_.dln, s_.dln_local, N), residual, p.ln1w, v.ln1_mean,
                        v.ln1_rstd, nl, C);
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
  const int C = cfg_.n_embd, N = a.B * a.T, nl = Nl(N), V = cfg_.vocab_size;
  const int Vl = Vp_ / tp_size_, v0 = tp_rank_ * Vl;
  float* ln_out = sp_ ? s_.local : a.lnf;
  k::layernorm_forward(ln_out, a.lnf_mean, a.lnf_rstd, x, w_.lnfw, w_.lnfb, nl, C);
  gather_rows(ln_out, a.lnf, N);
  k::matmul_forward(a.logits, a.lnf, w_.wte, nullptr, N, C, Vl);
  if (!targets) return 0.0f;
  check_targets(targets, N, V);
  const bool train = dloss_scale > 0;
  if (tp_size_ == 1) {
    if (train)
      k::crossentropy_fused(a.losses, a.logits, targets, N, V, Vp_, dloss_scale / float(N));
    else
      k::crossentropy_forward(a.losses, a.logits, targets, N, V, Vp_);
  } else {
    // Vocab-parallel: (max, sum exp, target logit) per token from every rank.
    float* mine = s_.ce_stats + size_t(tp_size_) * N * 3;
    vocab_ce_local_stats(mine, a.logits, targets, N, Vl, v0, V);
    grid_->tp_comm().allgather(mine, s_.ce_stats, size_t(N) * 3);
    vocab_ce_finish(a.losses, a.logits, s_.ce_stats, tp_size_, targets, N, Vl, v0, V,
                    train ? dloss_scale / float(N) : 0.0f);
  }
  a.have_dlogits = train;
  return mean_loss(a.losses, N);
}

void Gpt::head_backward(Slot& a, const float* x) {
  const int C = cfg_.n_embd, N = a.B * a.T, nl = Nl(N), Vl = Vp_ / tp_size_;
  // logits now hold d loss / d logits (written by the fused cross-entropy).
  k::matmul_backward(s_.dln, g_.wte, nullptr, a.logits, a.lnf, w_.wte, N, C, Vl);
  const float* dln = reduce_rows(s_.dln, s_.dln_local, N);
  std::fill(s_.dresidual, s_.dresidual + size_t(nl) * C, 0.0f);
  k::layernorm_backward(s_.dresidual, ln_grad(g_.lnfw), ln_grad(g_.lnfb), dln, x, w_.lnfw,
                        a.lnf_mean, a.lnf_rstd, nl, C);
}

}  // namespace loom
