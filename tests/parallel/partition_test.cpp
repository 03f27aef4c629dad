// Stage partition: the balanced split is the exact optimum (checked against brute force)
// with a deterministic tie-break, moves blocks off an expensive head, and explicit splits
// are validated with messages that say what is wrong.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <string>

#include "core/check.h"
#include "parallel/partition.h"

namespace loom {
namespace {

LayerCosts uniform(int L, double embed = 0, double head = 0) {
  LayerCosts c;
  c.block.assign(L, 1.0);
  c.embed = embed;
  c.head = head;
  return c;
}

std::string input_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e.what();
  }
  return "no InputError";
}

TEST(Partition, UniformBlocksSplitEvenly) {
  for (int S : {1, 2, 3, 4, 6, 12}) {
    const StagePartition part = balance_stages(uniform(12), S);
    ASSERT_EQ(part.stages(), S);
    ASSERT_EQ(part.first.size(), size_t(S + 1));
    for (int s = 0; s < S; ++s) {
      EXPECT_EQ(part.first[s], s * 12 / S) << "S=" << S;
      EXPECT_EQ(part.cost[s], 12.0 / S) << "S=" << S;
    }
    EXPECT_EQ(part.first[S], 12);
  }
}

TEST(Partition, HeavyHeadMovesBlocksOffTheLastStage) {
  const StagePartition part = balance_stages(uniform(8, 0, 2), 4);
  EXPECT_EQ(part.blocks(3), 1);
  EXPECT_EQ(*std::max_element(part.cost.begin(), part.cost.end()), 3.0);
  // Of the splits with bottleneck 3, the most even (sum of squares 4+4+9+9) with the
  // earliest boundaries; (2,3,3) and the head alone ties it, (3,2,2,1) has the bottleneck.
  EXPECT_EQ(part.first, (std::vector<int>{0, 2, 4, 7, 8}));
}

TEST(Partition, TheLastStageMayHoldTheHeadAlone) {
  // A head of 3 blocks: with one block beside it the last stage would cost 4.
  const StagePartition part = balance_stages(uniform(8, 0, 3), 4);
  EXPECT_EQ(part.first, (std::vector<int>{0, 2, 5, 8, 8}));
  EXPECT_EQ(part.blocks(3), 0);
  EXPECT_EQ(part.cost, (std::vector<double>{2, 3, 3, 3}));
  EXPECT_EQ(virtual_stage_of_block(part, 7), 2);
  // A light head keeps its blocks: (1,1,2) is more even than (2,2) and the head alone.
  EXPECT_EQ(balance_stages(uniform(4, 0, 0), 3).first, (std::vector<int>{0, 1, 2, 4}));

  // GPT-2 124M: the lm_head over 50304 columns costs about 4.5 blocks, so at pp 4 it is
  // best alone and the 12 blocks split 4,4,4 (it was 3,4,4,1 + head when every stage
  // needed a block: a bottleneck of about 5.5 blocks instead of 4.5).
  GptConfig gpt2;
  const LayerCosts costs = model_layer_costs(gpt2, 1024);
  EXPECT_GT(costs.head, 4 * costs.block[0]);
  const StagePartition p4 = balance_stages(costs, 4);
  EXPECT_EQ(p4.first, (std::vector<int>{0, 4, 8, 12, 12}));
  const double worst = *std::max_element(p4.cost.begin(), p4.cost.end());
  EXPECT_EQ(worst, costs.head);
  EXPECT_NE(describe(p4, 4).find("pp rank 3 chunk 0 (virtual stage 3): no blocks + head"),
            std::string::npos)
      << describe(p4, 4);
}

