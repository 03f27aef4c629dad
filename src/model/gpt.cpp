#include "model/gpt.h"

#include <algorithm>
#include <cstring>

#include "core/check.h"
#include "kernels/kernels.h"

namespace loom {
namespace k = kernels;

ModelLayout ModelLayout::whole(const GptConfig& cfg, bool sequence_parallel) {
  ModelLayout l;
  l.chunks.push_back(ModelChunk{0, cfg.n_layer, true, true});
  l.sequence_parallel = sequence_parallel;
  return l;
}

Gpt::Gpt(const GptConfig& cfg, const ProcessGrid& grid) : Gpt(cfg, grid, ModelLayout::whole(cfg)) {
  LOOM_REQUIRE(grid.shape().pp == 1,
               "the whole-model constructor needs pp=1 (got pp={}); pass a ModelLayout",
               grid.shape().pp);
}

Gpt::Gpt(const GptConfig& cfg, const ProcessGrid& grid, const ModelLayout& layout)
    : cfg_(cfg), grid_(&grid), layout_(layout) {
  tp_size_ = grid.shape().tp;
  tp_rank_ = grid.coord().tp;
  sp_ = layout.sequence_parallel && tp_size_ > 1;
  Vp_ = cfg.padded_vocab(tp_size_);
  init_layout();
}

void Gpt::init_layout() {
  LOOM_REQUIRE(!layout_.chunks.empty(), "a model layout needs at least one chunk");
  ModelShard shard;
  shard.tp = tp_size_;
  shard.tp_rank = tp_rank_;
  shard.embed = shard.head = false;
  for (const ModelChunk& c : layout_.chunks) {
    LOOM_REQUIRE(c.first_block >= 0 && c.first_block <= c.end_block && c.end_block <= cfg_.n_layer,
                 "chunk blocks [{}, {}) outside [0, {})", c.first_block, c.end_block,
                 cfg_.n_layer);
    for (int l = c.first_block; l < c.end_block; ++l) shard.blocks.push_back(l);
    shard.embed |= c.embed;
    shard.head |= c.head;
  }
  specs_ = gpt2_param_specs(cfg_, shard);
  const size_t dp = size_t(grid_->shape().dp);
  const size_t padded = (flat_size(specs_) + dp - 1) / dp * dp;
  weights_.assign(padded, 0.0f);
  grads_.assign(padded, 0.0f);
  w_ = bind(weights_.data());
  g_ = bind(grads_.data());
  // Sequence parallelism: the LN (and wpe) gradients of a chunk are partial sums over the
  // rank's token rows; they collect here and are all-reduced once per chunk backward.
  sp_grads_size_ = 0;
  sp_index_.clear();
  if (sp_) {
    for (const ParamSpec& p : specs_) {
      if (p.name.find("ln_") == std::string::npos && p.name != "wpe.weight") continue;
      sp_index_.push_back(SpEntry{grads_.data() + p.offset, sp_grads_size_, p.numel, p.layer});
      sp_grads_size_ += p.numel;
    }
  }
}

int64_t Gpt::flop_params() const {
  const std::vector<ParamSpec> whole = gpt2_param_specs(cfg_);
  return int64_t(real_param_count(whole) - find_param(whole, "wpe.weight").numel);
}

Gpt::Params Gpt::bind(float* base) const {
  Params m;
  m.blocks.assign(size_t(cfg_.n_layer), BlockParams{});
  for (const ParamSpec& p : specs_) {
    float* at = base + p.offset;
    if (p.name == "wte.weight") m.wte = at;
    if (p.name == "wpe.weight") m.wpe = at;
    if (p.name == "ln_f.weight") m.lnfw = at;
    if (p.name == "ln_f.bias") m.lnfb = at;
    if (p.layer < 0 || p.layer >= cfg_.n_layer) continue;
    BlockParams& b = m.blocks[size_t(p.layer)];
    const std::string s = p.name.substr(p.name.find('.', 2) + 1);  // after "h.<l>."
    float** fields[] = {&b.ln1w, &b.ln1b, &b.qkvw, &b.qkvb, &b.attprojw, &b.attprojb,
                        &b.ln2w, &b.ln2b, &b.fcw,  &b.fcb,  &b.fcprojw,  &b.fcprojb};
    const char* names[] = {"ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias",
                           "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias",
                           "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight",
                           "mlp.c_proj.bias"};
    for (size_t i = 0; i < std::size(names); ++i)
      if (s == names[i]) *fields[i] = at;
  }
  return m;
}

namespace {

size_t align16(size_t n) { return (n + 15) / 16 * 16; }  // 64-byte aligned views

}  // namespace

size_t Gpt::act_floats() const { return size_t(Nl(B_ * T_)) * size_t(cfg_.n_embd); }

void Gpt::reserve(int B, int T, int slots) {
  LOOM_REQUIRE(T >= 1 && T <= cfg_.block_size, "sequence length T={} must be in [1, {}]", T,
               cfg_.block_size);
  LOOM_REQUIRE(B >= 1 && slots >= 1, "batch size B={} and slots={} must be >= 1", B, slots);
  LOOM_REQUIRE(!sp_ || (B * T) % tp_size_ == 0,
               "sequence parallelism splits the B*T={} token rows over tp={}: they must divide",
               B * T, tp_size_);
  if (B == B_ && T == T_ && slots == nslots_) return;
  const size_t C = cfg_.n_embd, tp = tp_size_, NHl = cfg_.n_head / tp, Cl = C / tp;
  const size_t N = size_t(B) * T, NL = sp_ ? N / tp : N, Vl = size_t(Vp_) / tp;
  // First pass counts, second pass assigns.
  std::vector<float*> views;
  size_t total = 0;
  auto take = [&](size_t n) { views.push_back(reinterpret_cast<float*>(total)); total += align16(n); };
  for (const ModelChunk& c : layout_.chunks) {
    const size_t nb = size_t(c.end_block - c.first_block), h = c.head ? 1 : 0;
    for (int s = 0; s < slots; ++s) {
      const size_t sizes[] = {NL * C,      nb * N * C,   nb * NL,        nb * NL,     nb * N * 3 * Cl,
                              nb * N * Cl, nb * B * NHl * T * T, nb * NL * C, nb * N * C, nb * NL,
                              nb * NL,     nb * N * 4 * Cl, nb * N * 4 * Cl, nb * NL * C,
                              h * N * C,   h * NL,       h * NL,         h * N * Vl,  h * N};
      for (size_t n : sizes) take(n);
    }
  }
  const size_t scratch[] = {NL * C, sp_ ? N * C : 0, N * C, NL * C, N * 3 * Cl, N * Cl, N * 4 * Cl,
                            N * 4 * Cl, k::attention_backward_scratch(B, T, int(Cl), int(NHl)),
                            N * C, NL * C, (tp + 1) * N * 3, sp_grads_size_};
  for (size_t n : scratch) take(n);
  arena_.assign(total, 0.0f);
  for (float*& v : views) v = arena_.data() + reinterpret_cast<size_t>(v);
  size_t i = 0;
  slots_.assign(layout_.chunks.size(), {});
  for (size_t c = 0; c < layout_.chunks.size(); ++c)
    for (int s = 0; s < slots; ++s) {
      Slot a;
      float** fields[] = {&a.input, &a.ln1,      &a.ln1_mean,  &a.ln1_rstd, &a.qkv,
                          &a.atty,  &a.att,      &a.residual2, &a.ln2,      &a.ln2_mean,
                          &a.ln2_rstd, &a.fch,   &a.fch_gelu,  &a.residual3, &a.lnf,
                          &a.lnf_mean, &a.lnf_rstd, &a.logits, &a.losses};
      for (float** f : fields) *f = views[i++];
      if (layout_.chunks[c].embed) a.tokens.assign(N, 0);
      slots_[c].push_back(std::move(a));
    }
  float** sfields[] = {&s_.dresidual, &s_.dres_full, &s_.dln,  &s_.dln_local, &s_.dqkv,
                       &s_.datty,     &s_.dfch,      &s_.dfch_gelu, &s_.att_scratch,
                       &s_.proj,      &s_.local,     &s_.ce_stats,  &s_.sp_grads};
  for (float** f : sfields) *f = views[i++];
  B_ = B;
  T_ = T;
  nslots_ = slots;
}

float Gpt::forward_chunk(int chunk, int slot, const int32_t* tokens, const int32_t* targets,
                         const float* in, float* out, int B, int T, float dloss_scale) {
  LOOM_CHECK(chunk >= 0 && size_t(chunk) < slots_.size() && slot >= 0 && slot < nslots_,
             "chunk {} slot {} not reserved ({} chunks, {} slots)", chunk, slot, slots_.size(),
             nslots_);
  LOOM_CHECK(B_ > 0 && size_t(B) * T <= size_t(B_) * T_ && T <= cfg_.block_size,
             "forward with B={} T={} beyond the reserved B={} T={}", B, T, B_, T_);
  LOOM_REQUIRE(!sp_ || (B * T) % tp_size_ == 0,
               "sequence parallelism needs B*T={} divisible by tp={}", B * T, tp_size_);
  const ModelChunk& ch = layout_.chunks[size_t(chunk)];
  Slot& a = slots_[size_t(chunk)][size_t(slot)];
  a.B = B;
  a.T = T;
  a.have_dlogits = false;
  const size_t nlc = size_t(Nl(B * T)) * cfg_.n_embd;
  if (ch.embed || ch.head) acquire(-1);
  if (ch.embed) {
    embed_forward(a, tokens);
  } else {
    LOOM_CHECK(in != nullptr, "chunk {} needs an input activation", chunk);
    std::memcpy(a.input, in, nlc * sizeof(float));
  }
  const float* x = a.input;
  for (int l = ch.first_block; l < ch.end_block; ++l) {
    const int j = l - ch.first_block;
    acquire(l);
    block_forward(l, j, a, x);
    release(l);
    x = a.residual3 + size_t(j) * nlc;
  }
  if (!ch.head) {
    LOOM_CHECK(out != nullptr, "chunk {} needs an output buffer", chunk);
    std::memcpy(out, x, nlc * sizeof(float));
    return 0.0f;
  }
  acquire(cfg_.n_layer);
  const float loss = head_forward(a, x, targets, dloss_scale);
  if (!a.have_dlogits) {
    release(cfg_.n_layer);
    release(-1);
  }
  return loss;
}

void Gpt::backward_chunk(int chunk, int slot, const float* dout, float* din) {
  const ModelChunk& ch = layout_.chunks[size_t(chunk)];
  Slot& a = slots_[size_t(chunk)][size_t(slot)];
  const int N = a.B * a.T;
  const size_t nlc = size_t(Nl(N)) * cfg_.n_embd;
  if (sp_) std::fill(s_.sp_grads, s_.sp_grads + sp_grads_size_, 0.0f);
  if (ch.head) {
    LOOM_CHECK(a.have_dlogits, "backward of the head chunk must follow a training forward");
    a.have_dlogits = false;
    const int nb = ch.end_block - ch.first_block;
    head_backward(a, nb > 0 ? a.residual3 + size_t(nb - 1) * nlc : a.input);
    if (!sp_) hook(cfg_.n_layer);
  } else {
    LOOM_CHECK(dout != nullptr, "chunk {} needs an output gradient", chunk);
    std::memcpy(s_.dresidual, dout, nlc * sizeof(float));
  }
  for (int l = ch.end_block - 1; l >= ch.first_block; --l) {
    const int j = l - ch.first_block;
    acquire(l);
    block_backward(l, j, a, j == 0 ? a.input : a.residual3 + size_t(j - 1) * nlc);
    release(l);
    if (!sp_) hook(l);
  }
  if (ch.embed) {
    embed_backward(a);
  } else {
    LOOM_CHECK(din != nullptr, "chunk {} needs an input-gradient buffer", chunk);
    std::memcpy(din, s_.dresidual, nlc * sizeof(float));
  }
  if (ch.head) release(cfg_.n_layer);
  if (ch.embed || ch.head) release(-1);
  if (sp_) {
    finish_sp_grads(ch);
    if (ch.head) hook(cfg_.n_layer);
    for (int l = ch.end_block - 1; l >= ch.first_block; --l) hook(l);
  }
  if (ch.embed) hook(-1);
}

float Gpt::forward(const int32_t* inputs, const int32_t* targets, int B, int T) {
  return forward_chunk(0, 0, inputs, targets, nullptr, nullptr, B, T, 0.0f);
}

float Gpt::forward_train(const int32_t* inputs, const int32_t* targets, int B, int T,
                         float dloss_scale) {
  LOOM_CHECK(targets != nullptr && dloss_scale > 0, "forward_train needs targets and a scale");
  return forward_chunk(0, 0, inputs, targets, nullptr, nullptr, B, T, dloss_scale);
}

void Gpt::backward() { backward_chunk(0, 0, nullptr, nullptr); }

void Gpt::zero_grads() { std::fill(grads_.begin(), grads_.end(), 0.0f); }

const float* Gpt::logits() const { return slots_.at(0).at(0).logits; }
const float* Gpt::losses() const { return slots_.at(0).at(0).losses; }

std::vector<std::pair<size_t, size_t>> Gpt::norm_duplicate_ranges() const {
  std::vector<std::pair<size_t, size_t>> out;
  bool embed = false;
  for (const ModelChunk& c : layout_.chunks) embed |= c.embed;
  for (const ParamSpec& p : specs_) {
    const bool replicated = p.split_dim < 0 && tp_rank_ > 0;
    const bool head_copy = p.tied && !embed;
    if (replicated || head_copy) out.emplace_back(p.offset, p.offset + p.numel);
  }
  return out;
}

std::pair<size_t, size_t> Gpt::wte_range() const {
  for (const ParamSpec& p : specs_)
    if (p.tied) return {p.offset, p.offset + p.numel};
  return {0, 0};
}

}  // namespace loom
