// The memory guard: the estimate matches what a model allocates, the limit is the tightest
// reading, and a run that cannot fit is refused naming its need, the limit and settings
// that would fit (issue 11, item 4).
#include "train/memory_need.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "comm/process_grid.h"
#include "core/check.h"
#include "core/dtype.h"
#include "model/gpt.h"

namespace loom {
namespace {

RunConfig small_run() {
  RunConfig c;
  c.model = GptConfig{.n_layer = 3, .n_head = 4, .n_embd = 64, .block_size = 128,
                      .vocab_size = 1000};
  c.train.micro_batch = 3;
  c.train.seq_len = 96;
  c.data.train = "x.bin";
  return c;
}

// Within 2% (padding to 16 floats, the tokens' ints) of what a single-process model holds,
// in every precision (the weights then include the compute-precision copy).
TEST(MemoryNeed, MatchesWhatTheModelAllocates) {
  for (const char* precision : {"fp32", "bf16", "fp16"})
  for (int L : {1, 3}) {
    for (int B : {1, 3}) {
      RunConfig c = small_run();
      c.model.n_layer = L;
      c.train.micro_batch = B;
      c.train.precision = precision;
      const ProcessGrid grid = ProcessGrid::single();
      Gpt model(c.model, grid);
      model.set_precision(parse_dtype(precision));
      model.reserve(B, c.train.seq_len);
      const MemoryNeed need = estimate_rank_memory(c);
      const double masters = 4.0 * double(model.weights().size());
      const double weights = masters + double(model.compute_copy_bytes());
      EXPECT_EQ(model.compute_copy_bytes() == 0, std::string(precision) == "fp32");
      const double acts = double(model.arena_bytes());
      EXPECT_NEAR(need.weights, weights, 0.02 * weights)
          << precision << " L=" << L << " B=" << B;
      EXPECT_NEAR(need.grads, masters, 0.02 * masters);
      EXPECT_NEAR(need.optimizer, 2 * masters, 0.04 * masters);
      EXPECT_NEAR(need.activations, acts, 0.02 * acts) << "L=" << L << " B=" << B;
    }
  }
}

TEST(MemoryNeed, ShardsAsZeroAndTensorParallelDo) {
  RunConfig c = small_run();
  const MemoryNeed one = estimate_rank_memory(c);
  c.parallel.dp = 4;
  c.parallel.zero = 1;
  EXPECT_NEAR(estimate_rank_memory(c).optimizer, one.optimizer / 4, 1e-9 * one.optimizer);
  c.parallel.zero = 2;
  EXPECT_NEAR(estimate_rank_memory(c).grads, one.grads / 4, 1e-9 * one.grads);
  c.parallel = {};
  c.parallel.tp = 2;
  EXPECT_LT(estimate_rank_memory(c).weights, 0.6 * one.weights);
  // Absurd sizes are computed, not overflowed.
  c = small_run();
  c.model.n_embd = 1 << 30;
  c.model.n_head = 2;
  EXPECT_GT(estimate_rank_memory(c).total(), 1e20);
}

TEST(MemoryNeed, TheTightestReadingIsTheLimitAndRanksShareTheHost) {
  MemoryReadings r;
  EXPECT_TRUE(std::isinf(tightest_limit(r, 1).bytes));
  r.mem_available = 8e9;
  r.cgroup_free = 6e9;
  r.cgroup_limit = 7e9;
  MemoryLimit l = tightest_limit(r, 2);
  EXPECT_EQ(l.bytes, 3e9);
  EXPECT_NE(l.why.find("cgroup limit 6.5 GiB with 5.6 GiB free / 2 ranks"), std::string::npos)
      << l.why;
  r.address_space_free = 1e9;  // ulimit -v is per process: not divided
  r.address_space_limit = 2e9;
  l = tightest_limit(r, 2);
  EXPECT_EQ(l.bytes, 1e9);
  EXPECT_NE(l.why.find("ulimit -v"), std::string::npos) << l.why;
  EXPECT_GT(available_memory(1).bytes, 0);
}

TEST(MemoryNeed, RefusesWhatCannotFitNamingSettingsThatWould) {
  RunConfig c = small_run();
  c.model.n_layer = 1000;
  const MemoryNeed need = estimate_rank_memory(c);
  const MemoryLimit limit{need.total() / 10, "a test's limit"};
  std::string msg;
  try {
    require_memory_fits(c, limit);
  } catch (const InputError& e) {
    msg = e.what();
  }
  EXPECT_NE(msg.find("not enough memory: this run needs about " + format_bytes(need.total()) +
                     " per rank"),
            std::string::npos) << msg;
  EXPECT_NE(msg.find(format_bytes(limit.bytes) + " is available (a test's limit)"),
            std::string::npos) << msg;
  // The n_layer it names fits and one more does not.
  const size_t at = msg.find("model.n_layer=");
  ASSERT_NE(at, std::string::npos) << msg;
  const int L = std::stoi(msg.substr(at + 14));
  c.model.n_layer = L;
  EXPECT_LE(estimate_rank_memory(c).total(), limit.bytes);
  c.model.n_layer = L + 1;
  EXPECT_GT(estimate_rank_memory(c).total(), limit.bytes);
  EXPECT_NO_THROW(require_memory_fits(small_run(), limit));
}

TEST(MemoryNeed, LoomMemoryLimitIsAPerRankBound) {
  EXPECT_EQ(parse_size("4G"), 4.0 * (1ull << 30));
  EXPECT_EQ(parse_size("512M"), 512.0 * (1ull << 20));
  EXPECT_EQ(parse_size("1000"), 1000.0);
  for (const char* bad : {"", "x", "-1G", "4Q", "nan", "inf"})
    EXPECT_FALSE(parse_size(bad).has_value()) << bad;
  MemoryReadings r;
  r.mem_available = 8e9;
  r.env_limit = 1e9;
  const MemoryLimit l = tightest_limit(r, 4);  // per rank: not divided
  EXPECT_EQ(l.bytes, 1e9);
  EXPECT_NE(l.why.find("LOOM_MEMORY_LIMIT"), std::string::npos) << l.why;
  setenv("LOOM_MEMORY_LIMIT", "lots", 1);
  EXPECT_THROW(read_memory(), InputError);
  unsetenv("LOOM_MEMORY_LIMIT");
}

TEST(MemoryNeed, FormatsBytes) {
  EXPECT_EQ(format_bytes(512), "512 B");
  EXPECT_EQ(format_bytes(1536), "1.5 KiB");
  EXPECT_EQ(format_bytes(3.0 * (1ull << 40)), "3.0 TiB");
}

}  // namespace
}  // namespace loom
