// The dynamic loss scaler's state machine against torch.cuda.amp.GradScaler's update rule.
#include "train/loss_scaler.h"

#include <gtest/gtest.h>

#include "core/check.h"

namespace loom {
namespace {

TEST(LossScaler, BacksOffOnInfAndGrowsAfterTheInterval) {
  LossScaler s(true, {.init_scale = 65536.0f, .growth_interval = 3});
  EXPECT_EQ(s.scale(), 65536.0f);
  EXPECT_FALSE(s.update(true));  // overflow: skip, halve, restart the count
  EXPECT_EQ(s.scale(), 32768.0f);
  EXPECT_TRUE(s.update(false));
  EXPECT_TRUE(s.update(false));
  EXPECT_EQ(s.scale(), 32768.0f);
  EXPECT_EQ(s.state().growth_tracker, 2);
  EXPECT_FALSE(s.update(true));  // an overflow resets the clean-step count
  EXPECT_EQ(s.scale(), 16384.0f);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(s.update(false));
  EXPECT_EQ(s.scale(), 32768.0f);  // the third clean step in a row doubles it
  EXPECT_EQ(s.state().growth_tracker, 0);
}

TEST(LossScaler, TorchDefaults) {
  LossScaler s(true);
  for (int i = 0; i < 1999; ++i) s.update(false);
  EXPECT_EQ(s.scale(), 65536.0f);
  s.update(false);
  EXPECT_EQ(s.scale(), 131072.0f);
}

TEST(LossScaler, DisabledIsScaleOneAndSkipsOnlyNonFiniteSteps) {
  LossScaler s(false);
  EXPECT_EQ(s.scale(), 1.0f);
  EXPECT_TRUE(s.update(false));
  EXPECT_FALSE(s.update(true));
  EXPECT_EQ(s.scale(), 1.0f);
}

TEST(LossScaler, RestoresAStateAndRejectsImpossibleOnes) {
  LossScaler s(true);
  s.restore({1024.0f, 7});
  EXPECT_EQ(s.scale(), 1024.0f);
  EXPECT_EQ(s.state().growth_tracker, 7);
  EXPECT_THROW(s.restore({0.0f, 0}), Error);
  EXPECT_THROW(s.restore({INFINITY, 0}), Error);
  EXPECT_THROW(s.restore({1.0f, 2000}), Error);
}

}  // namespace
}  // namespace loom
