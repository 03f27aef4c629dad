#include "model/gpt.h"

#include <algorithm>
#include <cstring>

#include "core/check.h"
#include "core/memory.h"
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

size_t Gpt::act_floats() const { return size_t(Nl(B_ * T_)) * size_t(cfg_.n_embd); }

void Gpt::set_recompute(Recompute policy) {
  if (policy == recompute_) return;
  recompute_ = policy;
  B_ = T_ = nslots_ = 0;  // the arena's layout depends on it: reserve again
  slots_.clear();
}

void Gpt::set_precision(DType precision) {
  if (precision == precision_) return;
  precision_ = precision;
  const DType store = k::compute_storage(precision);
  wc_ = precision == DType::kF32 ? Buffer()
                                 : Buffer(cpu_allocator(), weights_.size() * dtype_size(store));
  wc_stale_ = true;
  B_ = T_ = nslots_ = 0;  // the arena's dtypes depend on it: reserve again
  slots_.clear();
}

const void* Gpt::cw(const float* master) const {
  if (precision_ == DType::kF32) return master;
  const size_t at = size_t(master - weights_.data());
  return wc_.data() + at * dtype_size(k::compute_storage(precision_));
}

size_t Gpt::resident_compute_copy_bytes() const { return resident_bytes(wc_.data(), wc_.bytes()); }

void Gpt::refresh_compute_weights() {
  if (precision_ == DType::kF32 || !wc_stale_) return;
  k::to_compute(precision_, wc_.data(), weights_.data(), weights_.size());
  wc_stale_ = false;
}

void Gpt::cast_unit(int unit) {
  for (const ParamSpec& p : specs_)
    if (p.layer == unit)
      k::to_compute(precision_, const_cast<void*>(cw(weights_.data() + p.offset)),
                    weights_.data() + p.offset, p.numel);
}

std::vector<std::pair<size_t, size_t>> Gpt::compute_only_ranges() const {
  std::vector<std::pair<size_t, size_t>> out;
  if (precision_ == DType::kF32) return out;
  for (const ParamSpec& p : specs_)
    if (p.layer >= 0 && p.layer < cfg_.n_layer && p.local_shape.size() == 2)
      out.push_back({p.offset, p.offset + p.numel});
  return out;
}

void Gpt::discard_unit(int unit) {
  const size_t es = dtype_size(k::compute_storage(precision_));
  for (const ParamSpec& p : specs_)
    if (p.layer == unit) wc_.discard(p.offset * es, p.numel * es);
}

void Gpt::set_attention(AttentionKernel kernel) {
  if (kernel == attention_) return;
  attention_ = kernel;
  B_ = T_ = nslots_ = 0;
  slots_.clear();
}

ActDims Gpt::dims(int B, int T) const {
  ActDims d = activation_dims(cfg_, B, T, tp_size_, sp_, attention_, precision_, head_rows_);
  d.sp_grads = double(sp_grads_size_);
  return d;
}

std::vector<ChunkShape> Gpt::chunk_shapes() const {
  std::vector<ChunkShape> out;
  for (const ModelChunk& c : layout_.chunks) out.push_back({c.end_block - c.first_block, c.head});
  return out;
}

