// Data parallel equivalence: for dp = world size, every ZeRO stage and accumulation 1 and
// 2, the losses of 10 steps and the final weights match the single-process run with the
// same global batch within fp32 round-off, and the same layout run twice is bitwise equal.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "../train/test_util.h"
#include "comm/process_grid.h"
#include "mpi_test_main.h"
#include "ckpt/checkpoint.h"
#include "train/memory_need.h"
#include "train/trainer.h"

#include <unistd.h>

namespace loom {
namespace {

constexpr int kGlobalRows = 4;  // rows of a global micro-batch (divides dp = 1, 2, 4)
constexpr int kSteps = 10;

struct TrainedRun {
  std::vector<float> losses;
  std::vector<float> weights;
  std::vector<float> grads0;  // the flat gradients after the first step
  size_t g_lo = 0, g_hi = 0;   // the range of grads0 this rank holds (ZeRO 2/3: its shard)
};

TrainedRun train(RunConfig cfg, const ProcessGrid& grid) {
  Trainer tr(cfg, grid);
  TrainedRun r;
  for (int s = 0; s < kSteps; ++s) {
    r.losses.push_back(tr.train_step().loss);
    if (s == 0) {
      auto g = tr.model().grads();
      r.grads0.assign(g.begin(), g.begin() + flat_size(tr.model().params()));
      const DataParallel& d = tr.data_parallel();
      r.g_lo = d.zero_stage() >= 2 ? d.shard_begin() : 0;
      r.g_hi = std::min(r.grads0.size(), d.zero_stage() >= 2 ? d.shard_end() : r.grads0.size());
    }
  }
  tr.data_parallel().materialize_all();  // ZeRO-3 keeps only a shard resident
  auto w = tr.model().weights();
  r.weights.assign(w.begin(), w.begin() + flat_size(tr.model().params()));
  return r;
}

RunConfig config(int dp, int zero, int accum) {
  // Every rank writes the same deterministic shards into its own directory.
  RunConfig cfg = test::tiny_config(test::scratch_dir("dp"));
  cfg.train.micro_batch = kGlobalRows / dp;
  cfg.train.grad_accum = accum;
  cfg.parallel.dp = dp;
  cfg.parallel.zero = zero;
  cfg.parallel.bucket_mb = 0.004;  // ~1000 floats: many buckets even for the tiny model
  // As in hybrid_test.cpp: AdamW turns a gradient round-off d near g = 0 into a weight
  // error lr * d / eps, 3e4 * d at eps = 1e-8 (which the kernels' summation order alone
  // pushes past 1e-5 in ten steps); eps = 1e-6 keeps the weights a test of the parallel
  // maths, and the first step's gradients are compared directly.
  cfg.train.eps = 1e-6;
  return cfg;
}

class DataParallelEquivalence : public ::testing::TestWithParam<std::tuple<int, int>> {};

TEST_P(DataParallelEquivalence, MatchesSingleProcess) {
  const auto [zero, accum] = GetParam();
  const int dp = test::mpi().world_size();
  const ProcessGrid single = ProcessGrid::single();
  const TrainedRun ref = train(config(1, 0, accum), single);

  const ProcessGrid grid =
      ProcessGrid::create(test::mpi().world(), GridShape{.pp = 1, .dp = dp, .tp = 1});
  const TrainedRun a = train(config(dp, zero, accum), grid);
  const TrainedRun b = train(config(dp, zero, accum), grid);

  double worst_loss = 0, worst_weight = 0, max_weight = 0, worst_grad = 0, max_grad = 0;
  for (size_t i = 0; i < ref.grads0.size(); ++i) {
    max_grad = std::max(max_grad, double(std::abs(ref.grads0[i])));
    if (i >= a.g_lo && i < a.g_hi)
      worst_grad = std::max(worst_grad, double(std::abs(a.grads0[i] - ref.grads0[i])));
  }
  worst_grad /= max_grad;
  for (int s = 0; s < kSteps; ++s)
    worst_loss = std::max(worst_loss, double(std::abs(a.losses[s] - ref.losses[s])) / ref.losses[s]);
  for (size_t i = 0; i < ref.weights.size(); ++i) {
    worst_weight = std::max(worst_weight, double(std::abs(a.weights[i] - ref.weights[i])));
    max_weight = std::max(max_weight, double(std::abs(ref.weights[i])));
  }
  if (grid.rank() == 0)
    std::printf("dp=%d zero=%d accum=%d: worst relative loss diff %.3g, first-step gradient "
                "%.3g of max |g|, worst |w - w_ref| %.3g (max |w| %.3g)\n", dp, zero, accum,
                worst_loss, worst_grad, worst_weight, max_weight);
  EXPECT_LE(worst_loss, 1e-5);
  EXPECT_LE(worst_grad, 1e-5);
  EXPECT_LE(worst_weight, 1e-5);
  EXPECT_EQ(a.losses, b.losses) << "the same layout twice must be bitwise identical";
  EXPECT_EQ(std::memcmp(a.weights.data(), b.weights.data(), a.weights.size() * 4), 0);
  // Every rank ends with the same weights.
  std::vector<float> w0 = a.weights;
  grid.world().broadcast(w0.data(), w0.size(), 0);
  EXPECT_EQ(std::memcmp(w0.data(), a.weights.data(), a.weights.size() * 4), 0);
}

INSTANTIATE_TEST_SUITE_P(ZeroAndAccum, DataParallelEquivalence,
                         ::testing::Combine(::testing::Values(0, 1, 2, 3), ::testing::Values(1, 2)));

TEST(DataParallel, BucketsCoverTheBufferInReverseLayerOrder) {
  const ProcessGrid grid = ProcessGrid::create(
      test::mpi().world(), GridShape{.pp = 1, .dp = test::mpi().world_size(), .tp = 1});
  Trainer tr(config(grid.shape().dp, 0, 1), grid);
  const auto& buckets = tr.data_parallel().buckets();
  ASSERT_GT(buckets.size(), 2u);
  EXPECT_EQ(buckets.front().end, tr.model().grads().size());
  EXPECT_EQ(buckets.back().begin, 0u);
  for (size_t i = 1; i < buckets.size(); ++i) {
    EXPECT_EQ(buckets[i].end, buckets[i - 1].begin);
    EXPECT_LE(buckets[i].ready_layer, buckets[i - 1].ready_layer);
  }
}

}  // namespace
}  // namespace loom

