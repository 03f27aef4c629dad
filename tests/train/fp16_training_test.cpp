// fp16 training with dynamic loss scaling in the trainer (issue 13, item 3): a forced
// overflow skips the step (weights and AdamW moments bitwise untouched, the optimizer's step
// count held back while the training step and the data advance) and halves the scale;
// metrics.jsonl records loss_scale and skipped; checkpoints carry the scale and the
// optimizer step, and resuming continues bitwise.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cstring>
#include <fstream>

#include "ckpt/checkpoint.h"
#include "test_util.h"
#include "train/trainer.h"

namespace loom {
namespace {

template <class S>
std::vector<float> copy(const S& s) {
  return std::vector<float>(s.begin(), s.end());
}

bool bitwise(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

RunConfig fp16_config(const std::string& tag) {
  RunConfig cfg = test::tiny_config(test::scratch_dir(tag));
  cfg.train.precision = "fp16";
  return cfg;
}

TEST(Fp16Training, AnOverflowSkipsTheStepAndBacksOff) {
  const RunConfig cfg = fp16_config("fp16_skip");
  const ProcessGrid grid = ProcessGrid::single();
  Trainer tr(cfg, grid);
  ASSERT_TRUE(tr.loss_scaler().enabled());
  EXPECT_EQ(tr.loss_scaler().scale(), 65536.0f);
  const StepStats first = tr.train_step();
  EXPECT_FALSE(first.skipped);
  EXPECT_EQ(first.loss_scale, 65536.0f);
  EXPECT_EQ(tr.optimizer_steps(), 1);

  // 2^100 times the loss gradient is far past fp16's 65504: the rounded GEMM operands
  // overflow to inf.
  tr.loss_scaler().restore({0x1p100f, 7});
  const std::vector<float> w = copy(tr.model().weights()), m = copy(tr.optimizer().m()),
                           v = copy(tr.optimizer().v());
  const StepStats over = tr.train_step();
  EXPECT_TRUE(over.skipped);
  EXPECT_EQ(over.loss_scale, 0x1p100f);
  EXPECT_TRUE(std::isfinite(over.loss)) << "the loss is fp32 and stays finite";
  EXPECT_FALSE(std::isfinite(over.grad_norm));
  EXPECT_EQ(tr.loss_scaler().scale(), 0x1p99f) << "backoff x0.5";
  EXPECT_EQ(tr.loss_scaler().state().growth_tracker, 0);
  EXPECT_TRUE(bitwise(copy(tr.model().weights()), w)) << "a skipped step moved the weights";
  EXPECT_TRUE(bitwise(copy(tr.optimizer().m()), m) && bitwise(copy(tr.optimizer().v()), v))
      << "a skipped step moved the moments";
  EXPECT_EQ(tr.optimizer_steps(), 1);
  EXPECT_EQ(tr.next_step(), 2) << "the training step (and the data) advance";

  tr.loss_scaler().restore({65536.0f, 0});
  const StepStats after = tr.train_step();
  EXPECT_FALSE(after.skipped);
  EXPECT_EQ(tr.optimizer_steps(), 2);
  EXPECT_FALSE(bitwise(copy(tr.model().weights()), w));
}

TEST(Fp16Training, MetricsAndCheckpointsCarryTheScale) {
  RunConfig cfg = fp16_config("fp16_ckpt");
  cfg.train.steps = 6;
  const ProcessGrid grid = ProcessGrid::single();
  // Uninterrupted: step 3 (index 2) overflows.
  std::vector<float> want;
  std::vector<float> want_w;
  {
    Trainer tr(cfg, grid);
    for (int s = 0; s < 6; ++s) {
      if (s == 2) tr.loss_scaler().restore({0x1p100f, 0});
      want.push_back(tr.train_step().loss);
    }
    want_w = copy(tr.model().weights());
  }
  std::vector<float> got;
  {
    Trainer tr(cfg, grid);
    for (int s = 0; s < 3; ++s) {
      if (s == 2) tr.loss_scaler().restore({0x1p100f, 0});
      got.push_back(tr.train_step().loss);
    }
    tr.save_checkpoint();
  }
  const std::filesystem::path ckpt = resolve_checkpoint(cfg.run.dir);
  const CheckpointState st = read_checkpoint_manifest(ckpt);
  EXPECT_EQ(st.step, 3);
  EXPECT_EQ(st.optimizer_step, 2);
  EXPECT_EQ(st.loss_scale, 0x1p99f);
  EXPECT_EQ(st.loss_scale_growth_tracker, 0);
  Trainer resumed(cfg, grid);
  resumed.resume(ckpt);
  EXPECT_EQ(resumed.optimizer_steps(), 2);
  EXPECT_EQ(resumed.loss_scaler().scale(), 0x1p99f);
  // 2^99 overflows again; the uninterrupted run did the same.
  for (int s = 3; s < 6; ++s) got.push_back(resumed.train_step().loss);
  EXPECT_EQ(got, want);
  EXPECT_TRUE(bitwise(copy(resumed.model().weights()), want_w)) << "resume is not bitwise";

  // The run loop writes the scale and the skip into metrics.jsonl.
  RunConfig run_cfg = fp16_config("fp16_metrics");
  run_cfg.train.steps = 2;
  Trainer runner(run_cfg, grid);
  runner.run(nullptr);
  std::ifstream in(std::filesystem::path(run_cfg.run.dir) / "metrics.jsonl");
  std::string line;
  int lines = 0;
  while (std::getline(in, line)) {
    const nlohmann::json rec = nlohmann::json::parse(line);
    if (!rec.contains("loss")) continue;
    ++lines;
    EXPECT_EQ(rec.at("loss_scale").get<float>(), 65536.0f) << line;
    EXPECT_FALSE(rec.at("skipped").get<bool>()) << line;
  }
  EXPECT_EQ(lines, 2);
}

}  // namespace
}  // namespace loom
