#include "plan/verify.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>

#include "core/check.h"
#include "core/file_io.h"
#include "core/timer.h"
#include "launch/child.h"
#include "train/bench_train.h"
#include "train/report.h"

namespace loom {

namespace fs = std::filesystem;

namespace {

std::vector<double> ranks_of(const std::vector<double>& v) {
  std::vector<size_t> order(v.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return v[a] < v[b]; });
  std::vector<double> rank(v.size());
  for (size_t i = 0; i < order.size();) {
    size_t j = i;
    while (j + 1 < order.size() && v[order[j + 1]] == v[order[i]]) ++j;
    for (size_t k = i; k <= j; ++k) rank[order[k]] = (double(i) + double(j)) / 2 + 1;
    i = j + 1;
  }
  return rank;
}

}  // namespace

double spearman(const std::vector<double>& a, const std::vector<double>& b) {
  LOOM_CHECK(a.size() == b.size() && a.size() >= 2, "spearman: need two series of >= 2");
  const std::vector<double> ra = ranks_of(a), rb = ranks_of(b);
  const double n = double(a.size()), mean = (n + 1) / 2;
  double cov = 0, va = 0, vb = 0;
  for (size_t i = 0; i < ra.size(); ++i) {
    cov += (ra[i] - mean) * (rb[i] - mean);
    va += (ra[i] - mean) * (ra[i] - mean);
    vb += (rb[i] - mean) * (rb[i] - mean);
  }
  return va > 0 && vb > 0 ? cov / std::sqrt(va * vb) : 0;
}

std::vector<int> verify_selection(int n, int top, int sample) {
  std::vector<int> out;
  for (int i = 0; i < n && i < std::max(0, top); ++i) out.push_back(i);
  const int first = int(out.size()), rest = n - first, want = std::max(0, sample - first);
  if (rest <= want) {
    for (int i = first; i < n; ++i) out.push_back(i);
    return out;
  }
  // `want` points spread evenly over the rest, ending at the last layout.
  for (int k = 1; k <= want; ++k)
    out.push_back(first + int(std::lround(double(k) * (rest - 1) / want)));
  return out;
}

namespace {

std::string launcher(int ranks, const std::string& loom) {
  if (ranks == 1) return loom;
  return fmt::format("mpirun -np {} --oversubscribe --bind-to none --mca mpi_yield_when_idle 1{} "
                     "{}",
                     ranks, ::geteuid() == 0 ? " --allow-run-as-root" : "", loom);
}

struct Measured {
  double tokens_per_s, peak_bytes;
};

// Trains one layout for opt.steps and reads back what it measured.
Measured measure(const RunConfig& base, const VerifyRow& row, int index,
                 const VerifyOptions& opt) {
  const fs::path dir = fs::path(opt.dir) / fmt::format("layout_{:03d}", index);
  RunConfig cfg = with_layout(base, row.predicted.layout);
  cfg.run.dir = dir.string();
  fs::create_directories(dir);
  const fs::path toml = dir.string() + ".toml", log = dir.string() + ".log";
  write_file_atomic(toml, cfg.to_toml());
  const std::string cmd = fmt::format("{} train --config '{}' --overwrite > '{}' 2>&1",
                                      launcher(opt.ranks, opt.loom), toml.string(), log.string());
  const CommandResult r = run_command(cmd, opt.timeout_s);
  LOOM_REQUIRE(!r.timed_out && r.status == 0, "plan --verify: layout {} ({}) {}; see {}",
               index, to_string(row.predicted.layout),
               r.timed_out ? fmt::format("ran past {} s", opt.timeout_s)
                           : fmt::format("failed with status {}", r.status),
               log.string());
  std::vector<double> tps;
  std::ifstream metrics(dir / "metrics.jsonl");
  for (std::string line; std::getline(metrics, line);) {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (j.at("step").get<int>() >= 2) tps.push_back(j.at("tokens_per_s").get<double>());
  }
  LOOM_REQUIRE(!tps.empty(), "plan --verify: {} has no timed step (need --steps >= 2)",
               (dir / "metrics.jsonl").string());
  return {median(tps), nlohmann::json::parse(read_file_text(dir / "memory.json"))
                          .at("peak_rank_bytes").get<double>()};
}

}  // namespace