void Gpt::reserve(int B, int T, int slots) {
  LOOM_REQUIRE(T >= 1 && T <= cfg_.block_size, "sequence length T={} must be in [1, {}]", T,
               cfg_.block_size);
  LOOM_REQUIRE(B >= 1 && slots >= 1, "batch size B={} and slots={} must be >= 1", B, slots);
  LOOM_REQUIRE(!sp_ || (B * T) % tp_size_ == 0,
               "sequence parallelism splits the B*T={} token rows over tp={}: they must divide",
               B * T, tp_size_);
  if (B == B_ && T == T_ && slots == nslots_) return;
  const DType store = k::compute_storage(precision_);
  const ArenaLayout layout = arena_layout(dims(B, T), chunk_shapes(), slots, recompute_, store);
  for (const ArenaRegion& r : layout.regions)
    LOOM_REQUIRE(r.numel < 0x1p53, "activation '{}' of {} elements is too large", r.entry->name,
                 r.numel);
  LOOM_REQUIRE(layout.bytes < 0x1p62, "activations of {} bytes are too large", layout.bytes);
  arena_ = Buffer(cpu_allocator(), size_t(layout.bytes));
  slots_.assign(layout_.chunks.size(), std::vector<Slot>(size_t(slots)));
  std::array<TensorView, act::kCount> shared{};
  for (const ArenaRegion& r : layout.regions) {
    const TensorView v{arena_.data() + size_t(r.offset), r.dtype, size_t(r.numel)};
    const size_t id = size_t(r.entry->id);
    if (r.chunk >= 0) slots_[size_t(r.chunk)][size_t(r.slot)].at[id] = v;
    else if (r.entry->scope == ActScope::kBlock) shared[id] = v;  // recomputed: one copy
    else scratch_[id] = v;
  }
  for (size_t c = 0; c < slots_.size(); ++c)
    for (Slot& a : slots_[c]) {
      for (const ActEntry& e : activation_table())
        if (e.scope == ActScope::kBlock && !kept(e, recompute_)) a.at[size_t(e.id)] = shared[e.id];
      if (layout_.chunks[c].embed) a.tokens.assign(size_t(B) * T, 0);
    }
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
  if (!acquire_) refresh_compute_weights();  // ZeRO-3 casts each unit as it is gathered
  a.B = B;
  a.T = T;
  a.have_dlogits = false;
  const size_t nlc = size_t(Nl(B * T)) * cfg_.n_embd;
  float* input = a.f(act::kInput);
  if (ch.embed || ch.head) acquire(-1);
  if (ch.embed) {
    embed_forward(a, tokens);
  } else {
    LOOM_CHECK(in != nullptr, "chunk {} needs an input activation", chunk);
    std::memcpy(input, in, nlc * sizeof(float));
  }
  const float* x = input;
  for (int l = ch.first_block; l < ch.end_block; ++l) {
    const int j = l - ch.first_block;
    acquire(l);
    block_forward(l, j, a, x);
    release(l);
    x = a.f(act::kResidual3) + size_t(j) * nlc;
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
  float* const input = a.f(act::kInput);
  float* const residual3 = a.f(act::kResidual3);
  float* const dresidual = scr(act::kDresidual);
  if (sp_) std::fill_n(scr(act::kSpGrads), sp_grads_size_, 0.0f);
  if (ch.head) {
    LOOM_CHECK(a.have_dlogits, "backward of the head chunk must follow a training forward");
    a.have_dlogits = false;
    const int nb = ch.end_block - ch.first_block;
    head_backward(a, nb > 0 ? residual3 + size_t(nb - 1) * nlc : input);
    if (!sp_) hook(cfg_.n_layer);
  } else {
    LOOM_CHECK(dout != nullptr, "chunk {} needs an output gradient", chunk);
    std::memcpy(dresidual, dout, nlc * sizeof(float));
  }
  for (int l = ch.end_block - 1; l >= ch.first_block; --l) {
    const int j = l - ch.first_block;
    const float* residual = j == 0 ? input : residual3 + size_t(j - 1) * nlc;
    acquire(l);
    recompute_block(l, j, a, residual);
    block_backward(l, j, a, residual);
    release(l);
    if (!sp_) hook(l);
  }
  if (ch.embed) {
    embed_backward(a);
  } else {
    LOOM_CHECK(din != nullptr, "chunk {} needs an input-gradient buffer", chunk);
    std::memcpy(din, dresidual, nlc * sizeof(float));
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

const float* Gpt::logits() const {
  LOOM_CHECK(!logits_.empty(), "logits() before a forward without targets");
  return logits_.data();
}

void Gpt::set_head_rows(int rows) {
  LOOM_REQUIRE(rows >= 1, "head rows {} must be >= 1", rows);
  head_rows_ = rows;
  B_ = T_ = nslots_ = 0;  // the arena's logits block depends on it: reserve again
  slots_.clear();
}
const float* Gpt::losses() const { return slots_.at(0).at(0).f(act::kLosses); }

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
