// The memory a training run needs on each rank, from its config alone, before anything is
// allocated: weights, gradients and AdamW moments as the start-up memory line counts them
// (tensor-parallel slices, the worst pipeline stage, ZeRO sharding), plus the activation
// arena the model reserves for its in-flight micro-batches. A run that cannot fit is refused
// with its need, the limit, and the largest settings that would fit, instead of being
// OOM-killed printing nothing.
#pragma once

#include <string>

#include "core/memory.h"
#include "train/run_config.h"

namespace loom {

struct MemoryNeed {
  double weights = 0, grads = 0, optimizer = 0, activations = 0, snapshot = 0;  // bytes
  double total() const { return weights + grads + optimizer + activations + snapshot; }
  std::string breakdown() const;  // "weights 1.0 GiB, gradients ..."
};

// Per rank, for the rank with the most blocks (the first stage, which also holds the
// embeddings, when the blocks do not divide evenly). Doubles, so absurd sizes (n_layer
// 2^31, n_embd 2^30) are computed without overflow.
MemoryNeed estimate_rank_memory(const RunConfig& cfg);

// Throws InputError (exit 2) when estimate_rank_memory(cfg) exceeds `limit`, naming both and
// the largest n_layer, n_embd, micro_batch and seq_len that would fit, each with the other
// settings unchanged.
void require_memory_fits(const RunConfig& cfg, const MemoryLimit& limit);

}  // namespace loom