VerifyResult verify_plan(const RunConfig& config, const ClusterSpec& cluster,
                         const VerifyOptions& opt) {
  LOOM_REQUIRE(opt.ranks >= 1 && opt.steps >= 2, "plan --verify: need --ranks >= 1 and --steps "
               ">= 2 (the first step is not timed); got {} and {}", opt.ranks, opt.steps);
  RunConfig base = config;
  fs::create_directories(opt.dir);
  const fs::path shard = fs::path(opt.dir) / "random_train.bin";
  base.data.train = shard.string();
  base.data.val.clear();
  base.train.steps = opt.steps;
  base.train.eval_every = 0;
  base.train.checkpoint_every = 0;
  base.run.threads = 0;
  write_random_shard(shard, base);
  const CostModel model(cluster, opt.ranks);
  const int64_t global = global_batch_of(base);
  const SearchResult s = search_layouts(base, model, global, {}, 1 << 30);
  LOOM_REQUIRE(s.ranked.size() >= 2, "plan --verify: {} layouts of {} ranks fit; need >= 2 to "
               "compare", s.ranked.size(), opt.ranks);
  VerifyResult out;
  out.feasible = int(s.ranked.size());
  for (int i : verify_selection(out.feasible, opt.top, opt.sample))
    out.rows.push_back(VerifyRow{s.ranked[size_t(i)], i + 1});
  // Repeats go round the whole sample, so a slow spell of the host spreads over layouts.
  // Each row keeps its fastest run (a shared host's interference only ever slows a run
  // down) and its largest peak.
  for (int rep = 0; rep < opt.repeats; ++rep)
    for (VerifyRow& row : out.rows) {
      const Measured m = measure(base, row, row.predicted_rank, opt);
      fmt::print("  {:>4} {:<80} predicted {:>9.1f} measured {:>9.1f} tokens/s{}\n",
                 row.predicted_rank, to_string(row.predicted.layout), row.predicted.tokens_per_s,
                 m.tokens_per_s,
                 opt.repeats > 1 ? fmt::format(" (repeat {} of {})", rep + 1, opt.repeats) : "");
      std::fflush(stdout);
      row.measured_tokens_per_s = std::max(row.measured_tokens_per_s, m.tokens_per_s);
      row.measured_peak_bytes = std::max(row.measured_peak_bytes, m.peak_bytes);
    }
  std::vector<double> pred, meas, err, mem_err;
  double best = 0;
  for (const VerifyRow& r : out.rows) {
    pred.push_back(r.predicted.tokens_per_s);
    meas.push_back(r.measured_tokens_per_s);
    err.push_back(std::abs(r.predicted.tokens_per_s / r.measured_tokens_per_s - 1));
    mem_err.push_back(std::abs(r.predicted.memory.total() / r.measured_peak_bytes - 1));
    best = std::max(best, r.measured_tokens_per_s);
  }
  out.median_abs_error = median(err);
  out.memory_median_abs_error = median(mem_err);
  out.spearman = out.rows.size() >= 2 ? spearman(pred, meas) : 0;
  out.best_gap = 1 - out.rows.front().measured_tokens_per_s / best;
  return out;
}

