// Tensor-parallel generation (run at tp = world size: 2 and 4) equals the single process:
// the same model built at tp (layout-independent initialisation) or loaded at tp from a
// checkpoint one process saved decodes the same greedy tokens with logits within 1e-5, for
// sequences of different lengths decoded together, in fp32 and bf16.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "ckpt/checkpoint.h"
#include "comm/process_grid.h"
#include "infer/decoder.h"
#include "infer/generate.h"
#include "model/param_spec.h"
#include "mpi_test_main.h"

namespace loom {
namespace {

GptConfig cfg() {
  return GptConfig{.n_layer = 2, .n_head = 4, .n_embd = 32, .block_size = 32, .vocab_size = 97};
}

void init(Gpt& m) {
  init_params(m.params(), 21, m.weights().data());
  for (float& w : m.weights()) w *= 4.0f;  // logits far from uniform
}

struct Greedy {
  std::vector<std::vector<int32_t>> tokens;  // per prompt
  std::vector<float> logits;                 // every step's, every prompt's, in order
};

// Three prompts of different lengths prefilled together, then `steps` greedy tokens each.
Greedy decode(const Gpt& model, const ProcessGrid& grid, DType precision) {
  const int V = model.config().vocab_size, steps = 8;
  const std::vector<std::vector<int32_t>> prompts = {{5, 17, 3}, {40, 2, 9, 9, 81, 6, 1}, {64}};
  Decoder d(model, grid, precision, 3, 32, 16);
  std::vector<DecodeRow> rows;
  for (int s = 0; s < 3; ++s)
    for (size_t i = 0; i < prompts[size_t(s)].size(); ++i)
      rows.push_back({s, int(i), prompts[size_t(s)][i], i + 1 == prompts[size_t(s)].size()});
  Greedy g;
  g.tokens.resize(3);
  std::vector<float> logits;
  for (int step = 0; step < steps; ++step) {
    d.forward(rows, logits);
    g.logits.insert(g.logits.end(), logits.begin(), logits.end());
    rows.clear();
    for (int s = 0; s < 3; ++s) {
      const float* l = logits.data() + size_t(s) * V;
      const int32_t t = int32_t(std::max_element(l, l + V) - l);
      g.tokens[size_t(s)].push_back(t);
      rows.push_back({s, int(prompts[size_t(s)].size()) + step, t, true});
    }
  }
  return g;
}

void expect_same(const Greedy& got, const Greedy& want, const std::string& what) {
  EXPECT_EQ(got.tokens, want.tokens) << what;
  ASSERT_EQ(got.logits.size(), want.logits.size()) << what;
  double worst = 0, top = 1;
  for (size_t i = 0; i < want.logits.size(); ++i) {
    worst = std::max(worst, double(std::abs(got.logits[i] - want.logits[i])));
    top = std::max(top, double(std::abs(want.logits[i])));
  }
  EXPECT_LT(worst / top, 1e-5) << what;
}

ProcessGrid tp_grid() {
  return ProcessGrid::create(test::mpi().world(),
                             GridShape{.pp = 1, .dp = 1, .tp = test::mpi().world_size()});
}

TEST(TensorParallelGeneration, MatchesTheSingleProcess) {
  const ProcessGrid grid = tp_grid(), one = ProcessGrid::single();
  Gpt sharded(cfg(), grid), whole(cfg(), one);
  init(sharded);
  init(whole);
  for (DType p : {DType::kF32, DType::kBF16})
    expect_same(decode(sharded, grid, p), decode(whole, one, p),
                std::string(dtype_name(p)) + " at tp " + std::to_string(grid.shape().tp));
}

TEST(TensorParallelGeneration, ACheckpointSavedByOneProcessLoadsAtAnyTp) {
  const ProcessGrid grid = tp_grid(), one = ProcessGrid::single();
  const std::filesystem::path dir = test::shared_dir(grid, "generate_ckpt");
  Gpt whole(cfg(), one);
  init(whole);
  if (grid.rank() == 0) {
    CheckpointState st;
    st.step = 1;
    st.model = cfg();
    save_checkpoint(dir / "run", whole.params(), whole.weights().data(), nullptr, nullptr, st, 0);
  }
  grid.world().barrier();
  const LoadedModel loaded = load_model(dir / "run", grid);
  expect_same(decode(*loaded.model, grid, DType::kF32), decode(whole, one, DType::kF32),
              "loaded at tp " + std::to_string(grid.shape().tp));
  grid.world().barrier();  // every rank has read the checkpoint before rank 0 removes it
}

}  // namespace
}  // namespace loom
