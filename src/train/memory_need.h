// The memory a training run needs on each rank, from its config alone, before anything is
// allocated: weights, gradients and AdamW moments as the start-up memory line counts them
// (tensor-parallel slices, the worst pipeline stage, ZeRO sharding), plus the activation
// arena the model reserves for its in-flight micro-batches. A run that cannot fit is refused
// with its need, the limit, and the largest settings that would fit, instead of being
// OOM-killed printing nothing.
#pragma once

#include <string>

#include "core/memory.h"
#include "parallel/partition.h"
#include "train/run_config.h"

namespace loom {

struct MemoryNeed {
  double weights = 0, grads = 0, optimizer = 0, activations = 0, snapshot = 0;  // bytes
  double total() const { return weights + grads + optimizer + activations + snapshot; }
  std::string breakdown() const;  // "weights 1.0 GiB, gradients ..."
};

// The trainer's split of cfg's blocks over its virtual stages: the explicit
// [parallel] stage_layers, else the FLOP-balanced split ("auto" is measured at start-up;
// before that the FLOP split stands in for it). Throws InputError as balance_stages does.
StagePartition stage_partition(const RunConfig& cfg);

// Per rank under `part`, for the pipeline rank that needs the most (its blocks over all its
// chunks, the embeddings on the first and the head on the last virtual stage). Doubles, so
// absurd sizes (n_layer 2^31, n_embd 2^30) are computed without overflow.
MemoryNeed estimate_rank_memory(const RunConfig& cfg, const StagePartition& part);
// Parameters of the pipeline rank holding the most under `part` (tp slices; the wte slice
// where the embeddings or the head are).
double most_rank_params(const RunConfig& cfg, const StagePartition& part);
// estimate_rank_memory(cfg, part) under stage_partition(cfg); past 1e8 cells of the balancing table (absurd
// n_layer) an even split, counting the head on the first stage.
MemoryNeed estimate_rank_memory(const RunConfig& cfg);

// Throws InputError (exit 2) when estimate_rank_memory(cfg) exceeds `limit`, naming both and
// the largest n_layer, n_embd, micro_batch and seq_len that would fit, each with the other
// settings unchanged.
void require_memory_fits(const RunConfig& cfg, const MemoryLimit& limit);

}  // namespace loom
