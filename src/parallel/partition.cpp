#include "parallel/partition.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string_view>

#include "core/check.h"

namespace loom {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// "8 virtual stages (pp=4 x virtual-stages=2)", or just "8 virtual stages" without pp.
std::string name_stages(int S, int pp) {
  if (pp > 0 && S % pp == 0)
    return fmt::format("{} virtual stages (pp={} x virtual-stages={})", S, pp, S / pp);
  return fmt::format("{} virtual stages", S);
}

void require_fillable(int L, int S, int pp) {
  LOOM_REQUIRE(S >= 1, "need >= 1 virtual stage, got {}", S);
  LOOM_REQUIRE(L >= S, "n_layer={} cannot fill {}; need n_layer >= {}", L, name_stages(S, pp), S);
}

// Cost of virtual stage s of S holding blocks [i, j), from prefix sums of block costs.
struct StageCost {
  const LayerCosts& costs;
  std::vector<double> prefix;  // (L+1)
  int S;
  StageCost(const LayerCosts& c, int S_) : costs(c), prefix(c.block.size() + 1, 0.0), S(S_) {
    std::partial_sum(c.block.begin(), c.block.end(), prefix.begin() + 1);
  }
  double operator()(int s, int i, int j) const {
    return prefix[j] - prefix[i] + (s == 0 ? costs.embed : 0.0) + (s == S - 1 ? costs.head : 0.0);
  }
};

using Table = std::vector<std::vector<double>>;  // [stage s][first block i]

// The fewest blocks virtual stage s of S holds: one, except that the last of several may
// hold the head alone (with a large vocabulary the head can outweigh many blocks).
int min_blocks(int s, int S) { return s == S - 1 && S > 1 ? 0 : 1; }
// The fewest blocks stages [s, S) hold together.
int min_blocks_from(int s, int S) { return S - s - (S > 1 && s < S ? 1 : 0); }

// The smallest possible cost of the most expensive stage (the pipeline's bottleneck).
// best[s][i] is that minimum over stages s..S-1 covering blocks [i, L).
double min_max_cost(const StageCost& cost, int L) {
  const int S = cost.S;
  Table best(S + 1, std::vector<double>(L + 1, kInf));
  best[S][L] = 0;
  for (int s = S - 1; s >= 0; --s)
    for (int i = s; i <= L - min_blocks_from(s, S); ++i)  // stages before s hold >= s blocks
      for (int j = i + min_blocks(s, S); j <= L - min_blocks_from(s + 1, S); ++j)
        best[s][i] = std::min(best[s][i], std::max(cost(s, i, j), best[s + 1][j]));
  return best[0][0];
}

// Among splits whose every stage costs <= `target`: sq[s][i] is the least sum of squared
// stage costs over stages s..S-1 covering blocks [i, L) (infinite when none fits).
Table min_sum_squares(const StageCost& cost, int L, double target) {
  const int S = cost.S;
  Table sq(S + 1, std::vector<double>(L + 1, kInf));
  sq[S][L] = 0;
  for (int s = S - 1; s >= 0; --s)
    for (int i = s; i <= L - min_blocks_from(s, S); ++i)
      for (int j = i + min_blocks(s, S); j <= L - min_blocks_from(s + 1, S); ++j) {
        const double c = cost(s, i, j);
        if (c <= target) sq[s][i] = std::min(sq[s][i], c * c + sq[s + 1][j]);
      }
  return sq;
}

StagePartition from_first(std::vector<int> first, const StageCost& cost) {
  StagePartition part;
  part.first = std::move(first);
  for (int s = 0; s < cost.S; ++s) part.cost.push_back(cost(s, part.first[s], part.first[s + 1]));
  return part;
}

// Parses one non-negative decimal entry of a stage-layers spec; `pos` is 1-based.
int parse_entry(std::string_view tok, int pos, const std::string& spec) {
  while (!tok.empty() && tok.front() == ' ') tok.remove_prefix(1);
  while (!tok.empty() && tok.back() == ' ') tok.remove_suffix(1);
  int value = 0;
  const auto [end, ec] = std::from_chars(tok.data(), tok.data() + tok.size(), value);
  LOOM_REQUIRE(!tok.empty() && ec == std::errc() && end == tok.data() + tok.size(),
               "stage layers '{}': entry {} ('{}') is not an integer", spec, pos, tok);
  LOOM_REQUIRE(value >= 0, "stage layers '{}': entry {} is {}, a block count must be >= 0",
               spec, pos, value);
  return value;
}

}  // namespace

LayerCosts model_layer_costs(const GptConfig& cfg, int seq_len) {
  cfg.validate();
  LOOM_REQUIRE(seq_len >= 1 && seq_len <= cfg.block_size, "seq_len {} outside [1, block_size={}]",
               seq_len, cfg.block_size);
  const double C = cfg.n_embd, T = seq_len, Vp = cfg.padded_vocab();
  LayerCosts c;
  c.block.assign(cfg.n_layer, 3 * (24 * C * C + 4 * T * C));
  c.embed = 3 * C;
  c.head = 3 * (2 * C * Vp) + 5 * Vp;
  return c;
}

