// Which transformer blocks each pipeline virtual stage holds. Virtual stage s (chunk
// s / p of pp rank s % p, schedule.h) holds a contiguous run of blocks; stage 0 also runs
// the embeddings and the last stage the final layernorm, lm_head and loss, so an even
// split of blocks leaves the last stage the slowest whenever the vocabulary is large.
// balance_stages() moves blocks off the expensive ends by a FLOP cost model;
// parse_stage_layers() takes an explicit split from the user instead.
#pragma once

#include <string>
#include <vector>

#include "model/config.h"

namespace loom {

struct StagePartition {
  std::vector<int> first;    // size S+1: virtual stage s holds blocks [first[s], first[s+1])
  std::vector<double> cost;  // per virtual stage: FLOPs per token, forward + backward
  int stages() const { return static_cast<int>(cost.size()); }
  int blocks(int s) const { return first[s + 1] - first[s]; }
};

// FLOPs per token of forward + backward (backward ~ 2x forward: one GEMM for the input
// gradient and one for the weight gradient per forward GEMM), per piece of the model.
struct LayerCosts {
  std::vector<double> block;  // (L) one transformer block
  double embed = 0;           // token + position embedding (stage 0)
  double head = 0;            // final layernorm, lm_head, softmax and loss (last stage)
};

// The cost model, per token with T = seq_len, C = n_embd, Vp = padded vocabulary:
//   block = 3 * (24*C*C + 4*T*C): the qkv (6C^2), attention projection (2C^2) and MLP
//           (16C^2) GEMMs at 2 FLOPs per multiply-add, plus the attention scores Q K^T and
//           the weighted sum of V (2*T*C each, counted over all T keys);
//   embed = 3 * C: a lookup and an add, negligible next to a block;
//   head  = 3 * 2*C*Vp + 5*Vp: the lm_head GEMM, plus max / exp / sum / normalise / loss
//           over the logits (layernorms are O(C) and ignored).
// Throws InputError for a config that fails validate() or seq_len outside [1, block_size].
LayerCosts model_layer_costs(const GptConfig& cfg, int seq_len);

// Splits the L blocks into S contiguous virtual stages of >= 1 block each, except that the
// last of several may hold the head alone (a 50k-row lm_head can outweigh several blocks:
// GPT-2's outweighs 6 blocks of the demo's 384 channels), minimising the
// cost of the most expensive stage (the pipeline's throughput; exact dynamic programme,
// O(S * L^2)). Many splits usually share that bottleneck; among them it takes the one
// with the least sum of squared stage costs (the most even, so an error in the cost model
// moves the bottleneck least), then the earliest boundaries (lexicographically smallest
// `first`: early stages hold the most in-flight micro-batches under 1F1B, so they get the
// fewest blocks), so the result is deterministic. Throws InputError when L < S; `pp`
// (when > 0) only makes that message name the pipeline size and virtual stages per rank.
StagePartition balance_stages(const LayerCosts& costs, int S, int pp = 0);

// An explicit split, e.g. "3,4,4,1": blocks per virtual stage, S entries of >= 1 (the
// last may be 0: the head alone) summing to L. Throws InputError naming what is wrong (`pp` as for balance_stages).
StagePartition parse_stage_layers(const std::string& spec, const LayerCosts& costs, int S,
                                  int pp = 0);

// Per-piece costs from measured seconds per virtual stage (forward + backward of one
// micro-batch) under `part`: a block costs what the stages without an end spend per block
// (all stages' blocks when every stage holds an end: pp = 2, v = 1), and each end what its
// stage spends beyond its blocks (none below zero). With S = 2 both ends share two
// equations with the block: the embeddings' lookup is taken as free (3C FLOPs per token
// against a block's ~72C^2) and the head gets the rest. For balance_stages().
LayerCosts measured_layer_costs(const StagePartition& part, const std::vector<double>& seconds);

// A split as parse_stage_layers() reads it: blocks per virtual stage, "3,4,4,1".
std::string stage_layers_spec(const StagePartition& part);

// One line per virtual stage with pp = p ranks, e.g.
//   "pp rank 0 chunk 0 (virtual stage 0): blocks 0-2 + embeddings, cost 1.23e+09 (34.1%)"
// then "imbalance max/mean = 1.02 (max 1.25e+09, mean 1.23e+09)".
std::string describe(const StagePartition& part, int p);

// The virtual stage holding block `block` (0 <= block < L).
int virtual_stage_of_block(const StagePartition& part, int block);

}  // namespace loom
