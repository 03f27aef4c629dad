// Helpers shared by the train tests: temporary directories, tiny configs, token shards.
#pragma once


#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "core/philox.h"
#include "data/shard.h"
#include "scratch.h"
#include "train/run_config.h"

namespace loom::test {

// n deterministic pseudo-random tokens in [0, V).
inline std::vector<uint16_t> random_tokens(size_t n, int V, uint64_t seed) {
  Philox rng(seed, 7);
  std::vector<uint16_t> t(n);
  for (size_t i = 0; i < n; ++i) t[i] = uint16_t(rng.block(i)[0] % uint32_t(V));
  return t;
}

// A tiny GPT with awkward sizes: L=2, NH=2, V=97 (padded to 128), T=13 (not a power of 2).
inline RunConfig tiny_config(const std::filesystem::path& dir) {
  const std::vector<uint16_t> tokens = random_tokens(3000, 97, 11);
  write_shard(dir / "train.bin", tokens);
  write_shard(dir / "val.bin", random_tokens(500, 97, 12));
  const std::string toml = R"(
[model]
n_layer = 2
n_head = 2
n_embd = 32
block_size = 16
vocab_size = 97
[train]
micro_batch = 3
seq_len = 13
grad_accum = 2
steps = 10
lr = 3e-3
min_lr = 3e-4
warmup_steps = 2
weight_decay = 0.1
grad_clip = 1.0
seed = 1234
)";
  return parse_run_config(toml, "tiny.toml",
                          {"data.train=" + (dir / "train.bin").string(),
                           "data.val=" + (dir / "val.bin").string(),
                           "run.dir=" + (dir / "run").string()});
}

}  // namespace loom::test
