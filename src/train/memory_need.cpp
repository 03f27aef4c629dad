#include "train/memory_need.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <optional>
#include <vector>

#include "core/check.h"
#include "core/dtype.h"
#include "kernels/kernels.h"
#include "model/activations.h"

namespace loom {

namespace {

struct Sizes {
  double C, NH, L, maxT, Vp, B, T, tp, pp, dp, v, ga;
  bool sp;
  int zero;
};

Sizes sizes_of(const RunConfig& cfg) {
  const ParallelConfig& p = cfg.parallel;
  return {double(cfg.model.n_embd),    double(cfg.model.n_head),
          double(cfg.model.n_layer),   double(cfg.model.block_size),
          double(cfg.model.padded_vocab(std::max(1, p.tp))), double(cfg.train.micro_batch),
          double(cfg.train.seq_len),   double(std::max(1, p.tp)),
          double(std::max(1, p.pp)),   double(std::max(1, p.dp)),
          double(std::max(1, p.virtual_stages)), double(std::max(1, cfg.train.grad_accum)),
          p.sequence_parallel && p.tp > 1, p.zero};
}

// Micro-batches whose activations one rank holds at once, per chunk (the slots the trainer
// reserves: the schedule's peak in flight on its busiest rank): one without a pipeline;
// under GPipe every micro-batch of the step; under 1F1B at most the pipeline depth; under
// the interleaved schedule at most twice the depth (its warm-up runs ahead by a round of
// chunks: min(m, 2p) for every p, m and v >= 2 the builder accepts).
double inflight(const RunConfig& cfg, const Sizes& s) {
  if (s.pp <= 1) return 1;
  if (cfg.parallel.schedule == "gpipe") return s.ga;
  return std::min(s.ga, (cfg.parallel.schedule == "interleaved" ? 2 : 1) * s.pp);
}

// What one pipeline rank holds: its blocks (over all its chunks) and whether it holds the
// embeddings (virtual stage 0) and the head (the last virtual stage).
struct RankShare {
  double blocks = 0;
  bool embed = false, head = false;
};

// Bytes of the activation arena Gpt::reserve lays out (model/activations.h) for a rank
// holding `share` over v chunks.
double activation_bytes(const RunConfig& cfg, const Sizes& s, const RankShare& share) {
  const ActDims d =
      activation_dims(cfg.model, cfg.train.micro_batch, cfg.train.seq_len, int(s.tp), s.sp,
                      parse_attention(cfg.train.attention), parse_dtype(cfg.train.precision));
  const Recompute r = parse_recompute(cfg.train.recompute);
  const DType dt = kernels::compute_storage(parse_dtype(cfg.train.precision));
  // The arena is linear in blocks and slots: price each part from one-chunk layouts.
  auto bytes = [&](ChunkShape c, int slots) { return activation_bytes(d, {&c, 1}, slots, r, dt); };
  const double empty = bytes({0, false}, 1);
  const double input = bytes({0, false}, 2) - empty;  // a chunk's input, per slot
  const double block = bytes({1, false}, 1) - empty;  // a kept block, per slot
  const double head = share.head ? bytes({0, true}, 1) - empty : 0;
  const double shared = empty - input;  // scratch and the recomputed entries' one copy
  return inflight(cfg, s) * (share.blocks * block + s.v * input + head) + shared;
}

// Parameters of one block (tp slices), and the ends `share` holds: the wte slice (the
// embeddings' and the tied lm_head's), wpe, ln_f.
double block_params(const Sizes& s) { return 6 * s.C + (12 * s.C * s.C + 7 * s.C) / s.tp; }
double end_params(const Sizes& s, const RankShare& share) {
  return (share.embed || share.head ? s.Vp * s.C / s.tp : 0) + (share.embed ? s.maxT * s.C : 0) +
         (share.head ? 2 * s.C : 0);
}

// What each pipeline rank holds under `part` (virtual stage vs on rank vs % pp).
std::vector<RankShare> rank_shares(const StagePartition& part, int pp) {
  const int S = part.stages();
  std::vector<RankShare> out(static_cast<size_t>(pp));
  for (int vs = 0; vs < S; ++vs) {
    RankShare& share = out[size_t(vs % pp)];
    share.blocks += part.blocks(vs);
    share.embed |= vs == 0;
    share.head |= vs == S - 1;
  }
  return out;
}

MemoryNeed rank_memory(const RunConfig& cfg, const Sizes& s, const RankShare& share) {
  const double block = block_params(s), embed = end_params(s, share);
  const double P = share.blocks * block + embed;
  MemoryNeed m;
  m.weights = 4 * (s.zero == 3 ? P / s.dp + embed + block : P);
  const DType precision = parse_dtype(cfg.train.precision);
  // The compute-precision copy of every weight this rank holds (Gpt::set_precision);
  // ZeRO-3 casts each unit as it is gathered and gives its pages back with the masters'.
  if (precision != DType::kF32)
    m.weights += double(dtype_size(kernels::compute_storage(precision))) *
                 (s.zero == 3 ? embed + block : P);
  // ZeRO gathering in the low precision: one block's 16-bit words.
  if (precision != DType::kF32 && s.zero >= 1 && s.dp > 1) m.weights += 2 * block;
  m.grads = 4 * (s.zero >= 2 ? P / s.dp : P);
  // bf16 gradient reduction: the buckets' bf16 copies.
  if (cfg.parallel.grad_reduce == "bf16" && s.dp > 1) m.grads += 2 * P;
  m.optimizer = 8 * (s.zero >= 1 ? P / s.dp : P);
  m.activations = activation_bytes(cfg, s, share);
  if (cfg.checkpoint.async) m.snapshot = 4 * P + m.optimizer;  // the host copy being written
  return m;
}

// Beyond this many cells of balance_stages' table, the FLOP-balanced split is taken as even
// (no model trained today has more than a few hundred blocks; absurd sizes stay cheap).
constexpr double kMaxBalanceCells = 1e8;

}  // namespace

StagePartition stage_partition(const RunConfig& cfg) {
  const ParallelConfig& p = cfg.parallel;
  const int S = std::max(1, p.pp) * std::max(1, p.virtual_stages);
  const LayerCosts costs = model_layer_costs(cfg.model, cfg.train.seq_len);
  if (!p.stage_layers.empty() && p.stage_layers != "auto")
    return parse_stage_layers(p.stage_layers, costs, S, p.pp);
  return balance_stages(costs, S, p.pp);
}

MemoryNeed estimate_rank_memory(const RunConfig& cfg, const StagePartition& part) {
  const Sizes s = sizes_of(cfg);
  MemoryNeed worst;
  bool first = true;
  for (const RankShare& share : rank_shares(part, int(s.pp))) {
    const MemoryNeed m = rank_memory(cfg, s, share);
    if (first || m.total() > worst.total()) worst = m;
    first = false;
  }
  return worst;
}

double most_rank_params(const RunConfig& cfg, const StagePartition& part) {
  const Sizes s = sizes_of(cfg);
  double most = 0;
  for (const RankShare& share : rank_shares(part, int(s.pp)))
    most = std::max(most, share.blocks * block_params(s) + end_params(s, share));
  return most;
}

MemoryNeed estimate_rank_memory(const RunConfig& cfg) {
  const Sizes s = sizes_of(cfg);
  const double S = s.pp * s.v;
  const bool explicit_split = !cfg.parallel.stage_layers.empty() &&
                              cfg.parallel.stage_layers != "auto";
  if (s.pp > 1 && (explicit_split || S * s.L * s.L <= kMaxBalanceCells))
    return estimate_rank_memory(cfg, stage_partition(cfg));
  // One rank holds everything, or an even split: the first stage's ceil(L/pp) blocks, the
  // embeddings, and (counted to be safe) the head.
  return rank_memory(cfg, s, RankShare{std::ceil(s.L / s.pp), true, true});
}

std::string MemoryNeed::breakdown() const {
  std::string out = fmt::format("weights {}, gradients {}, optimizer {}, activations {}",
                                format_bytes(weights), format_bytes(grads),
                                format_bytes(optimizer), format_bytes(activations));
  if (snapshot > 0) out += fmt::format(", async checkpoint copy {}", format_bytes(snapshot));
  return out;
}

namespace {

// The largest value in [lo, hi] (in steps of `step` from lo) for which the run fits, or none.
std::optional<int> largest_fitting(const RunConfig& cfg, double limit, int lo, int hi, int step,
                                   const std::function<void(RunConfig&, int)>& set) {
  auto fits = [&](int k) {
    RunConfig c = cfg;
    set(c, lo + k * step);
    return estimate_rank_memory(c).total() <= limit;
  };
  if (hi < lo || !fits(0)) return std::nullopt;
  int good = 0, bad = (hi - lo) / step + 1;  // fits(good), and bad is past the range
  while (bad - good > 1) {
    const int mid = good + (bad - good) / 2;
    (fits(mid) ? good : bad) = mid;
  }
  return lo + good * step;
}

std::string fitting_settings(const RunConfig& cfg, double limit) {
  struct Knob {
    const char* name;
    int lo, hi, step;
    std::function<void(RunConfig&, int)> set;
  };
  const GptConfig& m = cfg.model;
  const int NH = std::max(1, m.n_head);
  const std::vector<Knob> knobs = {
      {"model.n_layer", 1, m.n_layer, 1, [](RunConfig& c, int x) { c.model.n_layer = x; }},
      {"model.n_embd", NH, m.n_embd, NH, [](RunConfig& c, int x) { c.model.n_embd = x; }},
      {"model.block_size", cfg.train.seq_len, m.block_size, 1,
       [](RunConfig& c, int x) { c.model.block_size = x; }},
      {"train.micro_batch", 1, cfg.train.micro_batch, 1,
       [](RunConfig& c, int x) { c.train.micro_batch = x; }},
      {"train.seq_len", 1, cfg.train.seq_len, 1,
       [](RunConfig& c, int x) { c.train.seq_len = x; }}};
  std::string out;
  for (const Knob& k : knobs) {
    if (const auto x = largest_fitting(cfg, limit, k.lo, k.hi, k.step, k.set))
      out += fmt::format("{}{}={}", out.empty() ? "" : ", ", k.name, *x);
  }
  if (out.empty())
    return "no smaller n_layer, n_embd, block_size, micro_batch or seq_len alone makes it fit: "
           "spread it over more ranks (tp, pp, or dp with [parallel] zero) or shrink several";
  return "largest settings that fit, each with the others unchanged: " + out;
}

}  // namespace

void require_memory_fits(const RunConfig& cfg, const MemoryLimit& limit) {
  const MemoryNeed need = estimate_rank_memory(cfg);
  if (need.total() <= limit.bytes) return;
  throw InputError(fmt::format(
      "not enough memory: this run needs about {} per rank ({}) but {} is available ({}); {}",
      format_bytes(need.total()), need.breakdown(), format_bytes(limit.bytes), limit.why,
      fitting_settings(cfg, limit.bytes)));
}

}  // namespace loom
