// TokenLoader: llm.c's batch order, wraparound, and row slices of the same global batch.
#include <gtest/gtest.h>

#include <numeric>

#include "core/check.h"
#include "data/loader.h"
#include "data/shard.h"
#include "test_util.h"

namespace loom {
namespace {

std::vector<uint16_t> iota_tokens(size_t n) {
  std::vector<uint16_t> tokens(n);
  std::iota(tokens.begin(), tokens.end(), uint16_t(0));
  return tokens;
}

struct Batch {
  std::vector<int32_t> inputs, targets;
};

Batch load(const TokenLoader& loader, uint64_t k) {
  size_t n = size_t(loader.batch_size()) * size_t(loader.seq_len());
  Batch b{std::vector<int32_t>(n), std::vector<int32_t>(n)};
  loader.load(k, b.inputs.data(), b.targets.data());
  return b;
}

TEST(TokenLoader, BatchesFollowLlmcOrder) {
  const int B = 2, T = 4;
  // 28 tokens: nb = (28 - 1) / 8 = 3 whole batches; the 3-token tail is never read.
  TokenLoader loader(iota_tokens(28), B, T, "iota");
  EXPECT_EQ(loader.num_tokens(), 28u);
  EXPECT_EQ(loader.batches_per_epoch(), 3u);
  for (uint64_t k = 0; k < 7; ++k) {
    const size_t off = size_t(k % 3) * B * T;
    EXPECT_EQ(loader.offset(k), off);
    Batch b = load(loader, k);
    for (int i = 0; i < B * T; ++i) {
      ASSERT_EQ(b.inputs[size_t(i)], int32_t(off + size_t(i))) << "k=" << k << " i=" << i;
      ASSERT_EQ(b.targets[size_t(i)], int32_t(off + size_t(i) + 1)) << "k=" << k << " i=" << i;
    }
  }
}

TEST(TokenLoader, LastWholeBatchMayUseTheFinalToken) {
  // B*T+1 tokens make exactly one batch whose last target is the last token.
  TokenLoader loader(iota_tokens(9), 2, 4, "nine");
  EXPECT_EQ(loader.batches_per_epoch(), 1u);
  Batch b = load(loader, 5);
  EXPECT_EQ(b.inputs, (std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6, 7}));
  EXPECT_EQ(b.targets, (std::vector<int32_t>{1, 2, 3, 4, 5, 6, 7, 8}));
}

TEST(TokenLoader, RowSlicesAreRowsOfTheFullBatch) {
  const int B = 4, T = 5;
  TokenLoader loader(iota_tokens(1000), B, T, "iota");
  for (uint64_t k : {uint64_t(0), uint64_t(3), uint64_t(49), uint64_t(50), uint64_t(123)}) {
    Batch full = load(loader, k);
    for (int begin = 0; begin < B; ++begin) {
      for (int count = 0; begin + count <= B; ++count) {
        std::vector<int32_t> in(size_t(count * T), -1), tg(size_t(count * T), -1);
        loader.load_rows(k, begin, count, in.data(), tg.data());
        for (int i = 0; i < count * T; ++i) {
          ASSERT_EQ(in[size_t(i)], full.inputs[size_t(begin * T + i)]);
          ASSERT_EQ(tg[size_t(i)], full.targets[size_t(begin * T + i)]);
        }
      }
    }
  }
  std::vector<int32_t> in(10), tg(10);
  EXPECT_THROW(loader.load_rows(0, 3, 2, in.data(), tg.data()), Error);
}

TEST(TokenLoader, TooFewTokensIsAnInputError) {
  try {
    TokenLoader(iota_tokens(8), 2, 4, "'tiny.bin'");
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("shard 'tiny.bin' has 8 tokens, fewer than B*T+1"), std::string::npos)
        << msg;
    EXPECT_NE(msg.find("= 9"), std::string::npos) << msg;
  }
  EXPECT_THROW(TokenLoader(iota_tokens(100), 0, 4, "x"), InputError);
}

TEST(TokenLoader, ReadsAShardFile) {
  testing::TempDir tmp("loader_file");
  auto path = tmp.path() / "train_000000.bin";
  write_shard(path, iota_tokens(100));
  TokenLoader loader(path, 3, 8);
  EXPECT_EQ(loader.num_tokens(), 100u);
  EXPECT_EQ(loader.batches_per_epoch(), 4u);  // (100 - 1) / 24
  Batch b = load(loader, 1);
  EXPECT_EQ(b.inputs.front(), 24);
  EXPECT_EQ(b.targets.back(), 48);

  write_shard(path, iota_tokens(10));
  try {
    TokenLoader small(path, 3, 8);
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(path.string()), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace loom
