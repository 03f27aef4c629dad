// loom plan --config RUN.toml --cluster CLUSTER.toml [--world N] [--global-batch B]
//           [--top K] [--layout dp=D,tp=T,...] [--json FILE]
// Enumerates every valid layout of the world, prices each with the cost model (plan/), drops
// those that do not fit and prints the best first with why the winner wins.
//
// loom plan --simulate --pp P --microbatches M [--schedule gpipe|1f1b|interleaved]
//           [--virtual-stages V]
// Builds a pipeline schedule, lowers it to sends and receives, runs it in the simulator
// (no MPI) and prints the timeline, the bubble beside the textbook value, and the peak
// number of in-flight activations per stage.
#include <fmt/core.h>

#include <cmath>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "cli/command.h"
#include "core/check.h"
#include "core/file_io.h"
#include "core/memory.h"
#include "parallel/schedule.h"
#include "parallel/schedule_sim.h"
#include "plan/calibrate.h"
#include "plan/plan_report.h"
#include "plan/published.h"
#include "plan/search.h"
#include "plan/verify.h"
#include "train/run_config.h"

namespace loom::cli {
namespace {

struct PlanOpts {
  bool simulate = false, calibrate = false, verify = false;
  VerifyOptions check;
  std::string kernels, out = "configs/clusters/local.toml", published;
  std::vector<std::string> collectives;
  std::string config, cluster, layout, json;
  std::vector<std::string> overrides;
  int world = 0, top = 0;  // top 0: 10 layouts printed, or --verify's 4 run
  int64_t global_batch = 0;
  int pp = 1;
  int microbatches = 1;
  std::string schedule = "1f1b";
  int virtual_stages = 2;
  double t_fwd = 1, t_bwd = 2;
};

constexpr double kMaxTimelineCells = 1e6;
// Bytes the schedule, its lowering and the simulation hold per (stage, micro-batch, chunk):
// a forward and a backward, their sends and receives, and the simulated intervals. Measured
// peak RSS: 665 bytes at --pp 1000 --microbatches 2000 (1f1b and interleaved alike).
constexpr double kBytesPerStageMicrobatch = 768;

// Refuses (exit 2) a simulation that would not fit in memory, naming the need, the limit and
// the most micro-batches that would fit at this --pp, instead of being OOM-killed.
void require_plan_fits(int p, int m, int v) {
  const double need = kBytesPerStageMicrobatch * double(p) * double(m) * double(v);
  const MemoryLimit limit = available_memory(1);
  if (need <= limit.bytes) return;
  const double most = std::floor(limit.bytes / (kBytesPerStageMicrobatch * double(p) * v));
  throw InputError(fmt::format(
      "plan: simulating --pp {} --microbatches {}{} needs about {} but {} is available ({}); "
      "{}",
      p, m, v > 1 ? fmt::format(" --virtual-stages {}", v) : "", format_bytes(need),
      format_bytes(limit.bytes), limit.why,
      most >= 1 ? fmt::format("at --pp {} at most --microbatches {:.0f} fits", p, most)
                : "lower --pp"));
}

// The layout search: what `loom plan --config --cluster` prints.
int run_search(const PlanOpts& o) {
  LOOM_REQUIRE(!o.config.empty() && !o.cluster.empty(),
               "plan: pass --config RUN.toml and --cluster CLUSTER.toml (or --simulate)");
  const RunConfig base = load_run_config(o.config, o.overrides);
  const ClusterSpec cluster = load_cluster(o.cluster);
  const CostModel model{cluster, o.world > 0 ? o.world : cluster.world()};
  const int64_t global = o.global_batch > 0 ? o.global_batch : global_batch_of(base);
  const SearchResult r = search_layouts(base, model, global, parse_layout_filter(o.layout));
  const int top = o.top > 0 ? o.top : 10;
  fmt::print("{}", format_plan(r, model, global, top));
  if (!o.json.empty()) {
    nlohmann::json layouts = nlohmann::json::array();
    for (const Prediction& p : r.ranked) {
      if (int(layouts.size()) >= top) break;
      layouts.push_back(to_json(p));
    }
    write_file_atomic(o.json, nlohmann::json{{"cluster", cluster.name},
                                             {"world", model.world},
                                             {"global_batch", global},
                                             {"priced", r.priced},
                                             {"fit", r.ranked.size()},
                                             {"do_not_fit", r.too_big.size()},
                                             {"seconds", r.seconds},
                                             {"layouts", layouts}}
                                  .dump(2));
    fmt::print("wrote {}\n", o.json);
  }
  LOOM_REQUIRE(!r.ranked.empty(), "plan: no layout of {} ranks fits in memory (see above)",
               model.world);
  return 0;
}

// Writes the local cluster file from this machine's bench JSONs.
int run_calibrate(const PlanOpts& o) {
  LOOM_REQUIRE(!o.kernels.empty() && !o.collectives.empty(),
               "plan --calibrate needs --kernels (loom bench kernels --json) and --collectives "
               "(loom bench collectives --json, one file per rank count)");
  auto load = [](const std::string& path) {
    try {
      return nlohmann::json::parse(read_file_text(path));
    } catch (const nlohmann::json::exception& e) {
      throw InputError(fmt::format("{}: not JSON: {}", path, e.what()));
    }
  };
  std::vector<nlohmann::json> coll;
  std::string sources = o.kernels;
  for (const std::string& f : o.collectives) {
    coll.push_back(load(f));
    sources += ", " + f;
  }
  std::string text;
  try {
    text = calibrated_cluster_toml(load(o.kernels), coll, available_memory(1).bytes, sources);
  } catch (const nlohmann::json::exception& e) {
    throw InputError(fmt::format("plan --calibrate: a bench file lacks what it needs: {}",
                                 e.what()));
  }
  static_cast<void>(parse_cluster(text, o.out));  // what it wrote, it can read
  write_file_atomic(o.out, text);
  fmt::print("{}wrote {}\n", text, o.out);
  return 0;
}

// The published runs beside the planner's predictions and choices.
int run_published(const PlanOpts& o) {
  const std::vector<PublishedRun> runs = load_published_runs(o.published);
  const std::string dir = std::filesystem::path(o.published).parent_path().string();
  const std::vector<PublishedComparison> rows = compare_published(runs, dir.empty() ? "." : dir);
  fmt::print("{}", format_published(rows));
  if (!o.json.empty()) {
    write_file_atomic(o.json, nlohmann::json{{"runs", published_json(rows)}}.dump(2));
    fmt::print("wrote {}\n", o.json);
  }
  return 0;
}

// Trains a sample of the feasible layouts here and sets the measurements beside the
// predictions: table, JSON, and a PNG scatter next to the JSON.
int run_verify(const PlanOpts& o) {
  LOOM_REQUIRE(!o.config.empty() && !o.cluster.empty(),
               "plan --verify: pass --config RUN.toml and --cluster (the calibrated local.toml)");
  const RunConfig base = load_run_config(o.config, o.overrides);
  const ClusterSpec cluster = load_cluster(o.cluster);
  VerifyOptions opt = o.check;
  if (o.top > 0) opt.top = o.top;
  if (opt.loom.empty()) opt.loom = std::filesystem::read_symlink("/proc/self/exe").string();
  const VerifyResult r = verify_plan(base, cluster, opt);
  fmt::print("{}", format_verify(r, opt));
  const std::string json = o.json.empty() ? opt.dir + "/verify.json" : o.json;
  write_file_atomic(json, verify_json(r, opt).dump(2));
  const std::string png = (std::filesystem::path(json).replace_extension(".png")).string();
  plot_verify(r, png);
  fmt::print("wrote {} and {}\n", json, png);
  return 0;
}

int run_plan(const PlanOpts& o) {
  if (o.calibrate) return run_calibrate(o);
  if (o.verify) return run_verify(o);
  if (!o.published.empty()) return run_published(o);
  if (!o.simulate) return run_search(o);
  LOOM_REQUIRE(o.pp >= 1 && o.microbatches >= 1, "plan: need --pp >= 1 and --microbatches >= 1, "
               "got --pp {} --microbatches {}", o.pp, o.microbatches);
  const int p = o.pp, m = o.microbatches;
  const bool inter = o.schedule == "interleaved";
  const int v = inter ? o.virtual_stages : 1;
  require_plan_fits(p, m, v);
  Schedule compute;
  if (o.schedule == "gpipe") compute = build_gpipe(p, m);
  else if (o.schedule == "1f1b") compute = build_1f1b(p, m);
  else if (inter) compute = build_interleaved_1f1b(p, m, v);
  else LOOM_REQUIRE(false, "plan: unknown --schedule '{}' (gpipe, 1f1b, interleaved)", o.schedule);

  const Schedule lowered = lower(compute, p, v);
  SimOptions sim;
  sim.t_fwd = o.t_fwd;
  sim.t_bwd = o.t_bwd;
  const SimResult r = simulate(lowered, m, v, sim);
  LOOM_CHECK(r.ok, "schedule {} failed in simulation:\n{}", o.schedule, r.error);

  // Textbook bubble (Narayanan et al. 2021): b / (m + b) with b = (p-1)/v pipeline fills.
  const double b = double(p - 1) / v;
  fmt::print("schedule {} pp={} microbatches={}{} (t_fwd={} t_bwd={})\n", o.schedule, p, m,
             inter ? fmt::format(" virtual-stages={}", v) : "", o.t_fwd, o.t_bwd);
  // A timeline is for reading: past a few screens it is omitted, and never allocated.
  const double cells = double(p) * std::ceil(r.makespan);
  if (cells <= kMaxTimelineCells) {
    fmt::print("{}", timeline(lowered, r, v));
  } else {
    fmt::print("timeline omitted: {} ranks x {:.0f} time units is more than {:.0f} cells\n", p,
               std::ceil(r.makespan), kMaxTimelineCells);
  }
  fmt::print("makespan {:g}  bubble {:.4f}  textbook {:.4f}\n", r.makespan, r.bubble_fraction,
             b / (m + b));
  fmt::print("peak in-flight activations per stage:");
  for (int rank = 0; rank < p; ++rank) fmt::print(" {}", r.peak_inflight[rank]);
  fmt::print("\n");
  return 0;
}

}  // namespace

RunFn setup_plan(CLI::App& sub) {
  auto o = std::make_shared<PlanOpts>();
  sub.add_option("--config", o->config, "run config (TOML): the model, seq_len, the rest");
  sub.add_option("--set", o->overrides, "override a config value: section.key=value");
  sub.add_option("--cluster", o->cluster, "cluster file (configs/clusters/*.toml)");
  sub.add_option("--world", o->world, "ranks (default: the cluster's size)")
      ->check(in_range(1, 1 << 24));
  sub.add_option("--global-batch", o->global_batch,
                 "sequences per step (default: the config's)")
      ->check(in_range(1, 1e12));
  sub.add_option("--top", o->top, "layouts to print and write (default 10); with --verify, the "
                 "best predicted that are all run (default 4)")
      ->check(in_range(1, 1e6));
  sub.add_option("--layout", o->layout,
                 "fix fields: dp=,tp=,pp=,zero=,schedule=,m=,v=,mb=,precision=,recompute=,sp=");
  sub.add_option("--json", o->json, "write the ranked layouts as JSON");
  sub.add_flag("--simulate", o->simulate, "run one schedule in the simulator (no MPI)");
  sub.add_flag("--calibrate", o->calibrate,
               "write the local cluster file from bench kernels and collectives JSON");
  sub.add_option("--kernels", o->kernels, "loom bench kernels --json output (--calibrate)");
  sub.add_option("--collectives", o->collectives,
                 "loom bench collectives --json outputs, one per rank count (--calibrate)")
      ->delimiter(',');
  sub.add_flag("--verify", o->verify,
               "train a sample of the feasible layouts here; predicted against measured");
  sub.add_option("--ranks", o->check.ranks, "ranks --verify trains at")->capture_default_str()
      ->check(in_range(1, 1024));
  sub.add_option("--steps", o->check.steps, "steps per layout (--verify; the first is not "
                 "timed)")->capture_default_str()->check(in_range(2, 1e6));
  sub.add_option("--sample", o->check.sample, "layouts --verify trains in all: the --top "
                 "best and an even spread of the rest")->capture_default_str()
      ->check(in_range(2, 1e6));
  sub.add_option("--repeats", o->check.repeats, "runs of each layout (--verify), round the "
                 "whole sample; the fastest counts")->capture_default_str()
      ->check(in_range(1, 100));
  sub.add_option("--dir", o->check.dir, "where --verify writes its runs")->capture_default_str();
  sub.add_option("--published", o->published,
                 "price published runs (configs/clusters/published-runs.toml) beside the "
                 "planner's choice");
  sub.add_option("--out", o->out, "the cluster file --calibrate writes")->capture_default_str();
  sub.add_option("--pp", o->pp, "pipeline stages")->check(in_range(1, 1 << 20));
  sub.add_option("--microbatches", o->microbatches, "micro-batches per step")
      ->check(in_range(1, 1 << 30));
  sub.add_option("--schedule", o->schedule, "gpipe, 1f1b or interleaved")->capture_default_str();
  sub.add_option("--virtual-stages", o->virtual_stages, "model chunks per rank (interleaved)")
      ->capture_default_str()
      ->check(in_range(1, 1 << 10));
  sub.add_option("--t-fwd", o->t_fwd, "simulated cost of a forward")
      ->capture_default_str()
      ->check(in_range(1e-3, 1e3));
  sub.add_option("--t-bwd", o->t_bwd, "simulated cost of a backward")
      ->capture_default_str()
      ->check(in_range(1e-3, 1e3));
  return [o] { return run_plan(*o); };
}

}  // namespace loom::cli
