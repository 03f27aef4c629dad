// Hybrid (dp, tp, pp) equivalence: for every factorisation of the world size, every
// pipeline schedule the shape allows and two micro-batch counts, the losses of 10 steps and
// the final weights match the single-process run with the same global batch within fp32
// round-off. Also: sequence parallelism on and off agree, the same layout run twice is
// bitwise equal, and a checkpoint saved by one layout resumes in another.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>

#include "../train/test_util.h"
#include "ckpt/checkpoint.h"
#include "core/check.h"
#include "core/file_io.h"
#include "comm/process_grid.h"
#include "mpi_test_main.h"
#include "train/memory_need.h"
#include "train/trainer.h"

#include <unistd.h>

namespace loom {
namespace {

constexpr int kSteps = 10;
constexpr int kRowsPerDp = 2;   // micro_batch on each dp rank
constexpr double kLossTol = 1e-5;    // relative
constexpr double kWeightTol = 1e-5;  // absolute (max |w| ~ 1)
constexpr double kGradTol = 1e-5;    // max |g - g_ref| / max |g_ref|
constexpr double kLowLossTol = 1e-3;  // relative, bf16 and fp16

struct Case {
  GridShape shape;
  std::string schedule;
  int v = 1, m = 1, zero = 0;
  bool sp = false;
  std::string precision = "fp32";
  std::string stage_layers = "";  // "" = FLOP-balanced
  std::string name() const {
    return fmt::format("dp{} tp{} pp{} {}{} m{} zero{}{}{}{}", shape.dp, shape.tp, shape.pp,
                       schedule, v > 1 ? fmt::format(" v{}", v) : "", m, zero, sp ? " sp" : "",
                       precision == "fp32" ? "" : " " + precision,
                       stage_layers.empty() ? "" : " split " + stage_layers);
  }
};

// The 8 blocks over S - 1 virtual stages and the last holding the head alone: "3,3,2,0".
std::string head_alone(int S) {
  std::string out;
  for (int s = 0; s + 1 < S; ++s) out += fmt::format("{},", 8 / (S - 1) + (s < 8 % (S - 1)));
  return out + "0";
}

// L = 8 blocks, 8 heads (tp up to 8), T = 8, V = 97 (padded to 128).
RunConfig hybrid_config(const std::filesystem::path& dir, int rows, int accum,
                        const std::string& precision = "fp32") {
  RunConfig cfg = test::tiny_config(dir);
  cfg.train.precision = precision;
  cfg.model.n_layer = 8;
  cfg.model.n_head = 8;
  cfg.model.n_embd = 32;
  cfg.train.seq_len = 8;
  cfg.train.micro_batch = rows;
  cfg.train.grad_accum = accum;
  cfg.train.steps = kSteps;
  cfg.parallel.bucket_mb = 0.004;  // several buckets even for the tiny model
  // AdamW moves a weight by lr * g / (|g| + eps): near g = 0 an absolute gradient error d
  // becomes a weight error lr * d / eps. With eps = 1e-8 the ~1e-10 round-off of a
  // near-zero gradient (e.g. a GELU unit that is almost never active) turns into 5e-5 after
  // one step; eps = 1e-6 keeps that amplification at 1e3, so the final weights test the
  // parallel maths rather than the optimizer's conditioning. The gradients themselves are
  // compared after the first step (Errors::grad).
  cfg.train.eps = 1e-6;
  return cfg;
}

RunConfig case_config(const std::filesystem::path& dir, const Case& c) {
  RunConfig cfg = hybrid_config(dir, kRowsPerDp, c.m, c.precision);
  cfg.parallel.dp = c.shape.dp;
  cfg.parallel.tp = c.shape.tp;
  cfg.parallel.pp = c.shape.pp;
  cfg.parallel.zero = c.zero;
  cfg.parallel.schedule = c.schedule;
  cfg.parallel.virtual_stages = c.v;
  cfg.parallel.sequence_parallel = c.sp;
  cfg.parallel.stage_layers = c.stage_layers;
  return cfg;
}

struct TrainedRun {
  std::vector<float> losses;
  std::vector<float> weights;  // this rank's flat parameters
  std::vector<float> grads0;   // this rank's flat gradients after the first step
};

// kSteps steps of tr; the flat weights include the padding up to a multiple of dp.
TrainedRun train(Trainer& tr) {
  TrainedRun r;
  for (int s = 0; s < kSteps; ++s) {
    r.losses.push_back(tr.train_step().loss);
    if (s == 0) r.grads0.assign(tr.model().grads().begin(), tr.model().grads().end());
  }
  tr.data_parallel().materialize_all();
  auto w = tr.model().weights();
  r.weights.assign(w.begin(), w.end());
  return r;
}

TrainedRun train(const RunConfig& cfg, const ProcessGrid& grid) {
  Trainer tr(cfg, grid);
  return train(tr);
}

// The single-process reference for a global micro-batch of `rows` and `accum` micro-batches,
// computed on world rank 0 and broadcast (whole tensors, gpt2_param_specs order).
struct Reference {
  std::vector<float> losses, weights, grads0;
};

Reference reference(const ProcessGrid& world_grid, int rows, int accum,
                    const std::string& precision = "fp32") {
  Reference ref;
  const RunConfig cfg = hybrid_config(test::scratch_dir("hyref"), rows, accum, precision);
  const size_t n = flat_size(gpt2_param_specs(cfg.model));
  ref.losses.resize(kSteps);
  ref.weights.resize(n);
  ref.grads0.resize(n);
  if (world_grid.rank() == 0) {
    const ProcessGrid single = ProcessGrid::single();
    TrainedRun r = train(cfg, single);
    ref.losses = r.losses;
    std::copy(r.weights.begin(), r.weights.begin() + long(n), ref.weights.begin());
    std::copy(r.grads0.begin(), r.grads0.begin() + long(n), ref.grads0.begin());
  }
  world_grid.world().broadcast(ref.losses.data(), ref.losses.size(), 0);
  world_grid.world().broadcast(ref.weights.data(), ref.weights.size(), 0);
  world_grid.world().broadcast(ref.grads0.data(), ref.grads0.size(), 0);
  return ref;
}

// All (dp, tp, pp) with product n.
std::vector<GridShape> factorisations(int n) {
  std::vector<GridShape> out;
  for (int pp = 1; pp <= n; ++pp)
    for (int tp = 1; tp <= n; ++tp)
      if (n % (pp * tp) == 0) out.push_back(GridShape{.pp = pp, .dp = n / (pp * tp), .tp = tp});
  return out;
}

std::vector<Case> cases_for(const GridShape& g) {
  std::vector<Case> out;
  const int zero = g.dp > 1 ? 1 + (g.tp + g.pp) % 2 : 0;  // ZeRO 1 and 2 both appear
  if (g.pp == 1) {
    for (int m : {1, 2}) out.push_back({g, "1f1b", 1, m, zero});
    if (g.dp > 1) out.push_back({g, "1f1b", 1, 2, 3});  // weights gathered (and cast) per unit
  } else {
    for (int m : {g.pp, 2 * g.pp}) {
      out.push_back({g, "gpipe", 1, m, zero});
      out.push_back({g, "1f1b", 1, m, zero});
      if (8 >= 2 * g.pp) out.push_back({g, "interleaved", 2, m, zero});
    }
    // The last virtual stage holding the head alone, with tp's sequence parallelism.
    out.push_back({g, "1f1b", 1, g.pp, zero, g.tp > 1, "fp32", head_alone(g.pp)});
    if (8 >= 2 * g.pp)
      out.push_back({g, "interleaved", 2, 2 * g.pp, zero, false, "fp32", head_alone(2 * g.pp)});
  }
  if (g.tp > 1) out.push_back({g, "1f1b", 1, g.pp, zero, true});  // sequence parallel
  return out;
}

// Largest differences of one rank's run against the reference.
struct Errors {
  double loss = 0, weight = 0;
  double grad = 0;  // max |g - g_ref| / max |g_ref| after the first step
  double memory = 0;  // |predicted / measured - 1| of the rank holding the most
  std::string where;  // the parameter and element of the worst weight difference
};

constexpr double kMemoryTol = 0.05;  // the planner's memory against the buffers (issue 16)

// What this rank's buffers hold at their peak: the fp32 weights, gradients and AdamW moments
// (ZeRO's resident share), the 16-bit words reductions and gathers send, the
// compute-precision copy and the activation arena.
// ZeRO-3 casts the compute copy unit by unit as it gathers and gives the pages back with the
// masters': it holds the units gathered at once.
double measured_bytes(Trainer& tr) {
  const DataParallel::StateBytes s = tr.data_parallel().state_bytes();
  const double copy = double(tr.model().compute_copy_bytes());
  const double held = s.unit_floats > 0
                          ? copy / double(tr.model().weights().size()) * s.unit_floats
                          : copy;
  return s.weights + s.grads + s.optimizer + s.wire + held + double(tr.model().arena_bytes());
}

Errors compare(const TrainedRun& run, const Reference& ref, const Trainer& tr) {
  Errors e;
  for (int s = 0; s < kSteps; ++s)
    e.loss = std::max(e.loss, double(std::abs(run.losses[size_t(s)] - ref.losses[size_t(s)])) /
                                  ref.losses[size_t(s)]);
  const std::vector<ParamSpec> whole = gpt2_param_specs(tr.config().model);
  Trainer& t = const_cast<Trainer&>(tr);
  // ZeRO 2/3 keep only the shard's gradients.
  const size_t g_lo = t.data_parallel().zero_stage() >= 2 ? t.data_parallel().shard_begin() : 0;
  const size_t g_hi = t.data_parallel().zero_stage() >= 2 ? t.data_parallel().shard_end()
                                                          : run.grads0.size();
  double gmax = 0, gerr = 0;
  for (float g : ref.grads0) gmax = std::max(gmax, double(std::abs(g)));
  for (const ParamSpec& p : t.model().params()) {
    std::vector<float> want(p.numel), gwant(p.numel);
    slice_to_local(p, ref.weights.data() + find_param(whole, p.name).offset, want.data());
    slice_to_local(p, ref.grads0.data() + find_param(whole, p.name).offset, gwant.data());
    for (size_t i = 0; i < p.numel; ++i)
      if (p.offset + i >= g_lo && p.offset + i < g_hi)
        gerr = std::max(gerr, double(std::abs(run.grads0[p.offset + i] - gwant[i])));
    for (size_t i = 0; i < p.numel; ++i) {
      const double d = std::abs(run.weights[p.offset + i] - want[i]);
      if (d > e.weight) e.where = fmt::format("{}[{}]", p.name, i);
      e.weight = std::max(e.weight, d);
    }
  }
  e.grad = gerr / gmax;
  return e;
}

// Every layout and schedule of n ranks against the single process in the same precision:
// in fp32 losses, first-step gradients and final weights within round-off; in bf16 and
// fp16 the losses within kLowLossTol (a different fp32 summation order can move a value
// across a bf16 rounding boundary, so only the losses are held to a bound; they are also
// printed with the rest).
void every_layout(const std::string& precision, const std::string& grad_reduce = "fp32") {
  const bool fp32 = precision == "fp32";
  const double loss_tol = fp32 ? kLossTol : kLowLossTol;
  const int n = test::mpi().world_size();
  const ProcessGrid world_grid =
      ProcessGrid::create(test::mpi().world(), GridShape{.pp = 1, .dp = n, .tp = 1});
  std::map<std::pair<int, int>, Reference> refs;
  Errors worst;
  int count = 0;
  for (const GridShape& shape : factorisations(n)) {
    const ProcessGrid grid = ProcessGrid::create(test::mpi().world(), shape);
    for (Case c : cases_for(shape)) {
      c.precision = precision;
      SCOPED_TRACE(c.name());
      const auto key = std::make_pair(kRowsPerDp * shape.dp, c.m);
      if (!refs.count(key)) refs[key] = reference(world_grid, key.first, key.second, precision);
      RunConfig cfg = case_config(test::scratch_dir("hy"), c);
      cfg.parallel.grad_reduce = grad_reduce;
      Trainer tr(cfg, grid);
      const TrainedRun run = train(tr);
      Errors e = compare(run, refs[key], tr);
      double measured = measured_bytes(tr);
      grid.world().allreduce(&measured, 1, ReduceOp::kMax);
      e.memory = std::abs(estimate_rank_memory(cfg).total() / measured - 1);
      if (fp32 && e.weight > kWeightTol)
        std::printf("rank %d: worst weight at %s\n", grid.rank(), e.where.c_str());
      // The worst over all ranks.
      double all[4] = {e.loss, e.weight, e.grad, e.memory};
      grid.world().allreduce(all, 4, ReduceOp::kMax);
      e.loss = all[0];
      e.weight = all[1];
      e.grad = all[2];
      e.memory = all[3];
      if (grid.rank() == 0)
        std::printf("%-45s loss %.2g | grad %.2g | weight %.2g | memory %.3f\n",
                    c.name().c_str(), e.loss, e.grad, e.weight, e.memory);
      EXPECT_LE(e.loss, loss_tol);
      EXPECT_LE(e.memory, kMemoryTol);
      if (fp32) {
        EXPECT_LE(e.grad, kGradTol);
        EXPECT_LE(e.weight, kWeightTol);
      }
      worst.loss = std::max(worst.loss, e.loss);
      worst.weight = std::max(worst.weight, e.weight);
      worst.grad = std::max(worst.grad, e.grad);
      ++count;
    }
  }
  if (world_grid.rank() == 0)
    std::printf("%s (gradients reduced in %s): %d layouts x schedules on %d ranks, worst: "
                "relative loss diff %.3g (limit "
                "%.0e), normalised first-step gradient diff %.3g%s, |w - w_ref| after %d steps "
                "%.3g%s\n",
                precision.c_str(), grad_reduce.c_str(), count, n, worst.loss, loss_tol, worst.grad,
                fp32 ? fmt::format(" (limit {:.0e})", kGradTol).c_str() : "", kSteps,
                worst.weight, fp32 ? fmt::format(" (limit {:.0e})", kWeightTol).c_str() : "");
}

TEST(Hybrid, EveryLayoutMatchesTheSingleProcess) { every_layout("fp32"); }
// bf16 with bf16 gradient reduction (half the data-parallel bytes), fp16 with fp32.
TEST(Hybrid, EveryLayoutMatchesTheSingleProcessInBf16) { every_layout("bf16", "bf16"); }
TEST(Hybrid, EveryLayoutMatchesTheSingleProcessInFp16) { every_layout("fp16"); }

// The most parallel layout of n ranks the model allows, run twice: bitwise equal; and
// resumed from a checkpoint in the middle: bitwise equal to the uninterrupted run.
TEST(Hybrid, RepeatAndResumeAreBitwise) {
  const int n = test::mpi().world_size();
  const GridShape shape = n >= 8   ? GridShape{.pp = 2, .dp = 2, .tp = 2}
                          : n >= 4 ? GridShape{.pp = 2, .dp = 1, .tp = 2}
                                   : GridShape{.pp = 2, .dp = 1, .tp = 1};
  if (shape.world() != n) GTEST_FAIL() << "run with 2, 4 or 8 ranks";
  const ProcessGrid grid = ProcessGrid::create(test::mpi().world(), shape);
  for (const char* precision : {"fp32", "bf16", "fp16"}) {
    SCOPED_TRACE(precision);
    Case c{shape, "1f1b", 1, 4, shape.dp > 1 ? 1 : 0};
    c.precision = precision;
    RunConfig cfg = case_config(test::scratch_dir("hy_resume"), c);
    cfg.run.dir = (test::shared_dir(grid, "hy_resume_run") / "run").string();
    const TrainedRun a = train(cfg, grid), b = train(cfg, grid);
    EXPECT_EQ(a.losses, b.losses);
    EXPECT_EQ(std::memcmp(a.weights.data(), b.weights.data(), a.weights.size() * 4), 0);

    std::vector<float> got;
    {
      Trainer first(cfg, grid);
      for (int s = 0; s < 4; ++s) got.push_back(first.train_step().loss);
      first.save_checkpoint();
    }
    Trainer second(cfg, grid);
    second.resume(resolve_checkpoint(cfg.run.dir));
    for (int s = 4; s < kSteps; ++s) got.push_back(second.train_step().loss);
    EXPECT_EQ(got, a.losses) << "resume in the same layout must be bitwise";
    second.data_parallel().materialize_all();  // ZeRO-1 bf16/fp16: rounded outside the shard
    auto w = second.model().weights();
    EXPECT_EQ(std::memcmp(w.data(), a.weights.data(), a.weights.size() * 4), 0);
  }
}

}  // namespace
}  // namespace loom

