// `loom bench train --pp P` under mpirun -np P: pipeline schedules measured beside the
// simulator's prediction for the same action lists and the measured compute times.
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <cmath>

#include "core/check.h"
#include "core/file_io.h"
#include "kernels/openblas.h"
#include "parallel/schedule_sim.h"
#include "train/stage_profile.h"
#include "train/bench_train.h"
#include "train/trainer.h"

namespace loom {
namespace fs = std::filesystem;

namespace {

struct PipeCase {
  std::string schedule;
  int v, m;
};

struct PipeResult {
  PipeCase c;
  double tokens_per_s = 0;
  double measured_bubble = 0;   // 1 - compute / (p * step time), median over steps
  double predicted_bubble = 0;  // simulator with the measured median F and B times
  double t_fwd = 0, t_bwd = 0;  // slowest virtual stage's median forward / backward, s
};

PipeResult measure(RunConfig cfg, const PipeCase& c, const TrainBenchOptions& opt,
                   const ProcessGrid& grid) {
  cfg.parallel.schedule = c.schedule;
  cfg.parallel.virtual_stages = c.v;
  cfg.train.grad_accum = c.m;
  Trainer tr(cfg, grid);
  tr.enable_trace(Trace::Clock::now());
  const int p = grid.shape().pp;
  std::vector<double> bubbles, seconds;
  for (int i = 0; i < opt.warmup + opt.steps; ++i) {
    tr.trace().clear();
    grid.world().barrier();
    const StepStats s = tr.train_step();
    if (i < opt.warmup) continue;
    // Busy fraction of the pipeline: every rank's compute over p times the slowest step.
    double busy = 0.0, span = tr.last_pipeline_seconds();
    for (const TraceEvent& e : tr.trace().events())
      if (e.cat == "compute") busy += e.dur_us * 1e-6;
    grid.world().allreduce(&busy, 1, ReduceOp::kSum);
    grid.world().allreduce(&span, 1, ReduceOp::kMax);
    bubbles.push_back(1.0 - busy / (p * span));
    seconds.push_back(s.seconds);
  }
  PipeResult r{c};
  // Each virtual stage's measured forward and backward (stages are not equally costly:
  // the last one carries the lm_head).
  const StageSeconds st = stage_seconds(tr, grid);
  const std::vector<double>&fwd = st.fwd, &bwd = st.bwd;
  const int S = p * c.v;
  for (int s = 0; s < S; ++s) {
    r.t_fwd = std::max(r.t_fwd, fwd[size_t(s)]);
    r.t_bwd = std::max(r.t_bwd, bwd[size_t(s)]);
  }
  double step_s = median(seconds);
  grid.world().allreduce(&step_s, 1, ReduceOp::kMax);
  r.tokens_per_s = double(cfg.train.micro_batch) * cfg.train.seq_len * c.m / step_s;
  r.measured_bubble = median(bubbles);
  SimOptions so;
  so.stage_fwd = fwd;
  so.stage_bwd = bwd;
  const SimResult sim = simulate(build_schedule(c.schedule, p, c.m, c.v), c.m, c.v, so);
  LOOM_CHECK(sim.ok, "simulation failed: {}", sim.error);
  r.predicted_bubble = sim.bubble_fraction;
  return r;
}

// The first step's loss of the pipeline against one process on the same batch.
void validate(const RunConfig& cfg, const ProcessGrid& grid) {
  RunConfig one = cfg;
  one.parallel.pp = 1;
  one.parallel.schedule = "1f1b";
  one.parallel.virtual_stages = 1;
  double want = 0;
  if (grid.rank() == 0) {
    const ProcessGrid alone = ProcessGrid::single();
    Trainer ref(one, alone);
    want = ref.train_step().loss;
  }
  grid.world().allreduce(&want, 1, ReduceOp::kSum);
  Trainer tr(cfg, grid);
  const double got = tr.train_step().loss;
  LOOM_CHECK(std::abs(got - want) <= 1e-5 * std::abs(want),
             "pipeline loss {} differs from the single process's {}: not timing a wrong result",
             got, want);
  if (grid.rank() == 0)
    fmt::print("validated: first-step loss {:.6f} (pp {}) vs {:.6f} (one process)\n", got,
               grid.shape().pp, want);
}

void print_table(const std::vector<PipeResult>& rs, const RunConfig& cfg, int p) {
  fmt::print("bench train pp: pp={} L={} C={} T={} micro_batch={}, 1 thread per rank "
             "(median of steps)\n",
             p, cfg.model.n_layer, cfg.model.n_embd, cfg.train.seq_len, cfg.train.micro_batch);
  fmt::print("{:<16} {:>4} {:>10} {:>10} {:>10} {:>10} {:>11} {:>11}\n", "schedule", "m",
             "tokens/s", "bubble", "simulated", "meas/sim", "max t_F ms", "max t_B ms");
  for (const PipeResult& r : rs)
    fmt::print("{:<16} {:>4} {:>10.1f} {:>9.1f}% {:>9.1f}% {:>10.2f} {:>11.2f} {:>11.2f}\n",
               r.c.v > 1 ? fmt::format("{} v{}", r.c.schedule, r.c.v) : r.c.schedule, r.c.m,
               r.tokens_per_s, 100 * r.measured_bubble, 100 * r.predicted_bubble,
               r.predicted_bubble > 0 ? r.measured_bubble / r.predicted_bubble : 0.0,
               1e3 * r.t_fwd, 1e3 * r.t_bwd);
}

// Larger pipelines than this machine can time: the simulator's bubble (t_B = 2 t_F).
nlohmann::json simulated_only() {
  nlohmann::json out = nlohmann::json::array();
  fmt::print("simulated only (t_B = 2 t_F): bubble fraction\n{:<6} {:>4} {:>8} {:>8} {:>14} "
             "{:>16}\n", "pp", "m", "gpipe", "1f1b", "interleaved v2", "(p-1)/(m+p-1)");
  for (int p : {4, 8})
    for (int m : {8, 16, 32}) {
      auto bubble = [&](const std::string& s, int v) {
        return simulate(build_schedule(s, p, m, v), m, v).bubble_fraction;
      };
      const double g = bubble("gpipe", 1), o = bubble("1f1b", 1), i = bubble("interleaved", 2);
      const double textbook = double(p - 1) / (m + p - 1);
      fmt::print("{:<6} {:>4} {:>7.1f}% {:>7.1f}% {:>13.1f}% {:>15.1f}%\n", p, m, 100 * g,
                 100 * o, 100 * i, 100 * textbook);
      out.push_back({{"pp", p}, {"m", m}, {"gpipe", g}, {"1f1b", o}, {"interleaved_v2", i},
                     {"textbook_1f1b", textbook}});
    }
  return out;
}

}  // namespace

int bench_train_pp(RunConfig cfg, const TrainBenchOptions& opt, const ProcessGrid& grid) {
  const int p = grid.shape().pp;
  const fs::path dir = fs::temp_directory_path() / fmt::format("loom_bench_pp_{}", ::getppid());
  if (grid.rank() == 0) fs::create_directories(dir);
  grid.world().barrier();
  cfg.train.steps = 1 + opt.warmup + opt.steps;
  cfg.data.train = (dir / "train.bin").string();
  cfg.data.val = "";
  cfg.run.dir = (dir / "run").string();
  cfg.parallel = ParallelConfig{};
  cfg.parallel.pp = p;
  kernels::set_compute_threads(1);
  RunConfig sized = cfg;
  sized.train.grad_accum = 8;
  if (grid.rank() == 0) write_random_shard(cfg.data.train, sized);
  grid.world().barrier();
  validate(cfg, grid);
  std::vector<PipeResult> results;
  for (const std::string s : {"1f1b", "interleaved"})
    for (int m : {2, 4, 8}) {
      if (s == "interleaved" && (m % p != 0 || cfg.model.n_layer < 2 * p)) continue;
      results.push_back(measure(cfg, PipeCase{s, s == "interleaved" ? 2 : 1, m}, opt, grid));
    }
  grid.world().barrier();
  if (grid.rank() == 0) fs::remove_all(dir);
  if (grid.rank() != 0) return 0;
  print_table(results, cfg, p);
  fmt::print("{}; gemm {}; {}\n", opt.cpu, cfg.run.gemm, opt.openblas);
  nlohmann::json rows = nlohmann::json::array();
  for (const PipeResult& r : results)
    rows.push_back({{"schedule", r.c.schedule}, {"virtual_stages", r.c.v}, {"microbatches", r.c.m},
                    {"tokens_per_s", r.tokens_per_s}, {"measured_bubble", r.measured_bubble},
                    {"simulated_bubble", r.predicted_bubble}, {"t_fwd_s", r.t_fwd},
                    {"t_bwd_s", r.t_bwd}});
  const nlohmann::json out = {{"pp", p},           {"cpu", opt.cpu},
                              {"gemm", cfg.run.gemm}, {"openblas", opt.openblas},
                              {"measured", rows}, {"simulated", simulated_only()}};
  write_file_atomic(opt.json_out, out.dump(2));
  fmt::print("wrote {}\n", opt.json_out.string());
  return 0;
}

}  // namespace loom
