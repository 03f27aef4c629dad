#include "model/gpt.h"

#include <algorithm>
#include <cstring>

#include "core/check.h"
#include "kernels/kernels.h"

namespace loom {
namespace k = kernels;

Gpt::Gpt(const GptConfig& cfg, const ProcessGrid& grid)
    : cfg_(cfg), grid_(&grid), specs_(gpt2_param_specs(cfg)) {
  LOOM_REQUIRE(grid.shape().tp == 1 && grid.shape().pp == 1,
             "this model build supports tp=1, pp=1 only (got tp={}, pp={})", grid.shape().tp,
             grid.shape().pp);
  const size_t dp = size_t(grid.shape().dp);
  const size_t padded = (flat_size(specs_) + dp - 1) / dp * dp;
  weights_.assign(padded, 0.0f);
  grads_.assign(padded, 0.0f);
  w_ = bind(weights_.data());
  g_ = bind(grads_.data());
}

int64_t Gpt::flop_params() const {
  return int64_t(real_param_count(specs_) - find_param(specs_, "wpe.weight").numel);
}

Gpt::ModelParams Gpt::bind(float* base) const {
  auto at = [&](const std::string& name) { return base + find_param(specs_, name).offset; };
  ModelParams m;
  m.wte = at("wte.weight");
  m.wpe = at("wpe.weight");
  m.lnfw = at("ln_f.weight");
  m.lnfb = at("ln_f.bias");
  for (int l = 0; l < cfg_.n_layer; ++l) {
    auto h = [&](const char* s) { return at(fmt::format("h.{}.{}", l, s)); };
    m.layers.push_back(LayerParams{
        h("ln_1.weight"), h("ln_1.bias"), h("attn.c_attn.weight"), h("attn.c_attn.bias"),
        h("attn.c_proj.weight"), h("attn.c_proj.bias"), h("ln_2.weight"), h("ln_2.bias"),
        h("mlp.c_fc.weight"), h("mlp.c_fc.bias"), h("mlp.c_proj.weight"),
        h("mlp.c_proj.bias")});
  }
  return m;
}

void Gpt::reserve(int B, int T) {
  LOOM_REQUIRE(T >= 1 && T <= cfg_.block_size, "sequence length T={} must be in [1, {}]", T,
               cfg_.block_size);
  LOOM_REQUIRE(B >= 1, "batch size B={} must be >= 1", B);
  if (B == B_ && T == T_) return;
  const size_t L = cfg_.n_layer, C = cfg_.n_embd, NH = cfg_.n_head, Vp = cfg_.padded_vocab();
  const size_t N = size_t(B) * T;
  const size_t sizes[] = {
      // activations, in Activations order
      N * C, L * N * C, L * N, L * N, L * N * 3 * C, L * N * C, L * B * NH * T * T,
      L * N * C, L * N * C, L * N, L * N, L * N * 4 * C, L * N * 4 * C, L * N * C, N * C, N,
      N, N * Vp, N, N * C,
      // activation gradients, in ActGrads order
      N * C, N * C, N * 3 * C, N * C, N * 4 * C, N * 4 * C,
      k::attention_backward_scratch(B, T, int(C), int(NH))};
  size_t total = 0;
  for (size_t s : sizes) total += (s + 15) / 16 * 16;  // 64-byte aligned views
  arena_.assign(total, 0.0f);
  float* p = arena_.data();
  float** views[] = {&acts_.encoded,   &acts_.ln1,      &acts_.ln1_mean,  &acts_.ln1_rstd,
                     &acts_.qkv,       &acts_.atty,     &acts_.att,       &acts_.residual2,
                     &acts_.ln2,       &acts_.ln2_mean, &acts_.ln2_rstd,  &acts_.fch,
                     &acts_.fch_gelu,  &acts_.residual3, &acts_.lnf,      &acts_.lnf_mean,
                     &acts_.lnf_rstd,  &acts_.logits,   &acts_.losses,    &acts_.proj,
                     &dacts_.dresidual, &dacts_.dln,    &dacts_.dqkv,     &dacts_.datty,
                     &dacts_.dfch,     &dacts_.dfch_gelu, &dacts_.scratch};
  static_assert(std::size(views) == std::size(sizes));
  for (size_t i = 0; i < std::size(sizes); ++i) {
    *views[i] = p;
    p += (sizes[i] + 15) / 16 * 16;
  }
  inputs_.assign(N, 0);
  B_ = B;
  T_ = T;
}

// Per-layer views use the current (B,T), so any B*T <= the reserved size fits.
void Gpt::block_forward(int l, const float* residual, int B, int T) {
  const int C = cfg_.n_embd, NH = cfg_.n_head, N = B * T;
  const LayerParams& p = w_.layers[l];
  const size_t nc = size_t(N) * C;
  float* ln1 = acts_.ln1 + l * nc;
  float* ln1_mean = acts_.ln1_mean + size_t(l) * N;
  float* ln1_rstd = acts_.ln1_rstd + size_t(l) * N;
  float* qkv = acts_.qkv + l * 3 * nc;
  float* atty = acts_.atty + l * nc;
  float* att = acts_.att + size_t(l) * B * NH * T * T;
  float* residual2 = acts_.residual2 + l * nc;
  float* ln2 = acts_.ln2 + l * nc;
  float* ln2_mean = acts_.ln2_mean + size_t(l) * N;
  float* ln2_rstd = acts_.ln2_rstd + size_t(l) * N;
  float* fch = acts_.fch + l * 4 * nc;
  float* fch_gelu = acts_.fch_gelu + l * 4 * nc;
  float* residual3 = acts_.residual3 + l * nc;

  k::layernorm_forward(ln1, ln1_mean, ln1_rstd, residual, p.ln1w, p.ln1b, N, C);
  k::matmul_forward(qkv, ln1, p.qkvw, p.qkvb, N, C, 3 * C);
  k::attention_forward(atty, att, qkv, B, T, C, NH);
  k::matmul_forward(acts_.proj, atty, p.attprojw, p.attprojb, N, C, C);
  k::residual_forward(residual2, residual, acts_.proj, nc);
  k::layernorm_forward(ln2, ln2_mean, ln2_rstd, residual2, p.ln2w, p.ln2b, N, C);
  k::matmul_forward(fch, ln2, p.fcw, p.fcb, N, C, 4 * C);
  k::gelu_forward(fch_gelu, fch, 4 * nc);
  k::matmul_forward(acts_.proj, fch_gelu, p.fcprojw, p.fcprojb, N, 4 * C, C);
  k::residual_forward(residual3, residual2, acts_.proj, nc);
}

void Gpt::forward_trunk(const int32_t* inputs, int B, int T) {
  LOOM_CHECK(B_ > 0 && size_t(B) * T <= size_t(B_) * T_ && T <= cfg_.block_size,
             "forward with B={} T={} beyond the reserved B={} T={}", B, T, B_, T_);
  const int C = cfg_.n_embd, N = B * T, V = cfg_.vocab_size;
  for (int i = 0; i < N; ++i)
    LOOM_REQUIRE(inputs[i] >= 0 && inputs[i] < V, "token id {} at position {} is outside the "
                 "vocabulary [0, {})", inputs[i], i, V);
  std::copy(inputs, inputs + N, inputs_.begin());
  cur_B_ = B;
  cur_T_ = T;
  acquire(-1);
  k::encoder_forward(acts_.encoded, inputs, w_.wte, w_.wpe, B, T, C);
  for (int l = 0; l < cfg_.n_layer; ++l) {
    const float* residual = l == 0 ? acts_.encoded : acts_.residual3 + size_t(l - 1) * N * C;
    acquire(l);
    block_forward(l, residual, B, T);
    release(l);
  }
  acquire(cfg_.n_layer);
  const float* last = acts_.residual3 + size_t(cfg_.n_layer - 1) * N * C;
  k::layernorm_forward(acts_.lnf, acts_.lnf_mean, acts_.lnf_rstd, last, w_.lnfw, w_.lnfb, N, C);
  k::matmul_forward(acts_.logits, acts_.lnf, w_.wte, nullptr, N, C, cfg_.padded_vocab());
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

float Gpt::forward(const int32_t* inputs, const int32_t* targets, int B, int T) {
  forward_trunk(inputs, B, T);
  release(cfg_.n_layer);
  release(-1);
  have_dlogits_ = false;
  if (!targets) return 0.0f;
  check_targets(targets, B * T, cfg_.vocab_size);
  k::crossentropy_forward(acts_.losses, acts_.logits, targets, B * T, cfg_.vocab_size,
                          cfg_.padded_vocab());
  return mean_loss(acts_.losses, B * T);
}

float Gpt::forward_train(const int32_t* inputs, const int32_t* targets, int B, int T,
                         float dloss_scale) {
  forward_trunk(inputs, B, T);
  check_targets(targets, B * T, cfg_.vocab_size);
  const int N = B * T;
  k::crossentropy_fused(acts_.losses, acts_.logits, targets, N, cfg_.vocab_size,
                        cfg_.padded_vocab(), dloss_scale / float(N));
  have_dlogits_ = true;
  return mean_loss(acts_.losses, N);
}

void Gpt::block_backward(int l, const float* residual, int B, int T) {
  const int C = cfg_.n_embd, NH = cfg_.n_head, N = B * T;
  const LayerParams& p = w_.layers[l];
  const LayerParams& dp = g_.layers[l];
  const size_t nc = size_t(N) * C;
  const float* ln1 = acts_.ln1 + l * nc;
  const float* qkv = acts_.qkv + l * 3 * nc;
  const float* atty = acts_.atty + l * nc;
  const float* att = acts_.att + size_t(l) * B * NH * T * T;
  const float* residual2 = acts_.residual2 + l * nc;
  const float* ln2 = acts_.ln2 + l * nc;
  const float* fch = acts_.fch + l * 4 * nc;
  const float* fch_gelu = acts_.fch_gelu + l * 4 * nc;
  float* dres = dacts_.dresidual;  // in: d residual3; out: d residual (the block's input)

  k::matmul_backward(dacts_.dfch_gelu, dp.fcprojw, dp.fcprojb, dres, fch_gelu, p.fcprojw, N,
                     4 * C, C);
  k::gelu_backward(dacts_.dfch, fch, dacts_.dfch_gelu, 4 * nc);
  k::matmul_backward(dacts_.dln, dp.fcw, dp.fcb, dacts_.dfch, ln2, p.fcw, N, C, 4 * C);
  // residual3 = residual2 + mlp(ln2(residual2)): the LN path accumulates into dres.
  k::layernorm_backward(dres, dp.ln2w, dp.ln2b, dacts_.dln, residual2, p.ln2w,
                        acts_.ln2_mean + size_t(l) * N, acts_.ln2_rstd + size_t(l) * N, N, C);
  k::matmul_backward(dacts_.datty, dp.attprojw, dp.attprojb, dres, atty, p.attprojw, N, C, C);
  k::attention_backward(dacts_.dqkv, dacts_.scratch, dacts_.datty, qkv, att, B, T, C, NH);
  k::matmul_backward(dacts_.dln, dp.qkvw, dp.qkvb, dacts_.dqkv, ln1, p.qkvw, N, C, 3 * C);
  k::layernorm_backward(dres, dp.ln1w, dp.ln1b, dacts_.dln, residual, p.ln1w,
                        acts_.ln1_mean + size_t(l) * N, acts_.ln1_rstd + size_t(l) * N, N, C);
}

void Gpt::backward() {
  LOOM_CHECK(have_dlogits_, "backward() must follow forward_train()");
  have_dlogits_ = false;
  const int B = cur_B_, T = cur_T_, C = cfg_.n_embd, N = B * T;
  const size_t nc = size_t(N) * C;
  // logits now hold d loss / d logits (written by the fused cross-entropy).
  k::matmul_backward(dacts_.dln, g_.wte, nullptr, acts_.logits, acts_.lnf, w_.wte, N, C,
                     cfg_.padded_vocab());
  std::fill(dacts_.dresidual, dacts_.dresidual + nc, 0.0f);
  const float* last = acts_.residual3 + size_t(cfg_.n_layer - 1) * nc;
  k::layernorm_backward(dacts_.dresidual, g_.lnfw, g_.lnfb, dacts_.dln, last, w_.lnfw,
                        acts_.lnf_mean, acts_.lnf_rstd, N, C);
  if (hook_) hook_(cfg_.n_layer);
  for (int l = cfg_.n_layer - 1; l >= 0; --l) {
    const float* residual = l == 0 ? acts_.encoded : acts_.residual3 + (l - 1) * nc;
    acquire(l);
    block_backward(l, residual, B, T);
    release(l);
    if (hook_) hook_(l);
  }
  k::encoder_backward(g_.wte, g_.wpe, dacts_.dresidual, inputs_.data(), B, T, C);
  release(cfg_.n_layer);
  release(-1);
  if (hook_) hook_(-1);
}

void Gpt::zero_grads() { std::fill(grads_.begin(), grads_.end(), 0.0f); }

}  // namespace loom