namespace loom {
namespace {

struct Layout {
  GridShape shape;
  int zero = 0, m = 1;
};

// Trains `from` for 3 steps (or loads nothing), saves, resumes in `to` for 3 more; the
// losses and final weights must match the single process over the same 6 steps (and be
// bitwise equal to `from` uninterrupted when the layouts are identical). A one-process
// layout runs on world rank 0 alone.
struct Resharded {
  std::vector<float> losses;
};

RunConfig layout_config(const std::filesystem::path& data, const std::string& run,
                        const Layout& l, int global_rows) {
  RunConfig cfg = hybrid_config(data, global_rows / (l.shape.dp * l.m), l.m);
  cfg.parallel.dp = l.shape.dp;
  cfg.parallel.tp = l.shape.tp;
  cfg.parallel.pp = l.shape.pp;
  cfg.parallel.zero = l.zero;
  cfg.train.steps = 6;
  cfg.run.dir = run;
  return cfg;
}

// Runs fn(grid) on the ranks of the layout (all ranks, or rank 0 alone for one process).
template <class Fn>
void on_layout(const Layout& l, Fn fn) {
  const int n = test::mpi().world_size();
  if (l.shape.world() == n) {
    const ProcessGrid grid = ProcessGrid::create(test::mpi().world(), l.shape);
    fn(grid);
    return;
  }
  ASSERT_EQ(l.shape.world(), 1);
  const ProcessGrid world = ProcessGrid::create(test::mpi().world(), GridShape{1, n, 1});
  if (world.rank() == 0) {
    const ProcessGrid single = ProcessGrid::single();
    fn(single);
  }
  world.world().barrier();
}

TEST(Hybrid, CheckpointsResumeInAnyLayout) {
  const int n = test::mpi().world_size();
  auto L = [](int dp, int tp, int pp, int zero, int m) {
    return Layout{GridShape{.pp = pp, .dp = dp, .tp = tp}, zero, m};
  };
  std::vector<std::pair<Layout, Layout>> pairs;
  if (n == 8)
    pairs = {{L(2, 2, 2, 1, 2), L(1, 4, 2, 0, 4)}, {L(4, 1, 2, 2, 2), L(1, 1, 1, 0, 1)},
             {L(1, 1, 1, 0, 2), L(2, 2, 2, 1, 2)}, {L(2, 2, 2, 2, 2), L(2, 2, 2, 0, 2)},
             {L(2, 2, 2, 1, 2), L(2, 2, 2, 1, 2)}};
  else if (n == 4)
    pairs = {{L(2, 1, 2, 1, 2), L(1, 4, 1, 0, 2)}, {L(1, 1, 1, 0, 2), L(1, 2, 2, 0, 2)},
             {L(2, 2, 1, 2, 2), L(2, 2, 1, 0, 2)}};
  else
    pairs = {{L(1, 1, 2, 0, 2), L(2, 1, 1, 1, 2)}, {L(1, 1, 1, 0, 2), L(1, 2, 1, 0, 2)}};
  constexpr int kRows = 8;  // global rows per step
  const ProcessGrid world = ProcessGrid::create(test::mpi().world(), GridShape{1, n, 1});
  const Reference ref = [&] {
    Reference r;
    RunConfig cfg = hybrid_config(test::scratch_dir("rsref"), kRows, 1);
    cfg.train.steps = 6;  // the LR schedule depends on the total
    r.losses.resize(6);
    if (world.rank() == 0) {
      const ProcessGrid single = ProcessGrid::single();
      Trainer tr(cfg, single);
      for (int s = 0; s < 6; ++s) r.losses[size_t(s)] = tr.train_step().loss;
    }
    world.world().broadcast(r.losses.data(), 6, 0);
    return r;
  }();
  for (const auto& [from, to] : pairs) {
    const std::string what = fmt::format("(dp {}, tp {}, pp {}, zero {}) -> (dp {}, tp {}, pp {}, "
                                         "zero {})", from.shape.dp, from.shape.tp, from.shape.pp,
                                         from.zero, to.shape.dp, to.shape.tp, to.shape.pp, to.zero);
    SCOPED_TRACE(what);
    const std::string run = (test::shared_dir(world, "reshard") / "run").string();
    const auto data = test::scratch_dir("rsdata");
    std::vector<float> losses(6, 0.0f), whole(6, 0.0f);
    on_layout(from, [&](const ProcessGrid& g) {
      Trainer tr(layout_config(data, run, from, kRows), g);
      for (int s = 0; s < 3; ++s) losses[size_t(s)] = tr.train_step().loss;
      tr.save_checkpoint();
      for (int s = 3; s < 6; ++s) whole[size_t(s)] = tr.train_step().loss;
    });
    on_layout(to, [&](const ProcessGrid& g) {
      Trainer tr(layout_config(data, run, to, kRows), g);
      tr.resume(resolve_checkpoint(run));
      EXPECT_EQ(tr.next_step(), 3);
      for (int s = 3; s < 6; ++s) losses[size_t(s)] = tr.train_step().loss;
    });
    world.world().broadcast(losses.data(), 6, 0);
    world.world().broadcast(whole.data(), 6, 0);
    double worst = 0;
    for (int s = 0; s < 6; ++s)
      worst = std::max(worst, double(std::abs(losses[size_t(s)] - ref.losses[size_t(s)])) /
                                  ref.losses[size_t(s)]);
    if (world.rank() == 0)
      std::printf("resume %s: worst relative loss diff %.3g\n", what.c_str(), worst);
    if (world.rank() == 0 && worst > kLossTol)
      for (int s = 0; s < 6; ++s)
        std::printf("  step %d: %.7f vs one process %.7f\n", s, losses[size_t(s)],
                    ref.losses[size_t(s)]);
    EXPECT_LE(worst, kLossTol);
    const bool same = from.shape.dp == to.shape.dp && from.shape.tp == to.shape.tp &&
                      from.shape.pp == to.shape.pp && from.zero == to.zero && from.m == to.m;
    if (same) {
      for (int s = 3; s < 6; ++s) EXPECT_EQ(losses[size_t(s)], whole[size_t(s)]) << "bitwise";
    }
  }
}

}  // namespace
}  // namespace loom