StagePartition balance_stages(const LayerCosts& costs, int S, int pp) {
  const int L = static_cast<int>(costs.block.size());
  require_fillable(L, S, pp);
  const StageCost cost(costs, S);
  const double target = min_max_cost(cost, L);
  const Table sq = min_sum_squares(cost, L, target);
  // Walk forward taking the earliest boundary that stays within the bottleneck and the
  // least sum of squares (to a relative 1e-12, so round-off does not decide ties). Both
  // passes compare the same doubles computed the same way, so the walk always finds one.
  const double tol = 1e-12 * sq[0][0];
  std::vector<int> first{0};
  for (int s = 0; s < S; ++s) {
    const int i = first.back();
    auto fits = [&](int j) {
      const double c = cost(s, i, j);
      return c <= target && c * c + sq[s + 1][j] <= sq[s][i] + tol;
    };
    int j = s == S - 1 ? L : i + 1;
    while (j < L && !fits(j)) ++j;
    LOOM_CHECK(fits(j), "balance_stages: no boundary for stage {} reaches the optimum {}", s,
               target);
    first.push_back(j);
  }
  return from_first(std::move(first), cost);
}

StagePartition parse_stage_layers(const std::string& spec, const LayerCosts& costs, int S,
                                  int pp) {
  const int L = static_cast<int>(costs.block.size());
  require_fillable(L, S, pp);
  std::vector<int> counts;
  size_t start = 0;
  for (;;) {
    const size_t comma = spec.find(',', start);
    const std::string_view tok(spec.data() + start,
                               (comma == std::string::npos ? spec.size() : comma) - start);
    counts.push_back(parse_entry(tok, static_cast<int>(counts.size()) + 1, spec));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  LOOM_REQUIRE(static_cast<int>(counts.size()) == S,
               "stage layers '{}' has {} entries, need one per virtual stage: {}", spec,
               counts.size(), name_stages(S, pp));
  for (int s = 0; s < S; ++s)
    LOOM_REQUIRE(counts[size_t(s)] >= min_blocks(s, S),
                 "stage layers '{}': entry {} is 0, every virtual stage but the last needs >= 1 "
                 "block (the last may hold the head alone)", spec, s + 1);
  const int64_t sum = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  LOOM_REQUIRE(sum == L, "stage layers '{}' sum to {} blocks, the model has n_layer={}", spec, sum,
               L);
  std::vector<int> first{0};
  for (int n : counts) first.push_back(first.back() + n);
  return from_first(std::move(first), StageCost(costs, S));
}

std::string describe(const StagePartition& part, int p) {
  const int S = part.stages();
  LOOM_CHECK(p >= 1 && S % p == 0, "{} virtual stages do not divide over pp={}", S, p);
  const double total = std::accumulate(part.cost.begin(), part.cost.end(), 0.0);
  double worst = 0;
  std::string out;
  for (int s = 0; s < S; ++s) {
    const int lo = part.first[s], hi = part.first[s + 1] - 1;
    std::string blocks = lo > hi    ? std::string("no blocks")
                         : lo == hi ? fmt::format("block {}", lo)
                                    : fmt::format("blocks {}-{}", lo, hi);
    if (s == 0) blocks += " + embeddings";
    if (s == S - 1) blocks += " + head";
    const double percent = total > 0 ? 100 * part.cost[s] / total : 0.0;
    out += fmt::format("pp rank {} chunk {} (virtual stage {}): {}, cost {:.3g} ({:.1f}%)\n",
                       s % p, s / p, s, blocks, part.cost[s], percent);
    worst = std::max(worst, part.cost[s]);
  }
  const double mean = total / S;
  out += fmt::format("imbalance max/mean = {:.3f} (max {:.3g}, mean {:.3g})\n",
                     mean > 0 ? worst / mean : 1.0, worst, mean);
  return out;
}

int virtual_stage_of_block(const StagePartition& part, int block) {
  LOOM_CHECK(part.first.size() >= 2 && block >= 0 && block < part.first.back(),
             "block {} outside [0, {})", block, part.first.empty() ? 0 : part.first.back());
  const auto it = std::upper_bound(part.first.begin(), part.first.end(), block);
  return static_cast<int>(it - part.first.begin()) - 1;
}

LayerCosts measured_layer_costs(const StagePartition& part, const std::vector<double>& seconds) {
  const int S = part.stages();
  LOOM_REQUIRE(int(seconds.size()) == S && S >= 1, "measured_layer_costs: {} times for {} "
               "stages", seconds.size(), S);
  double t = 0, k = 0;
  for (int s = 1; s + 1 < S; ++s) {
    t += seconds[size_t(s)];
    k += part.blocks(s);
  }
  const bool first_prices = k == 0;
  if (first_prices) {  // every stage holds an end: the first stage's blocks price a block
    t = seconds[0];
    k = part.blocks(0);
  }
  const double block = t / k;
  LayerCosts c;
  c.block.assign(size_t(part.first.back()), block);
  // (When the first stage's blocks price a block, its end is free by definition.)
  const double first =
      first_prices ? 0.0 : std::max(0.0, seconds[0] - part.blocks(0) * block);
  const double last = std::max(0.0, seconds[size_t(S - 1)] - part.blocks(S - 1) * block);
  if (S == 1) {
    c.head = first;
  } else {
    c.embed = first;
    c.head = last;
  }
  return c;
}

std::string stage_layers_spec(const StagePartition& part) {
  std::string out;
  for (int s = 0; s < part.stages(); ++s) out += fmt::format("{}{}", s ? "," : "", part.blocks(s));
  return out;
}

}  // namespace loom