std::string format_verify(const VerifyResult& r, const VerifyOptions& opt) {
  std::string out = fmt::format(
      "plan --verify: {} of the {} layouts that fit at {} ranks trained for {} steps each{} "
      "(tokens/s: median of steps 2..{}{})\n{:>5} {:<80} {:>10} {:>10} {:>7} {:>10} {:>10} "
      "{:>7}\n",
      r.rows.size(), r.feasible, opt.ranks, opt.steps,
      opt.repeats > 1 ? fmt::format(", {} times", opt.repeats) : "", opt.steps,
      opt.repeats > 1 ? ", the fastest repeat" : "", "rank", "layout",
      "predicted", "measured", "error", "mem pred", "mem peak", "error");
  for (const VerifyRow& row : r.rows) {
    const Prediction& p = row.predicted;
    out += fmt::format("{:>5} {:<80} {:>10.1f} {:>10.1f} {:>+6.1f}% {:>10} {:>10} {:>+6.1f}%\n",
                       row.predicted_rank, to_string(p.layout), p.tokens_per_s,
                       row.measured_tokens_per_s,
                       100 * (p.tokens_per_s / row.measured_tokens_per_s - 1),
                       format_bytes(p.memory.total()), format_bytes(row.measured_peak_bytes),
                       100 * (p.memory.total() / row.measured_peak_bytes - 1));
  }
  out += fmt::format(
      "tokens/s: median absolute error {:.1f}%, Spearman {:.3f}; the predicted best measured "
      "{:.1f}% below the measured best. Memory (predicted against the peak a rank grew): "
      "median absolute error {:.1f}%\n",
      100 * r.median_abs_error, r.spearman, 100 * r.best_gap, 100 * r.memory_median_abs_error);
  return out;
}

nlohmann::json verify_json(const VerifyResult& r, const VerifyOptions& opt) {
  nlohmann::json rows = nlohmann::json::array();
  for (const VerifyRow& row : r.rows) {
    nlohmann::json j = to_json(row.predicted);
    j["predicted_rank"] = row.predicted_rank;
    j["measured_tokens_per_s"] = row.measured_tokens_per_s;
    j["measured_peak_bytes"] = row.measured_peak_bytes;
    rows.push_back(j);
  }
  return {{"ranks", opt.ranks}, {"steps", opt.steps}, {"repeats", opt.repeats},
          {"feasible", r.feasible},
          {"median_abs_error", r.median_abs_error}, {"spearman", r.spearman},
          {"best_gap", r.best_gap}, {"memory_median_abs_error", r.memory_median_abs_error},
          {"layouts", rows}};
}

void plot_verify(const VerifyResult& r, const std::string& png) {
  const fs::path out = fs::absolute(png), dir = out.parent_path() / (out.stem().string() + ".gp.d");
  fs::create_directories(dir);
  std::string data;
  double hi = 0;
  for (const VerifyRow& row : r.rows) {
    data += fmt::format("{:.9g} {:.9g}\n", row.predicted.tokens_per_s, row.measured_tokens_per_s);
    hi = std::max({hi, row.predicted.tokens_per_s, row.measured_tokens_per_s});
  }
  write_file_atomic(dir / "points.dat", std::string_view(data));
  const std::string script = fmt::format(
      "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {{\n"
      "  set terminal pngcairo size 720,720\n}} else {{\n  set terminal png size 720,720\n}}\n"
      "set output 'plot.png'\nset grid\nset key top left\nset size square\n"
      "set xrange [0:{0:.6g}]\nset yrange [0:{0:.6g}]\n"
      "set xlabel 'predicted tokens/s'\nset ylabel 'measured tokens/s'\n"
      "set title 'loom plan --verify: median |error| {1:.1f}%, Spearman {2:.3f}'\n"
      "plot x with lines dashtype 2 title 'predicted = measured', "
      "'points.dat' using 1:2 with points pointtype 7 pointsize 1.5 title 'layout'\n",
      1.1 * hi, 100 * r.median_abs_error, r.spearman);
  write_file_atomic(dir / "plot.gp", std::string_view(script));
  run_gnuplot(dir, "plan --verify", out.string());
  fs::rename(dir / "plot.png", out);
  fs::remove_all(dir);
}

}  // namespace loom