namespace loom {
namespace {

// Every dp-rank-0 process writes its own shard; the manifest records the layout and every
// slice; a missing or corrupt shard is named when the checkpoint is loaded.
TEST(Hybrid, ShardedCheckpointFiles) {
  const int n = test::mpi().world_size();
  const GridShape shape = n >= 8   ? GridShape{.pp = 2, .dp = 2, .tp = 2}
                          : n >= 4 ? GridShape{.pp = 2, .dp = 1, .tp = 2}
                                   : GridShape{.pp = 1, .dp = 1, .tp = 2};
  ASSERT_EQ(shape.world(), n) << "run with 2, 4 or 8 ranks";
  const ProcessGrid grid = ProcessGrid::create(test::mpi().world(), shape);
  RunConfig cfg = case_config(test::scratch_dir("hy_shards"), Case{shape, "1f1b", 1, 2, 0});
  cfg.run.dir = (test::shared_dir(grid, "hy_shards_run") / "run").string();
  Trainer tr(cfg, grid);
  tr.train_step();
  const std::filesystem::path dir = tr.save_checkpoint();
  const int writers = n / shape.dp;
  if (grid.rank() == 0) {
    int model_files = 0, optim_files = 0;
    for (const auto& e : std::filesystem::directory_iterator(dir)) {
      const std::string f = e.path().filename().string();
      model_files += f.starts_with("model-");
      optim_files += f.starts_with("optimizer-");
    }
    EXPECT_EQ(model_files, writers);
    EXPECT_EQ(optim_files, writers);
    const std::string manifest = read_file_text(dir / "manifest.json");
    EXPECT_NE(manifest.find(fmt::format("dp={} tp={} pp={}", shape.dp, shape.tp, shape.pp)),
              std::string::npos);
    EXPECT_NE(manifest.find("\"split_parts\": 3"), std::string::npos) << "q|k|v slices";
    // A shard that goes missing is named; so is a corrupt one.
    const std::filesystem::path broken = dir.parent_path() / "broken";
    std::filesystem::copy(dir, broken, std::filesystem::copy_options::recursive);
    std::filesystem::remove(broken / "model-00001.safetensors");
    const ProcessGrid single = ProcessGrid::single();
    RunConfig one = cfg;
    one.parallel = ParallelConfig{};
    Trainer t1(one, single);
    try {
      t1.resume(broken);
      ADD_FAILURE() << "a missing shard must be an error";
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find("model-00001.safetensors listed in the manifest is "
                                           "missing"),
                std::string::npos)
          << e.what();
    }
    std::filesystem::remove_all(broken);
    // The checkpoint itself loads into one process.
    t1.resume(dir);
    EXPECT_EQ(t1.next_step(), 1);
  }
  grid.world().barrier();
}

}  // namespace
}  // namespace loom

