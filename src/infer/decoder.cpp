#include "infer/decoder.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "core/check.h"
#include "kernels/kernels.h"
#include "model/tp_ops.h"

namespace loom {
namespace k = kernels;

KvCache::KvCache(int layers, int slots, int capacity, int heads, int head_size, DType dtype)
    : dtype_(dtype), layers_(layers), slots_(slots), capacity_(capacity), heads_(heads),
      hs_(head_size) {
  const double bytes =
      2.0 * layers * slots * heads * double(capacity) * head_size * double(dtype_size(dtype));
  LOOM_REQUIRE(bytes < 0x1p62, "a KV cache of {} bytes is too large", bytes);
  buf_ = Buffer(cpu_allocator(), size_t(bytes));
}

std::byte* KvCache::at(int kv, int layer, int slot, int head) {
  const size_t block = ((size_t(kv) * layers_ + size_t(layer)) * slots_ + size_t(slot)) * heads_ +
                       size_t(head);
  return buf_.data() + block * size_t(capacity_) * size_t(hs_) * dtype_size(dtype_);
}

Decoder::Decoder(const Gpt& model, const ProcessGrid& grid, DType precision, int slots,
                 int capacity, int max_rows)
    : model_(model), grid_(grid), precision_(precision), slots_(slots), max_rows_(max_rows) {
  const GptConfig& cfg = model.config();
  const ModelLayout& layout = model.layout();
  LOOM_REQUIRE(grid.shape().pp == 1 && layout.chunks.size() == 1 && layout.chunks[0].embed &&
                   layout.chunks[0].head && layout.chunks[0].first_block == 0 &&
                   layout.chunks[0].end_block == cfg.n_layer,
               "the decoder runs the whole model on each tensor-parallel rank (pp = 1)");
  LOOM_REQUIRE(slots >= 1 && max_rows >= 1, "the decoder needs slots ({}) and max_rows ({}) >= 1",
               slots, max_rows);
  LOOM_REQUIRE(capacity >= 1 && capacity <= cfg.block_size,
               "a sequence capacity of {} positions is outside [1, block_size = {}]", capacity,
               cfg.block_size);
  tp_ = grid.shape().tp;
  tp_rank_ = grid.coord().tp;
  C_ = cfg.n_embd;
  Cl_ = C_ / tp_;
  NHl_ = cfg.n_head / tp_;
  HS_ = C_ / cfg.n_head;
  Vl_ = model.padded_vocab() / tp_;
  const std::vector<ParamSpec>& specs = model.params();
  auto at = [&](const std::string& name) { return find_param(specs, name).offset; };
  // The GEMM weights rounded to the precision once and laid out for the matmul.
  auto pack = [&](const std::string& name) {
    const ParamSpec& p = find_param(specs, name);
    return k::PackedLinear(precision, w(p.offset), int(p.local_shape[1]), int(p.local_shape[0]));
  };
  wte_ = at("wte.weight");
  wpe_ = at("wpe.weight");
  lnfw_ = at("ln_f.weight");
  lnfb_ = at("ln_f.bias");
  head_ = pack("wte.weight");
  for (int l = 0; l < cfg.n_layer; ++l) {
    const std::string h = "h." + std::to_string(l) + ".";
    blocks_.push_back({at(h + "ln_1.weight"), at(h + "ln_1.bias"), at(h + "attn.c_attn.bias"),
                       at(h + "attn.c_proj.bias"), at(h + "ln_2.weight"), at(h + "ln_2.bias"),
                       at(h + "mlp.c_fc.bias"), at(h + "mlp.c_proj.bias"),
                       pack(h + "attn.c_attn.weight"), pack(h + "attn.c_proj.weight"),
                       pack(h + "mlp.c_fc.weight"), pack(h + "mlp.c_proj.weight")});
  }
  const size_t rows = size_t(max_rows);
  if (precision != DType::kF32)
    stage_ = Buffer(cpu_allocator(),
                    rows * size_t(std::max(C_, 4 * Cl_)) * dtype_size(k::compute_storage(precision)));
  cache_ = KvCache(cfg.n_layer, slots, capacity, NHl_, HS_,
                   precision == DType::kBF16 ? DType::kBF16 : DType::kF32);
  x_.resize(rows * C_);
  ln_.resize(rows * C_);
  mean_.resize(rows);
  rstd_.resize(rows);
  qkv_.resize(rows * 3 * Cl_);
  atty_.resize(rows * Cl_);
  proj_.resize(rows * C_);
  fch_.resize(rows * 4 * Cl_);
  gelu_.resize(rows * 4 * Cl_);
}

size_t Decoder::weight_bytes_per_step() const {
  const size_t low = dtype_size(k::compute_storage(precision_));
  size_t bytes = 0;
  for (const ParamSpec& p : model_.params()) {
    if (p.name == "wpe.weight") continue;  // one row per token
    const bool gemm = p.tied || (p.layer >= 0 && p.layer < model_.config().n_layer &&
                                 p.local_shape.size() == 2);
    bytes += p.numel * (gemm ? low : sizeof(float));
  }
  return bytes;
}

void Decoder::check_rows(std::span<const DecodeRow> rows) const {
  LOOM_CHECK(!rows.empty() && rows.size() <= size_t(max_rows_),
             "decoder forward of {} rows (1 to {})", rows.size(), max_rows_);
  const int V = vocab_size();
  for (size_t i = 0; i < rows.size(); ++i) {
    const DecodeRow& r = rows[i];
    LOOM_CHECK(r.slot >= 0 && r.slot < slots_, "row {}: slot {} outside [0, {})", i, r.slot,
               slots_);
    LOOM_REQUIRE(r.pos >= 0 && r.pos < capacity(), "row {}: position {} outside the {} a "
                 "sequence can hold", i, r.pos, capacity());
    LOOM_REQUIRE(r.token >= 0 && r.token < V, "token id {} outside the vocabulary [0, {})",
                 r.token, V);
    if (i > 0 && rows[i - 1].slot == r.slot)
      LOOM_CHECK(r.pos == rows[i - 1].pos + 1, "rows {} and {} of slot {}: positions {} then {}",
                 i - 1, i, r.slot, rows[i - 1].pos, r.pos);
  }
}

void Decoder::forward(std::span<const DecodeRow> rows, std::vector<float>& logits) {
  check_rows(rows);
  embed(rows);
  for (int l = 0; l < int(blocks_.size()); ++l) block(l, rows);
  head(rows, logits);
}

void Decoder::reduce(float* partial, size_t count) {
  if (tp_ > 1) grid_.tp_comm().allreduce(partial, count, ReduceOp::kSum);
}

void Decoder::linear(float* out, const float* in, const k::PackedLinear& weight,
                     const float* bias, int n, int C) {
  if (precision_ == DType::kF32) return weight.forward(out, in, bias, n);
  k::to_compute(precision_, stage_.data(), in, size_t(n) * C);
  weight.forward(out, stage_.data(), bias, n);
}

void Decoder::embed(std::span<const DecodeRow> rows) {
  const int n = int(rows.size()), C = C_;
  std::vector<int32_t> tokens(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) tokens[i] = rows[i].token;
  float* x = x_.data();
  if (tp_ == 1) {
    for (int i = 0; i < n; ++i)
      std::memcpy(x + size_t(i) * C, w(wte_) + size_t(tokens[i]) * C, C * sizeof(float));
  } else {  // each rank looks up its vocabulary rows, zeros elsewhere: the sum is exact
    vocab_embedding_lookup(x, tokens.data(), w(wte_), n, C, tp_rank_ * Vl_, Vl_);
    reduce(x, size_t(n) * C);
  }
  for (int i = 0; i < n; ++i) {
    float* xi = x + size_t(i) * C;
    const float* p = w(wpe_) + size_t(rows[i].pos) * C;
    for (int c = 0; c < C; ++c) xi[c] += p[c];
  }
}

void Decoder::block(int l, std::span<const DecodeRow> rows) {
  const Block& b = blocks_[size_t(l)];
  const int n = int(rows.size()), C = C_, Cl = Cl_;
  const size_t nc = size_t(n) * C;
  // Row-parallel biases are added once (tp rank 0), before the partial sums are reduced.
  const bool bias_here = tp_rank_ == 0;
  k::layernorm_forward(ln_.data(), mean_.data(), rstd_.data(), x_.data(), w(b.ln1w), w(b.ln1b),
                       n, C);
  linear(qkv_.data(), ln_.data(), b.qkv, w(b.qkvb), n, C);
  attention(l, rows);
  linear(proj_.data(), atty_.data(), b.attproj, bias_here ? w(b.attprojb) : nullptr, n, Cl);
  reduce(proj_.data(), nc);
  k::residual_forward(x_.data(), x_.data(), proj_.data(), nc);
  k::layernorm_forward(ln_.data(), mean_.data(), rstd_.data(), x_.data(), w(b.ln2w), w(b.ln2b),
                       n, C);
  linear(fch_.data(), ln_.data(), b.fc, w(b.fcb), n, C);
  k::gelu_forward(gelu_.data(), fch_.data(), size_t(n) * 4 * Cl);
  linear(proj_.data(), gelu_.data(), b.fcproj, bias_here ? w(b.fcprojb) : nullptr, n, 4 * Cl);
  reduce(proj_.data(), nc);
  k::residual_forward(x_.data(), x_.data(), proj_.data(), nc);
}

void Decoder::attention(int l, std::span<const DecodeRow> rows) {
  const int n = int(rows.size()), Cl = Cl_, HS = HS_, NHl = NHl_;
  // This call's keys (transposed) and values into the cache, then every row attends over
  // its slot's.
  const size_t cap = size_t(cache_.capacity());
  const bool bf16 = cache_.dtype() == DType::kBF16;
#pragma omp parallel for schedule(static)
  for (int i = 0; i < n; ++i) {
    const float* q = qkv_.data() + size_t(i) * 3 * Cl;
    const DecodeRow& r = rows[size_t(i)];
    for (int h = 0; h < NHl; ++h) {
      const float *k = q + Cl + h * HS, *v = q + 2 * Cl + h * HS;
      std::byte *kt = cache_.keys(l, r.slot, h), *vs = cache_.values(l, r.slot, h);
      for (int j = 0; j < HS; ++j) {
        const size_t kat = size_t(j) * cap + size_t(r.pos), vat = size_t(r.pos) * HS + size_t(j);
        if (bf16) {
          reinterpret_cast<uint16_t*>(kt)[kat] = bf16_from_float(k[j]);
          reinterpret_cast<uint16_t*>(vs)[vat] = bf16_from_float(v[j]);
        } else {
          reinterpret_cast<float*>(kt)[kat] = k[j];
          reinterpret_cast<float*>(vs)[vat] = v[j];
        }
      }
    }
  }
  std::vector<k::CachedAttentionRun> runs;
  for (int i = 0; i < n;) {
    int j = i + 1;
    while (j < n && rows[size_t(j)].slot == rows[size_t(i)].slot) ++j;
    const int slot = rows[size_t(i)].slot;
    runs.push_back({qkv_.data() + size_t(i) * 3 * Cl, atty_.data() + size_t(i) * Cl,
                    cache_.keys(l, slot, 0), cache_.values(l, slot, 0), j - i,
                    rows[size_t(i)].pos});
    i = j;
  }
  k::cached_attention(runs, NHl, HS, 3 * Cl, Cl, cache_.capacity(), cache_.dtype());
}

void Decoder::head(std::span<const DecodeRow> rows, std::vector<float>& logits) {
  const int C = C_, V = vocab_size();
  int m = 0;  // the wanted rows, packed into proj_
  for (size_t i = 0; i < rows.size(); ++i)
    if (rows[i].logits)
      std::memcpy(proj_.data() + size_t(m++) * C, x_.data() + i * C, C * sizeof(float));
  logits.resize(size_t(m) * V);
  if (m == 0) return;
  k::layernorm_forward(ln_.data(), mean_.data(), rstd_.data(), proj_.data(), w(lnfw_), w(lnfb_),
                       m, C);
  logits_local_.resize(size_t(m) * Vl_);
  linear(logits_local_.data(), ln_.data(), head_, nullptr, m, C);
  const float* all = logits_local_.data();  // (tp, m, Vl): rank r holds columns [r*Vl, +Vl)
  if (tp_ > 1) {
    gathered_.resize(size_t(tp_) * m * Vl_);
    grid_.tp_comm().allgather(logits_local_.data(), gathered_.data(), size_t(m) * Vl_);
    all = gathered_.data();
  }
  for (int i = 0; i < m; ++i)
    for (int r = 0; r < tp_; ++r) {
      const int v0 = r * Vl_, count = std::clamp(V - v0, 0, Vl_);
      std::memcpy(logits.data() + size_t(i) * V + v0, all + (size_t(r) * m + i) * Vl_,
                  size_t(count) * sizeof(float));
    }
}

}  // namespace loom