namespace loom {
namespace {


TEST(DataParallel, ResumeUnderZeroIsBitwiseIdentical) {
  const int dp = test::mpi().world_size();
  const ProcessGrid grid =
      ProcessGrid::create(test::mpi().world(), GridShape{.pp = 1, .dp = dp, .tp = 1});
  // bf16: at ZeRO-1/2 the masters outside the shard hold rounded values between steps;
  // the checkpoint must carry the exact ones.
  for (const char* precision : {"fp32", "bf16"})
  for (int zero : {1, 2, 3}) {
    RunConfig cfg = config(dp, zero, 2);
    cfg.train.precision = precision;
    cfg.run.dir = (test::shared_dir(grid, "dp_resume") / "run").string();
    Trainer whole(cfg, grid);
    std::vector<float> expected;
    for (int s = 0; s < 6; ++s) expected.push_back(whole.train_step().loss);
    Trainer first(cfg, grid);
    std::vector<float> got;
    for (int s = 0; s < 3; ++s) got.push_back(first.train_step().loss);
    first.save_checkpoint();
    Trainer second(cfg, grid);
    second.resume(resolve_checkpoint(cfg.run.dir));
    for (int s = 0; s < 3; ++s) got.push_back(second.train_step().loss);
    EXPECT_EQ(got, expected) << precision << " zero " << zero;
    second.data_parallel().materialize_all();
    whole.data_parallel().materialize_all();
    EXPECT_EQ(std::memcmp(second.model().weights().data(), whole.model().weights().data(),
                          whole.model().weights().size_bytes()), 0)
        << precision << " zero " << zero;
  }
}

}  // namespace
}  // namespace loom

