// Determinism: the same seed twice gives bitwise identical losses and weights; stopping at
// step k and resuming from the checkpoint continues bitwise as the uninterrupted run.
#include <gtest/gtest.h>

#include <cstring>

#include "ckpt/checkpoint.h"
#include "test_util.h"
#include "train/trainer.h"

namespace loom {
namespace {

std::vector<float> run_steps(Trainer& tr, int n) {
  std::vector<float> losses;
  for (int i = 0; i < n; ++i) losses.push_back(tr.train_step().loss);
  return losses;
}

bool bitwise_equal(std::span<const float> a, std::span<const float> b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size_bytes()) == 0;
}

TEST(Determinism, SameSeedTwiceIsBitwiseIdentical) {
  const RunConfig cfg = test::tiny_config(test::scratch_dir("det"));
  const ProcessGrid grid = ProcessGrid::single();
  Trainer a(cfg, grid), b(cfg, grid);
  const std::vector<float> la = run_steps(a, 6), lb = run_steps(b, 6);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(la[i], lb[i]) << "step " << i;
  EXPECT_TRUE(bitwise_equal(a.model().weights(), b.model().weights()));
}

TEST(Determinism, ResumeFromCheckpointIsBitwiseIdentical) {
  for (bool shuffle : {false, true}) {
    RunConfig cfg = test::tiny_config(test::scratch_dir(shuffle ? "resume_s" : "resume"));
    cfg.train.shuffle = shuffle;
    const ProcessGrid grid = ProcessGrid::single();
    Trainer whole(cfg, grid);
    const std::vector<float> expected = run_steps(whole, 8);

    Trainer first(cfg, grid);
    std::vector<float> got = run_steps(first, 3);
    const std::filesystem::path ckpt = first.save_checkpoint();
    Trainer second(cfg, grid);
    second.resume(resolve_checkpoint(cfg.run.dir));
    EXPECT_EQ(second.next_step(), 3);
    EXPECT_EQ(resolve_checkpoint(cfg.run.dir), ckpt);
    for (float l : run_steps(second, 5)) got.push_back(l);
    for (int i = 0; i < 8; ++i)
      EXPECT_EQ(got[i], expected[i]) << "step " << i << (shuffle ? " (shuffled)" : "");
    EXPECT_TRUE(bitwise_equal(second.model().weights(), whole.model().weights()));
    EXPECT_TRUE(bitwise_equal(second.optimizer().m(), whole.optimizer().m()));
    EXPECT_TRUE(bitwise_equal(second.optimizer().v(), whole.optimizer().v()));
  }
}

TEST(Determinism, ShuffledOrderIsReproducibleAndDiffersFromSequential) {
  RunConfig cfg = test::tiny_config(test::scratch_dir("shuffle"));
  cfg.train.shuffle = true;
  cfg.train.grad_accum = 1;
  const ProcessGrid grid = ProcessGrid::single();
  Trainer a(cfg, grid), b(cfg, grid);
  // Losses differ from the sequential order but are reproducible.
  const std::vector<float> la = run_steps(a, 4), lb = run_steps(b, 4);
  EXPECT_EQ(la, lb);
  cfg.train.shuffle = false;
  Trainer sequential(cfg, grid);
  EXPECT_NE(run_steps(sequential, 4), la);
}

}  // namespace
}  // namespace loom
