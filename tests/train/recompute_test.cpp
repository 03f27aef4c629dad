// Activation recomputation (issue 13, item 4): selective and full re-run the same
// deterministic kernels on the same inputs, so losses, gradients, weights and AdamW moments
// are bitwise those of keeping everything; and they hold less, as the table predicts.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <cmath>
#include <cstring>

#include "core/check.h"
#include "model/activations.h"
#include "test_util.h"
#include "train/memory_need.h"
#include "train/trainer.h"

namespace loom {
namespace {

struct Trained {
  std::vector<float> losses, grads0, weights, m, v;
  size_t arena = 0;
};

template <class S>
std::vector<float> copy(const S& s) {
  return std::vector<float>(s.begin(), s.end());
}

Trained run(RunConfig cfg, const std::string& recompute, int steps) {
  cfg.train.recompute = recompute;
  const ProcessGrid grid = ProcessGrid::single();
  Trainer tr(cfg, grid);
  Trained r;
  for (int s = 0; s < steps; ++s) {
    r.losses.push_back(tr.train_step().loss);
    if (s == 0) r.grads0 = copy(tr.model().grads());
  }
  r.weights = copy(tr.model().weights());
  r.m = copy(tr.optimizer().m());
  r.v = copy(tr.optimizer().v());
  r.arena = tr.model().arena_bytes();
  return r;
}

bool bitwise(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

void expect_bitwise(const Trained& got, const Trained& want, const std::string& what) {
  ASSERT_EQ(got.losses.size(), want.losses.size());
  for (size_t s = 0; s < want.losses.size(); ++s)
    EXPECT_EQ(got.losses[s], want.losses[s]) << what << " step " << s;
  EXPECT_TRUE(bitwise(got.grads0, want.grads0)) << what << ": first-step gradients differ";
  EXPECT_TRUE(bitwise(got.weights, want.weights)) << what << ": weights differ";
  EXPECT_TRUE(bitwise(got.m, want.m) && bitwise(got.v, want.v)) << what << ": moments differ";
}

TEST(Recompute, SelectiveAndFullAreBitwiseNone) {
  // T = 13 (one attention row block) and T = 150 (two of the materialized kernel's 64-row
  // blocks and two of flash's 128, the last ragged).
  // In every precision: the recomputed compute-precision copies are rounded alike.
  for (const char* precision : {"fp32", "bf16", "fp16"})
  for (const char* attention : {"flash", "materialized"})
  for (int T : {13, 150}) {
    RunConfig cfg = test::tiny_config(test::scratch_dir("recompute"));
    cfg.model.block_size = 160;
    cfg.train.seq_len = T;
    cfg.train.micro_batch = 2;
    cfg.train.attention = attention;
    cfg.train.precision = precision;
    const Trained none = run(cfg, "none", 4);
    for (const char* policy : {"selective", "full"}) {
      const Trained got = run(cfg, policy, 4);
      expect_bitwise(got, none, fmt::format("{} {} {} T={}", precision, policy, attention, T));
      EXPECT_LT(got.arena, none.arena) << policy << " keeps no less than none";
    }
  }
}

// The head computes logits, loss and their gradients a block of rows at a time, so no
// (N, Vp) logits wait for backward: any row block gives the losses and gradients of one
// block of all N rows within fp32 round-off (wte's gradient sums the blocks in order); in
// bf16 too, where d loss/d logits goes through the head's own stage.
void expect_head_blocks_match_all_rows(const char* precision) {
  RunConfig cfg = test::tiny_config(test::scratch_dir("head_rows"));
  cfg.train.precision = precision;
  cfg.model.block_size = 160;
  cfg.train.seq_len = 150;
  cfg.train.micro_batch = 2;  // N = 300 rows
  cfg.train.grad_accum = 1;
  auto run_with = [&](int rows) {
    const ProcessGrid grid = ProcessGrid::single();
    Trainer tr(cfg, grid);
    tr.model().set_head_rows(rows);
    tr.model().reserve(cfg.train.micro_batch, cfg.train.seq_len, 1);
    Trained r;
    for (int s = 0; s < 3; ++s) {
      r.losses.push_back(tr.train_step().loss);
      if (s == 0) r.grads0 = copy(tr.model().grads());
    }
    return r;
  };
  const Trained whole = run_with(1 << 20);
  for (int rows : {1, 7, 128, 299}) {
    const Trained got = run_with(rows);
    for (size_t s = 0; s < whole.losses.size(); ++s)
      EXPECT_NEAR(got.losses[s], whole.losses[s], 1e-6 * whole.losses[s])
          << precision << ' ' << rows << " rows";
    double worst = 0, top = 0;
    for (size_t i = 0; i < whole.grads0.size(); ++i) {
      worst = std::max(worst, double(std::abs(got.grads0[i] - whole.grads0[i])));
      top = std::max(top, double(std::abs(whole.grads0[i])));
    }
    EXPECT_LE(worst, 1e-5 * top) << precision << ' ' << rows << " rows: first-step gradients";
  }
}

TEST(HeadRowBlocks, AnyBlockMatchesAllRowsAtOnce) { expect_head_blocks_match_all_rows("fp32"); }
TEST(HeadRowBlocks, AnyBlockMatchesAllRowsAtOnceInBf16) {
  expect_head_blocks_match_all_rows("bf16");
}

// What the start-up line and the memory guard predict is what the model allocates.
TEST(Recompute, TheTablePredictsTheArena) {
  RunConfig cfg = test::tiny_config(test::scratch_dir("recompute_mem"));
  cfg.model.n_layer = 4;
  cfg.model.block_size = 80;
  cfg.train.seq_len = 64;
  for (const char* precision : {"fp32", "bf16", "fp16"})
  for (const char* attention : {"flash", "materialized"}) {
  cfg.train.attention = attention;
  cfg.train.precision = precision;
  size_t last = 0;
  for (const char* policy : {"full", "selective", "none"}) {
    cfg.train.recompute = policy;
    const ProcessGrid grid = ProcessGrid::single();
    Trainer tr(cfg, grid);
    const double got = double(tr.model().arena_bytes());
    EXPECT_NEAR(estimate_rank_memory(cfg).activations, got, 0.02 * got)
        << policy << attention << precision;
    EXPECT_GT(tr.model().arena_bytes(), last) << policy << " should hold more than the last";
    last = tr.model().arena_bytes();
  }
  }
}

TEST(Recompute, AnUnknownPolicyIsRejected) {
  RunConfig cfg = test::tiny_config(test::scratch_dir("recompute_bad"));
  cfg.train.recompute = "some";
  try {
    cfg.validate();
    FAIL() << "recompute='some' accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("'none', 'selective' or 'full'"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(parse_recompute("Full"), InputError);
  EXPECT_EQ(parse_recompute("selective"), Recompute::kSelective);
}

}  // namespace
}  // namespace loom