namespace loom {
namespace {

TEST(DataParallel, ZeroThreeKeepsOnlyTheShardResident) {
  const int dp = test::mpi().world_size();
  const ProcessGrid grid =
      ProcessGrid::create(test::mpi().world(), GridShape{.pp = 1, .dp = dp, .tp = 1});
  Trainer tr(config(dp, 3, 1), grid);
  tr.train_step();
  const DataParallel& d = tr.data_parallel();
  auto w = tr.model().weights();
  // Outside the shard, whole pages were given back: they read as zero until gathered.
  // (Pages straddling two layers stay resident, so count pages, not elements.)
  const uintptr_t page = 4096;
  const uintptr_t base = uintptr_t(w.data());
  size_t outside = 0, released = 0;
  for (uintptr_t a = (base + page - 1) / page * page; a + page <= base + w.size_bytes(); a += page) {
    const size_t lo = (a - base) / sizeof(float), hi = lo + page / sizeof(float);
    if (lo < d.shard_end() && hi > d.shard_begin()) continue;
    ++outside;
    bool zero = true;
    for (size_t j = lo; j < hi; ++j) zero = zero && w[j] == 0.0f;
    released += zero;
  }
  if (grid.rank() == 0)
    std::printf("zero 3, dp %d: %zu of %zu pages outside the shard given back\n", dp, released,
                outside);
  EXPECT_GT(outside, 0u);
  EXPECT_GT(released * 10, outside * 6) << released << " of " << outside
                                        << " pages outside the shard were given back";
  // Inside the shard they are the real values.
  size_t shard_nonzero = 0;
  for (size_t i = d.shard_begin(); i < d.shard_end(); ++i) shard_nonzero += w[i] != 0.0f;
  EXPECT_GT(shard_nonzero, (d.shard_end() - d.shard_begin()) / 2);
}

}  // namespace
}  // namespace loom

namespace loom {
namespace {

// What the memory guard and the start-up line price for a ZeRO-3 rank's weights (its shard,
// the embeddings and one gathered block, their compute-precision copies) bounds what is
// resident: sampled at every unit's release, when that unit is gathered (and cast), over
// two steps, the first included; and the bound is not loose. Residency is counted in whole
// pages: each held range (the shard, the embeddings, ln_f, a block) may add a partial page
// at each end, in the masters and in the compute copy.
TEST(DataParallel, ZeroThreeResidentWeightsStayWithinTheEstimate) {
  const int dp = test::mpi().world_size();
  const ProcessGrid grid =
      ProcessGrid::create(test::mpi().world(), GridShape{.pp = 1, .dp = dp, .tp = 1});
  for (const char* precision : {"fp32", "bf16"}) {
    RunConfig cfg = config(dp, 3, 1);
    cfg.model.n_layer = 4;  // blocks of 198k floats
    cfg.model.n_embd = 128;
    cfg.model.n_head = 4;
    cfg.train.precision = precision;
    Trainer tr(cfg, grid);
    Gpt& model = tr.model();
    const DataParallel& d = tr.data_parallel();
    size_t peak = 0;
    auto [acquire, release] = model.unit_hooks();
    model.set_unit_hooks(acquire, [&, release = release](int unit) {
      peak = std::max(peak, d.resident_weight_bytes() + model.resident_compute_copy_bytes());
      release(unit);
    });
    for (int s = 0; s < 2; ++s) tr.train_step();
    const double predicted = estimate_rank_memory(cfg).weights;
    if (grid.rank() == 0)
      std::printf("zero 3, dp %d, %s: resident weights at most %zu B, predicted %.0f B\n", dp,
                  precision, peak, predicted);
    const double edges = 4 * 2 * 2 * 4096.0;
    EXPECT_LE(double(peak), predicted + edges) << precision;
    EXPECT_GE(double(peak), 0.7 * predicted) << precision;
  }
}

TEST(DataParallel, ZeroTwoAndThreeKeepOnlyShardGradientsResident) {
  const int dp = test::mpi().world_size();
  const ProcessGrid grid =
      ProcessGrid::create(test::mpi().world(), GridShape{.pp = 1, .dp = dp, .tp = 1});
  for (int zero : {2, 3}) {
    Trainer tr(config(dp, zero, 2), grid);
    tr.train_step();
    const DataParallel& d = tr.data_parallel();
    const size_t shard_bytes = (d.shard_end() - d.shard_begin()) * sizeof(float);
    const size_t full_bytes = tr.model().grads().size_bytes();
    const size_t resident = d.resident_grad_bytes();
    if (grid.rank() == 0)
      std::printf("zero %d, dp %d: gradient pages resident after a step %zu B (shard %zu B, "
                  "full %zu B)\n", zero, dp, resident, shard_bytes, full_bytes);
    // The shard, plus at most a page at each shard edge and the buffer's ends.
    EXPECT_LE(resident, shard_bytes + 4 * 4096) << "zero " << zero;
    EXPECT_LT(resident, full_bytes) << "zero " << zero;
  }
}

}  // namespace
}  // namespace loom

