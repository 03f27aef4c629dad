#include "train/bench_train.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "core/check.h"
#include "core/file_io.h"
#include "core/philox.h"
#include "data/shard.h"
#include "train/reference_io.h"
#include "train/throughput.h"
#include "train/trainer.h"

namespace loom {
namespace fs = std::filesystem;

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// A shard of random tokens long enough for every step (speed does not depend on the text).
void write_random_shard(const fs::path& path, const RunConfig& cfg) {
  const TrainConfig& t = cfg.train;
  const size_t n = size_t(t.steps) * t.grad_accum * t.micro_batch * t.seq_len + 1;
  const Philox rng(cfg.train.seed, name_hash("bench.tokens"));
  std::vector<uint16_t> tokens(n);
  for (size_t i = 0; i < n; ++i) tokens[i] = uint16_t(rng.block(i)[0] % cfg.model.vocab_size);
  write_shard(path, tokens);
}

struct Side {
  std::vector<double> losses, seconds;
};

Side run_loom(Trainer& tr, int warmup) {
  Side s;
  for (int i = 0; i < tr.config().train.steps; ++i) {
    const StepStats st = tr.train_step();
    s.losses.push_back(st.loss);
    if (i >= warmup) s.seconds.push_back(st.seconds);
  }
  return s;
}

Side run_torch(const fs::path& dir, const TrainBenchOptions& opt) {
  const std::string cmd = fmt::format(
      "OPENBLAS_NUM_THREADS={0} OMP_NUM_THREADS={0} /usr/bin/python3 '{1}' '{2}' {0} {3} {4}",
      opt.threads, opt.torch_script.string(), dir.string(), opt.steps, opt.warmup);
  LOOM_REQUIRE(std::system(cmd.c_str()) == 0,
               "the PyTorch side failed ({}); it needs Debian's python3-torch", cmd);
  const nlohmann::json j = nlohmann::json::parse(read_file_text(dir / "torch_result.json"));
  return Side{j["losses"].get<std::vector<double>>(), j["seconds"].get<std::vector<double>>()};
}

}  // namespace

int bench_train(RunConfig cfg, const TrainBenchOptions& opt) {
  const fs::path dir = fs::temp_directory_path() / fmt::format("loom_bench_train_{}", ::getpid());
  fs::create_directories(dir);
  cfg.train.steps = opt.warmup + opt.steps;
  cfg.data.train = (dir / "train.bin").string();
  cfg.data.val = "";
  cfg.run.dir = (dir / "run").string();
  cfg.run.threads = opt.threads;
  write_random_shard(cfg.data.train, cfg);
  omp_set_num_threads(opt.threads);

  const ProcessGrid grid = ProcessGrid::single();
  Trainer tr(cfg, grid);
  write_reference_inputs(dir, tr);
  const double peak = measure_gemm_peak_gflops() * 1e9;
  fmt::print("bench train: L={} C={} NH={} T={} B={} accum={}, {} threads, {} warm-up + {} timed "
             "steps\n{}; GEMM peak {:.0f} GFLOP/s\n",
             cfg.model.n_layer, cfg.model.n_embd, cfg.model.n_head, cfg.train.seq_len,
             cfg.train.micro_batch, cfg.train.grad_accum, opt.threads, opt.warmup, opt.steps,
             kFlopsFormula, peak / 1e9);
  const Side loom_side = run_loom(tr, opt.warmup);
  const Side torch_side = run_torch(dir, opt);

  // Validate before reporting: both implementations trained the same model on the same data.
  double max_rel = 0;
  for (size_t i = 0; i < loom_side.losses.size(); ++i)
    max_rel = std::max(max_rel, std::abs(loom_side.losses[i] - torch_side.losses.at(i)) /
                                    std::abs(torch_side.losses[i]));
  const bool valid = max_rel < 1e-4;
  const double tokens = double(cfg.train.micro_batch) * cfg.train.seq_len * cfg.train.grad_accum;
  const double flops = tr.flops_per_token();
  nlohmann::json out = {{"model", {{"n_layer", cfg.model.n_layer}, {"n_embd", cfg.model.n_embd},
                                   {"n_head", cfg.model.n_head}, {"seq_len", cfg.train.seq_len},
                                   {"micro_batch", cfg.train.micro_batch}}},
                        {"threads", opt.threads}, {"gemm_peak_gflops", peak / 1e9},
                        {"flops_per_token", flops}, {"max_rel_loss_diff", max_rel},
                        {"valid", valid}};
  fmt::print("\n{:<10} {:>12} {:>12} {:>8} {:>10}\n", "impl", "ms/step", "tokens/s", "MFU",
             "vs torch");
  const double torch_tps = tokens / median(torch_side.seconds);
  for (const auto& [name, side] : {std::pair{"loom", &loom_side}, {"pytorch", &torch_side}}) {
    const double sec = median(side->seconds), tps = tokens / sec;
    fmt::print("{:<10} {:>12.1f} {:>12.1f} {:>7.1f}% {:>9.2f}x\n", name, sec * 1e3, tps,
               100.0 * tps * flops / peak, tps / torch_tps);
    out[name] = {{"median_step_s", sec}, {"tokens_per_s", tps}, {"mfu", tps * flops / peak},
                 {"step_seconds", side->seconds}, {"losses", side->losses}};
  }
  out["ratio_loom_over_torch"] = out["loom"]["tokens_per_s"].get<double>() / torch_tps;
  fmt::print("validation: max relative loss difference loom vs torch over {} steps = {:.2e} ({})\n",
             loom_side.losses.size(), max_rel, valid ? "ok" : "MISMATCH");
  write_file_atomic(opt.json_out, out.dump(2));
  fmt::print("wrote {}\n", opt.json_out.string());
  fs::remove_all(dir);
  return valid ? 0 : 1;
}

}  // namespace loom