// Brute force over every composition of L blocks into S stages, in lexicographic order of
// `first`: the least bottleneck, then the least sum of squares, then the first found.
std::vector<int> brute_force(const LayerCosts& c, int S, double* best) {
  const int L = static_cast<int>(c.block.size());
  std::vector<int> first{0}, best_first;
  *best = 1e300;
  double best_sq = 1e300;
  std::function<void(double, double)> rec = [&](double worst, double sq) {
    const int s = static_cast<int>(first.size()) - 1, i = first.back();
    if (s == S) {
      if (i == L && (worst < *best || (worst == *best && sq < best_sq)))
        *best = worst, best_sq = sq, best_first = first;
      return;
    }
    // Every stage holds a block, except that the last of several may hold the head alone.
    for (int j = i + (s == S - 1 && S > 1 ? 0 : 1); j <= L; ++j) {
      double cost = (s == 0 ? c.embed : 0) + (s == S - 1 ? c.head : 0);
      for (int b = i; b < j; ++b) cost += c.block[b];
      first.push_back(j);
      rec(std::max(worst, cost), sq + cost * cost);
      first.pop_back();
    }
  };
  rec(0, 0);
  return best_first;
}

TEST(Partition, MatchesBruteForce) {
  uint32_t state = 12345;
  auto next = [&](int n) {  // small integers keep every sum exact
    state = state * 1664525u + 1013904223u;
    return double((state >> 16) % n);
  };
  int cases = 0;
  for (int L = 1; L <= 9; ++L)
    for (int S = 1; S <= std::min(L, 5); ++S)
      for (int trial = 0; trial < 6; ++trial) {
        LayerCosts c;
        for (int b = 0; b < L; ++b) c.block.push_back(1 + next(9));
        c.embed = next(4);
        c.head = next(16);
        double best = 0;
        const std::vector<int> expected = brute_force(c, S, &best);
        const StagePartition part = balance_stages(c, S);
        EXPECT_EQ(part.first, expected) << "L=" << L << " S=" << S << " trial " << trial;
        EXPECT_EQ(*std::max_element(part.cost.begin(), part.cost.end()), best);
        ++cases;
      }
  EXPECT_GT(cases, 200);
}

TEST(Partition, TooFewLayersNamesTheShape) {
  EXPECT_EQ(input_error([] { balance_stages(uniform(4), 8, 4); }),
            "n_layer=4 cannot fill 8 virtual stages (pp=4 x virtual-stages=2); need n_layer >= 8");
  EXPECT_NE(input_error([] { balance_stages(uniform(2), 3); }).find("n_layer=2"),
            std::string::npos);
  EXPECT_NE(input_error([] { parse_stage_layers("1,1,1", uniform(2), 3); })
                .find("need n_layer >= 3"),
            std::string::npos);
}

TEST(Partition, ParsesExplicitSplits) {
  LayerCosts c = uniform(12, 0.5, 2);
  const StagePartition part = parse_stage_layers("3,4,4,1", c, 4);
  EXPECT_EQ(part.first, (std::vector<int>{0, 3, 7, 11, 12}));
  EXPECT_EQ(part.cost, (std::vector<double>{3.5, 4, 4, 3}));
  EXPECT_EQ(parse_stage_layers(" 3, 4 ,4,1 ", c, 4).first, part.first);
  EXPECT_EQ(parse_stage_layers("12", c, 1).first, (std::vector<int>{0, 12}));
  const StagePartition alone = parse_stage_layers("6,6,0", c, 3);
  EXPECT_EQ(alone.first, (std::vector<int>{0, 6, 12, 12}));
  EXPECT_EQ(alone.cost, (std::vector<double>{6.5, 6, 2}));
}

TEST(Partition, RejectsBadExplicitSplits) {
  const LayerCosts c = uniform(12);
  struct Bad {
    std::string spec, says;
  };
  for (const Bad& b : {Bad{"3,4,5", "has 3 entries"}, Bad{"3,4,4,2", "sum to 13 blocks"},
                       Bad{"3,0,8,1", "entry 2 is 0, every virtual stage but the last"},
                       Bad{"0,4,8,0", "entry 1 is 0"}, Bad{"3,-1,9,1", "entry 2 is -1"},
                       Bad{"3,x,4,1", "entry 2 ('x') is not an integer"},
                       Bad{"3,,4,1", "entry 2 ('') is not an integer"},
                       Bad{"3,4,4,1.5", "entry 4 ('1.5') is not an integer"},
                       Bad{"", "entry 1 ('') is not an integer"}}) {
    const std::string msg = input_error([&] { parse_stage_layers(b.spec, c, 4, 2); });
    EXPECT_NE(msg.find(b.says), std::string::npos) << "'" << b.spec << "': " << msg;
  }
  EXPECT_NE(input_error([&] { parse_stage_layers("6,6", c, 4, 2); })
                .find("need one per virtual stage: 4 virtual stages (pp=2 x virtual-stages=2)"),
            std::string::npos);
}