namespace loom {
namespace {

// [checkpoint] async: the save returns after a snapshot, training goes on while the shards
// are written, the commit happens at a later step; resuming from it is bitwise.
TEST(Hybrid, AsyncCheckpointResumesBitwise) {
  const int n = test::mpi().world_size();
  const GridShape shape = n >= 8   ? GridShape{.pp = 2, .dp = 2, .tp = 2}
                          : n >= 4 ? GridShape{.pp = 2, .dp = 2, .tp = 1}
                                   : GridShape{.pp = 1, .dp = 2, .tp = 1};
  ASSERT_EQ(shape.world(), n) << "run with 2, 4 or 8 ranks";
  const ProcessGrid grid = ProcessGrid::create(test::mpi().world(), shape);
  RunConfig cfg = case_config(test::scratch_dir("hy_async"), Case{shape, "1f1b", 1, 2, 1});
  cfg.run.dir = (test::shared_dir(grid, "hy_async_run") / "run").string();
  cfg.checkpoint.async = true;
  std::vector<float> expected, got;
  {
    Trainer tr(cfg, grid);
    for (int s = 0; s < kSteps; ++s) {
      if (s == 4) tr.save_checkpoint();
      expected.push_back(tr.train_step().loss);
    }
    tr.finish_checkpoint();
  }
  Trainer second(cfg, grid);
  second.resume(resolve_checkpoint(cfg.run.dir));
  ASSERT_EQ(second.next_step(), 4);
  for (int s = 4; s < kSteps; ++s) got.push_back(second.train_step().loss);
  EXPECT_EQ(got, std::vector<float>(expected.begin() + 4, expected.end()));
}

// Recomputation in the most parallel layout (a (2,2,2) grid at 8 ranks), in fp32 and bf16:
// selective and full give bitwise the losses and weights of keeping everything, under 1F1B
// with sequence parallelism and ZeRO-1, under the interleaved schedule with ZeRO-2, and
// without a pipeline under ZeRO-3 (whose weight gathers, and casts, run again for the
// recomputed forward).
TEST(Hybrid, RecomputeIsBitwise) {
  const int n = test::mpi().world_size();
  const GridShape shape = n >= 8   ? GridShape{.pp = 2, .dp = 2, .tp = 2}
                          : n >= 4 ? GridShape{.pp = 2, .dp = 1, .tp = 2}
                                   : GridShape{.pp = 2, .dp = 1, .tp = 1};
  if (shape.world() != n) GTEST_FAIL() << "run with 2, 4 or 8 ranks";
  const GridShape flat{.pp = 1, .dp = n / shape.tp, .tp = shape.tp};  // ZeRO-3 needs pp = 1
  const Case cases[] = {{shape, "1f1b", 1, 4, shape.dp > 1 ? 1 : 0, shape.tp > 1},
                        {shape, "interleaved", 2, 4, shape.dp > 1 ? 2 : 0, false},
                        {flat, "1f1b", 1, 2, 3, shape.tp > 1}};
  for (const char* precision : {"fp32", "bf16"})
  for (Case c : cases) {
    c.precision = precision;
    const ProcessGrid grid = ProcessGrid::create(test::mpi().world(), c.shape);
    RunConfig cfg = case_config(test::scratch_dir("hy_recompute"), c);
    // The interleaved case keeps the (T,T) probabilities, which selective drops.
    if (c.schedule == "interleaved") cfg.train.attention = "materialized";
    cfg.run.dir = (test::shared_dir(grid, "hy_recompute_run") / "run").string();
    const TrainedRun none = train(cfg, grid);
    for (const char* policy : {"selective", "full"}) {
      cfg.train.recompute = policy;
      const TrainedRun got = train(cfg, grid);
      EXPECT_EQ(got.losses, none.losses) << c.name() << " " << policy << " "
                                         << cfg.train.attention;
      EXPECT_EQ(std::memcmp(got.weights.data(), none.weights.data(), none.weights.size() * 4), 0)
          << c.name() << " " << policy << ": weights differ";
    }
  }
}

}  // namespace
}  // namespace loom
