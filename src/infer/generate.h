// Text generation: autoregressive sampling with temperature and top-k.
// (The KV cache and tensor-parallel inference come with the inference issue; this path
// recomputes the window each token.)
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <vector>

#include "ckpt/checkpoint.h"
#include "comm/process_grid.h"
#include "model/gpt.h"

namespace loom {

struct SampleOptions {
  int max_tokens = 64;
  float temperature = 1.0f;  // 0 = greedy
  int top_k = 0;             // 0 = whole vocabulary
  uint64_t seed = 42;
};

struct LoadedModel {
  std::unique_ptr<Gpt> model;
  CheckpointState state;  // the manifest: step, config the run trained with
};
// Builds a model from a checkpoint (run dir or checkpoint dir) and loads its weights.
LoadedModel load_model(const std::filesystem::path& ckpt, const ProcessGrid& grid);

// Picks the next token from logits (V real entries) given draw `index` of the seeded stream.
int32_t sample_token(const float* logits, int V, const SampleOptions& opt, uint64_t index);

// Appends up to max_tokens sampled tokens to `tokens`, calling on_token after each.
void generate(Gpt& model, std::vector<int32_t>& tokens, const SampleOptions& opt,
              const std::function<void(int32_t)>& on_token);

}  // namespace loom
