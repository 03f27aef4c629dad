#include "model/param_spec.h"

#include <fmt/format.h>

#include <cmath>
#include <numeric>

#include "core/check.h"
#include "core/philox.h"

namespace loom {

int64_t ParamSpec::global_numel() const {
  return std::accumulate(global_shape.begin(), global_shape.end(), int64_t{1},
                         std::multiplies<>());
}

void GptConfig::validate() const {
  LOOM_REQUIRE(n_layer >= 1 && n_head >= 1 && n_embd >= 1 && block_size >= 1 && vocab_size >= 1,
               "model sizes must be >= 1: n_layer={} n_head={} n_embd={} block_size={} "
               "vocab_size={}",
               n_layer, n_head, n_embd, block_size, vocab_size);
  LOOM_REQUIRE(n_embd % n_head == 0, "n_embd={} is not divisible by n_head={}", n_embd, n_head);
}

namespace {

struct SpecBuilder {
  std::vector<ParamSpec> specs;
  size_t offset = 0;

  ParamSpec& add(std::string name, std::vector<int64_t> shape, int layer, InitKind init,
                 float std = 0.0f) {
    ParamSpec p;
    p.name = std::move(name);
    p.global_shape = shape;
    p.local_shape = shape;
    p.offset = offset;
    p.numel = size_t(p.global_numel());
    p.layer = layer;
    p.decay = shape.size() >= 2;
    p.init = init;
    p.init_std = std;
    offset += p.numel;
    specs.push_back(p);
    return specs.back();
  }
};

}  // namespace

ModelShard ModelShard::whole(const GptConfig& cfg) {
  ModelShard s;
  for (int l = 0; l < cfg.n_layer; ++l) s.blocks.push_back(l);
  return s;
}

std::vector<ParamSpec> gpt2_param_specs(const GptConfig& cfg) {
  return gpt2_param_specs(cfg, ModelShard::whole(cfg));
}

namespace {

// Takes this tp rank's slice of the last added spec along dim (parts: q|k|v).
void split(ParamSpec& p, int dim, int tp, int rank, int parts, size_t& offset) {
  if (tp == 1) return;
  const int64_t part = p.global_shape[size_t(dim)] / parts, local = part / tp;
  p.split_dim = dim;
  p.split_parts = parts;
  p.split_start = local * rank;
  p.local_shape[size_t(dim)] = local * parts;
  offset -= p.numel;
  p.numel /= size_t(tp);
  offset += p.numel;
}

void add_block(SpecBuilder& b, const GptConfig& cfg, const ModelShard& s, int l) {
  const int64_t C = cfg.n_embd;
  const float std = 0.02f;
  // GPT-2 scales the residual projections by 1/sqrt(2L) (two per block).
  const float proj_std = 0.02f / std::sqrt(2.0f * float(cfg.n_layer));
  auto n = [l](const char* suffix) { return fmt::format("h.{}.{}", l, suffix); };
  const int tp = s.tp, r = s.tp_rank;
  b.add(n("ln_1.weight"), {C}, l, InitKind::kOnes);
  b.add(n("ln_1.bias"), {C}, l, InitKind::kZeros);
  split(b.add(n("attn.c_attn.weight"), {3 * C, C}, l, InitKind::kNormal, std), 0, tp, r, 3,
        b.offset);
  split(b.add(n("attn.c_attn.bias"), {3 * C}, l, InitKind::kZeros), 0, tp, r, 3, b.offset);
  split(b.add(n("attn.c_proj.weight"), {C, C}, l, InitKind::kNormal, proj_std), 1, tp, r, 1,
        b.offset);
  b.add(n("attn.c_proj.bias"), {C}, l, InitKind::kZeros);
  b.add(n("ln_2.weight"), {C}, l, InitKind::kOnes);
  b.add(n("ln_2.bias"), {C}, l, InitKind::kZeros);
  split(b.add(n("mlp.c_fc.weight"), {4 * C, C}, l, InitKind::kNormal, std), 0, tp, r, 1,
        b.offset);
  split(b.add(n("mlp.c_fc.bias"), {4 * C}, l, InitKind::kZeros), 0, tp, r, 1, b.offset);
  split(b.add(n("mlp.c_proj.weight"), {C, 4 * C}, l, InitKind::kNormal, proj_std), 1, tp, r, 1,
        b.offset);
  b.add(n("mlp.c_proj.bias"), {C}, l, InitKind::kZeros);
}

}  // namespace

std::vector<ParamSpec> gpt2_param_specs(const GptConfig& cfg, const ModelShard& s) {
  cfg.validate();
  LOOM_REQUIRE(s.tp >= 1 && s.tp_rank >= 0 && s.tp_rank < s.tp, "bad tensor-parallel rank {} of {}",
               s.tp_rank, s.tp);
  LOOM_REQUIRE(cfg.n_head % s.tp == 0,
               "n_head={} is not divisible by tp={}: tensor parallelism splits whole heads",
               cfg.n_head, s.tp);
  const int64_t C = cfg.n_embd, Vp = cfg.padded_vocab(s.tp);
  SpecBuilder b;
  if (s.embed || s.head) {
    ParamSpec& wte = b.add("wte.weight", {Vp, C}, -1, InitKind::kNormal, 0.02f);
    wte.tied = true;
    wte.real_rows = cfg.vocab_size;
    split(wte, 0, s.tp, s.tp_rank, 1, b.offset);
  }
  if (s.embed) b.add("wpe.weight", {cfg.block_size, C}, -1, InitKind::kNormal, 0.02f);
  for (int l : s.blocks) {
    LOOM_CHECK(l >= 0 && l < cfg.n_layer, "block {} outside [0, {})", l, cfg.n_layer);
    add_block(b, cfg, s, l);
  }
  if (s.head) {
    b.add("ln_f.weight", {C}, cfg.n_layer, InitKind::kOnes);
    b.add("ln_f.bias", {C}, cfg.n_layer, InitKind::kZeros);
  }
  return b.specs;
}

size_t flat_size(const std::vector<ParamSpec>& specs) {
  return specs.empty() ? 0 : specs.back().offset + specs.back().numel;
}

size_t real_param_count(const std::vector<ParamSpec>& specs) {
  size_t n = 0;
  for (const ParamSpec& p : specs)
    n += p.real_rows >= 0 ? size_t(p.real_rows) * (p.numel / size_t(p.global_shape[0])) : p.numel;
  return n;
}

const ParamSpec& find_param(const std::vector<ParamSpec>& specs, const std::string& name) {
  for (const ParamSpec& p : specs)
    if (p.name == name) return p;
  LOOM_CHECK(false, "no parameter named '{}'", name);
  __builtin_unreachable();
}

namespace {

constexpr size_t kMaxDims = 8;

void check_dims(const ParamSpec& p) {
  LOOM_CHECK(p.local_shape.size() <= kMaxDims && p.global_shape.size() == p.local_shape.size(),
             "parameter '{}': {} dimensions (at most {})", p.name, p.local_shape.size(), kMaxDims);
}

// Global flat index (row-major over global_shape) of local element i (check_dims first; no
// allocation: this runs once per element).
int64_t global_index(const ParamSpec& p, int64_t i) {
  if (p.split_dim < 0) return i;
  int64_t g = 0, rem = i, stride = 1;
  int64_t idx[kMaxDims];
  for (int d = int(p.local_shape.size()) - 1; d >= 0; --d) {
    idx[d] = rem % p.local_shape[d];
    rem /= p.local_shape[d];
  }
  if (p.split_parts > 1) {
    const int64_t local_part = p.local_shape[size_t(p.split_dim)] / p.split_parts;
    const int64_t global_part = p.global_shape[size_t(p.split_dim)] / p.split_parts;
    const int64_t i_d = idx[size_t(p.split_dim)];
    idx[size_t(p.split_dim)] = i_d / local_part * global_part + p.split_start + i_d % local_part;
  } else {
    idx[size_t(p.split_dim)] += p.split_start;
  }
  for (int d = int(p.global_shape.size()) - 1; d >= 0; --d) {
    g += idx[d] * stride;
    stride *= p.global_shape[d];
  }
  return g;
}

}  // namespace

void slice_to_local(const ParamSpec& p, const float* global_tensor, float* local) {
  check_dims(p);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < int64_t(p.numel); ++i) local[i] = global_tensor[global_index(p, i)];
}

void local_to_global(const ParamSpec& p, const float* local, float* global_tensor) {
  check_dims(p);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < int64_t(p.numel); ++i) global_tensor[global_index(p, i)] = local[i];
}

void init_params(const std::vector<ParamSpec>& specs, uint64_t seed, float* weights) {
  for (const ParamSpec& p : specs) {
    check_dims(p);
    float* w = weights + p.offset;
    const Philox rng(seed, name_hash(p.name));
    const int64_t row_len = p.global_shape.size() >= 2 ? p.global_numel() / p.global_shape[0] : 1;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < int64_t(p.numel); ++i) {
      int64_t g = global_index(p, i);
      float value = 0.0f;
      if (p.init == InitKind::kOnes) value = 1.0f;
      if (p.init == InitKind::kNormal) value = p.init_std * rng.normal(uint64_t(g));
      if (p.real_rows >= 0 && g / row_len >= p.real_rows) value = 0.0f;
      w[i] = value;
    }
  }
}

}  // namespace loom