namespace loom {
namespace {

// Weight bytes a rank receives in one ZeRO-1/2 gather at a low precision: 2 per element of
// the compute-only weights outside its shard, 4 per element of the other parameters.
size_t expected_gather_bytes(Trainer& tr) {
  const DataParallel& d = tr.data_parallel();
  auto outside = [&](size_t a, size_t b) {
    const size_t lo = std::max(a, d.shard_begin()), hi = std::min(b, d.shard_end());
    return (b - a) - (hi > lo ? hi - lo : 0);
  };
  const auto low = tr.model().compute_only_ranges();
  size_t bytes = 0;
  for (const ParamSpec& p : tr.model().params()) {
    const size_t a = p.offset, b = p.offset + p.numel;
    const bool is_low = std::find(low.begin(), low.end(), std::pair{a, b}) != low.end();
    bytes += outside(a, b) * (is_low ? 2 : 4);
  }
  return bytes;
}

// At a low precision ZeRO 1-3 gather the blocks' linear weights as 16-bit words: the same
// losses and (materialised) weights, bit for bit, as gathering them in fp32, in fewer bytes.
TEST(DataParallel, LowPrecisionGathersAreExactInFewerBytes) {
  const int dp = test::mpi().world_size();
  if (dp < 2) GTEST_FAIL() << "run with at least 2 ranks";
  const ProcessGrid grid =
      ProcessGrid::create(test::mpi().world(), GridShape{.pp = 1, .dp = dp, .tp = 1});
  for (const char* precision : {"bf16", "fp16"})
    for (int zero : {1, 2, 3}) {
      RunConfig cfg = config(dp, zero, 2);
      cfg.train.precision = precision;
      Trainer fp32(cfg, grid), low(cfg, grid);
      fp32.data_parallel().set_weight_gather(DType::kF32);
      ASSERT_EQ(low.data_parallel().weight_gather(), parse_dtype(precision));
      std::vector<float> want, got;
      size_t fp32_bytes = 0, low_bytes = 0;
      for (int s = 0; s < 5; ++s) {
        want.push_back(fp32.train_step().loss);
        got.push_back(low.train_step().loss);
        fp32_bytes += fp32.data_parallel().gathered_bytes();
        low_bytes += low.data_parallel().gathered_bytes();
        if (zero < 3) {
          EXPECT_EQ(low.data_parallel().gathered_bytes(), expected_gather_bytes(low))
              << precision << " zero " << zero;
        }
      }
      EXPECT_EQ(got, want) << precision << " zero " << zero;
      fp32.data_parallel().materialize_all();
      low.data_parallel().materialize_all();
      EXPECT_EQ(std::memcmp(low.model().weights().data(), fp32.model().weights().data(),
                            fp32.model().weights().size_bytes()), 0)
          << precision << " zero " << zero;
      EXPECT_LT(low_bytes, fp32_bytes) << precision << " zero " << zero;
      if (grid.rank() == 0)
        std::printf("%s zero %d, dp %d: weights gathered in 5 steps %zu B (fp32 gathers %zu "
                    "B, %.2fx)\n", precision, zero, dp, low_bytes, fp32_bytes,
                    double(low_bytes) / double(fp32_bytes));
    }
}

}  // namespace
}  // namespace loom