TEST(Partition, DescribeNamesRanksChunksAndImbalance) {
  const StagePartition part = parse_stage_layers("3,4,4,1", uniform(12, 0, 3), 4);
  const std::string d = describe(part, 2);
  EXPECT_NE(d.find("pp rank 0 chunk 0 (virtual stage 0): blocks 0-2 + embeddings, cost 3 (20.0%)"),
            std::string::npos) << d;
  EXPECT_NE(d.find("pp rank 1 chunk 0 (virtual stage 1): blocks 3-6, cost 4 (26.7%)"),
            std::string::npos) << d;
  EXPECT_NE(d.find("pp rank 1 chunk 1 (virtual stage 3): block 11 + head, cost 4 (26.7%)"),
            std::string::npos) << d;
  EXPECT_NE(d.find("imbalance max/mean = 1.067 (max 4, mean 3.75)"), std::string::npos) << d;
  EXPECT_THROW(describe(part, 3), Error);
}

TEST(Partition, VirtualStageOfBlock) {
  const StagePartition part = parse_stage_layers("3,4,4,1", uniform(12), 4);
  const std::vector<int> expected{0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3};
  for (int b = 0; b < 12; ++b) EXPECT_EQ(virtual_stage_of_block(part, b), expected[b]) << b;
  EXPECT_THROW(virtual_stage_of_block(part, 12), Error);
  EXPECT_THROW(virtual_stage_of_block(part, -1), Error);
}

TEST(Partition, CostModel) {
  GptConfig cfg;
  cfg.n_layer = 3;
  cfg.n_head = 4;
  cfg.n_embd = 64;
  cfg.block_size = 32;
  cfg.vocab_size = 100;  // Vp = 128
  const LayerCosts c = model_layer_costs(cfg, 32);
  ASSERT_EQ(c.block.size(), 3u);
  EXPECT_EQ(c.block[0], 3.0 * (24 * 64 * 64 + 4 * 32 * 64));
  EXPECT_EQ(c.embed, 3.0 * 64);
  EXPECT_EQ(c.head, 3.0 * 2 * 64 * 128 + 5 * 128);
  EXPECT_THROW(model_layer_costs(cfg, 33), InputError);
  EXPECT_THROW(model_layer_costs(cfg, 0), InputError);
}

TEST(Partition, MeasuredCostsFitBlocksAndEnds) {
  // Four stages of 2, 3, 3, 2 blocks; a block costs 1, the embeddings 0.5, the head 4.
  LayerCosts flops;
  flops.block.assign(10, 1.0);
  const StagePartition four = parse_stage_layers("2,3,3,2", flops, 4);
  LayerCosts c = measured_layer_costs(four, {2.5, 3, 3, 6});
  EXPECT_EQ(c.block, std::vector<double>(10, 1.0));
  EXPECT_DOUBLE_EQ(c.embed, 0.5);
  EXPECT_DOUBLE_EQ(c.head, 4);
  // The head alone (4) beats a block beside it (3,3,3,1 costs 5 on the last stage).
  EXPECT_EQ(stage_layers_spec(balance_stages(c, 4)), "3,3,4,0");
  // Two stages: the embeddings are taken as free, the head gets what is left.
  flops.block.assign(6, 1.0);
  const StagePartition two = parse_stage_layers("5,1", flops, 2);
  c = measured_layer_costs(two, {5, 7});
  EXPECT_DOUBLE_EQ(c.block.front(), 1);
  EXPECT_DOUBLE_EQ(c.embed, 0);
  EXPECT_DOUBLE_EQ(c.head, 6);
  EXPECT_EQ(stage_layers_spec(balance_stages(c, 2)), "6,0");  // 6 and 6, not 5 and 7
  EXPECT_THROW(measured_layer_costs(two, {1, 2, 3}), InputError);
}

}  // namespace
}  // namespace loom
