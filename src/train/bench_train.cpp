#include "train/bench_train.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "core/check.h"
#include "core/file_io.h"
#include "core/philox.h"
#include "core/timer.h"
#include "data/shard.h"
#include "kernels/bench_kernels.h"
#include "kernels/kernels.h"
#include "kernels/openblas.h"
#include "train/reference_io.h"
#include "train/throughput.h"
#include "train/trainer.h"

namespace loom {
namespace fs = std::filesystem;

void write_random_shard(const fs::path& path, const RunConfig& cfg) {
  const TrainConfig& t = cfg.train;
  const size_t n = size_t(t.steps) * t.grad_accum * t.micro_batch * t.seq_len + 1;
  const Philox rng(cfg.train.seed, name_hash("bench.tokens"));
  std::vector<uint16_t> tokens(n);
  for (size_t i = 0; i < n; ++i) tokens[i] = uint16_t(rng.block(i)[0] % cfg.model.vocab_size);
  write_shard(path, tokens);
}

namespace {

struct Side {
  std::vector<double> losses, seconds;
  std::string openblas_core;  // PyTorch's
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

Side run_torch(const fs::path& dir, const TrainBenchOptions& opt, const std::string& precision) {
  const std::string cmd = fmt::format(
      "OPENBLAS_NUM_THREADS={0} OMP_NUM_THREADS={0} /usr/bin/python3 '{1}' '{2}' {0} {3} {4} {5}",
      opt.threads, opt.torch_script.string(), dir.string(), opt.steps, opt.warmup, precision);
  LOOM_REQUIRE(std::system(cmd.c_str()) == 0,
               "the PyTorch side failed ({}); it needs Debian's python3-torch", cmd);
  const nlohmann::json j = nlohmann::json::parse(read_file_text(dir / "torch_result.json"));
  const nlohmann::json& core = j["openblas_core"];
  return Side{j["losses"].get<std::vector<double>>(), j["seconds"].get<std::vector<double>>(),
              core.is_string() ? core.get<std::string>() : std::string("none (not OpenBLAS)")};
}

}  // namespace

namespace {

// One row of the table: an implementation in a precision, priced against that dtype's peak.
struct Row {
  std::string name, key;  // the table's and the JSON's
  const Side* side;
  double peak;
};

double max_rel_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i)
    worst = std::max(worst, std::abs(a[i] - b.at(i)) / std::abs(b[i]));
  return worst;
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
  kernels::set_compute_threads(opt.threads);
  const DType precision = parse_dtype(cfg.train.precision);
  const bool lowp = precision != DType::kF32;
  // PyTorch 1.13's CPU autocast has bf16 only: fp16 is compared with its fp32.
  const std::string torch_precision = precision == DType::kBF16 ? "bf16" : "fp32";

  const ProcessGrid grid = ProcessGrid::single();
  RunConfig cfg32 = cfg;
  cfg32.train.precision = "fp32";
  Side loom32, loom_lp;
  double flops = 0;
  {
    Trainer tr(cfg32, grid);
    write_reference_inputs(dir, tr);  // the same initial weights for every side
    flops = tr.flops_per_token();
  }
  const double peak32 = kernels::measure_gemm_peak_gflops(DType::kF32) * 1e9;
  const double peak_lp = lowp ? kernels::measure_gemm_peak_gflops(precision) * 1e9 : peak32;
  fmt::print("bench train: L={} C={} NH={} T={} B={} accum={}, {} threads, {} warm-up + {} timed "
             "steps, precision {}\n{}; GEMM peak fp32 {:.0f} GFLOP/s",
             cfg.model.n_layer, cfg.model.n_embd, cfg.model.n_head, cfg.train.seq_len,
             cfg.train.micro_batch, cfg.train.grad_accum, opt.threads, opt.warmup, opt.steps,
             cfg.train.precision, kFlopsFormula, peak32 / 1e9);
  if (lowp)
    fmt::print(", {} {:.0f} GFLOP/s ({} operands{})", dtype_name(precision), peak_lp / 1e9,
               dtype_name(kernels::compute_storage(precision)),
               kernels::compute_storage(precision) == DType::kF32
                   ? ": this oneDNN has no such matmul here, so sgemm on rounded values"
                   : ", " + kernels::gemm_peak_impl(precision));
  fmt::print("\n{}; {}\n", opt.cpu, opt.openblas);
  {
    Trainer tr(cfg32, grid);
    loom32 = run_loom(tr, opt.warmup);
  }
  if (lowp) {
    Trainer tr(cfg, grid);
    loom_lp = run_loom(tr, opt.warmup);
  }
  const Side torch_side = run_torch(dir, opt, torch_precision);
  fmt::print("PyTorch ran on OpenBLAS core {}\n", torch_side.openblas_core);

  // Validate before reporting: every side trained the same model on the same data. The
  // torch side of the same precision within 1e-4 (fp32) or 1e-2 (bf16: the loss tolerance
  // of the autocast tests); loom's low precision within 2e-2 of its fp32.
  const Side& same = precision == DType::kBF16 ? loom_lp : loom32;
  const double torch_diff = max_rel_diff(same.losses, torch_side.losses);
  const double lp_diff = lowp ? max_rel_diff(loom_lp.losses, loom32.losses) : 0.0;
  const bool valid = torch_diff < (precision == DType::kBF16 ? 1e-2 : 1e-4) && lp_diff < 2e-2;
  const double tokens = double(cfg.train.micro_batch) * cfg.train.seq_len * cfg.train.grad_accum;
  nlohmann::json out = {{"model", {{"n_layer", cfg.model.n_layer}, {"n_embd", cfg.model.n_embd},
                                   {"n_head", cfg.model.n_head}, {"seq_len", cfg.train.seq_len},
                                   {"micro_batch", cfg.train.micro_batch}}},
                        {"threads", opt.threads}, {"gemm_peak_gflops", peak32 / 1e9},
                        {"precision", cfg.train.precision}, {"torch_precision", torch_precision},
                        {"gemm_peak_gflops_precision", peak_lp / 1e9},
                        {"flops_per_token", flops}, {"max_rel_loss_diff", torch_diff},
                        {"max_rel_loss_diff_vs_loom_fp32", lp_diff},
                        {"valid", valid}, {"cpu", opt.cpu}, {"openblas", opt.openblas},
                        {"gemm", cfg.run.gemm},
                        {"pytorch_openblas_core", torch_side.openblas_core}};
  std::vector<Row> rows{{"loom", "loom", &loom32, peak32}};
  if (lowp)
    rows.push_back({fmt::format("loom {}", dtype_name(precision)), "loom_lowp", &loom_lp, peak_lp});
  rows.push_back({precision == DType::kBF16 ? "pytorch bf16" : "pytorch", "pytorch", &torch_side,
                  precision == DType::kBF16 ? peak_lp : peak32});
  fmt::print("\n{:<14} {:>12} {:>12} {:>8} {:>10}\n", "impl", "ms/step", "tokens/s", "MFU",
             "vs torch");
  const double torch_tps = tokens / median(torch_side.seconds);
  for (const Row& r : rows) {
    const double sec = median(r.side->seconds), tps = tokens / sec;
    fmt::print("{:<14} {:>12.1f} {:>12.1f} {:>7.1f}% {:>9.2f}x\n", r.name, sec * 1e3, tps,
               100.0 * tps * flops / r.peak, tps / torch_tps);
    out[r.key] = {{"median_step_s", sec}, {"tokens_per_s", tps}, {"mfu", tps * flops / r.peak},
                {"step_seconds", r.side->seconds}, {"losses", r.side->losses}};
  }
  out["ratio_loom_over_torch"] = out["loom"]["tokens_per_s"].get<double>() / torch_tps;
  if (lowp) {
    out["ratio_loom_lowp_over_torch"] = out["loom_lowp"]["tokens_per_s"].get<double>() / torch_tps;
    out["ratio_loom_lowp_over_loom_fp32"] = out["loom_lowp"]["tokens_per_s"].get<double>() /
                                            out["loom"]["tokens_per_s"].get<double>();
  }
  fmt::print("validation: max relative loss difference loom{} vs torch{} over {} steps = {:.2e}",
             precision == DType::kBF16 ? " bf16" : "", precision == DType::kBF16 ? " bf16" : "",
             same.losses.size(), torch_diff);
  if (lowp) fmt::print(", loom {} vs loom fp32 {:.2e}", dtype_name(precision), lp_diff);
  fmt::print(" ({})\n", valid ? "ok" : "MISMATCH");
  write_file_atomic(opt.json_out, out.dump(2));
  fmt::print("wrote {}\n", opt.json_out.string());
  fs::remove_all(dir);
  return valid ? 0 : 1;
}

}  // namespace loom

namespace loom {
namespace {

struct DpSide {
  std::vector<double> seconds, waits, hidden;
  Traffic traffic;  // what the dp group's operations carried in the last timed step
};

DpSide time_steps(Trainer& tr, int warmup, const Comm& dp) {
  DpSide d;
  for (int i = 0; i < tr.config().train.steps; ++i) {
    const Traffic before = dp.traffic();
    const StepStats st = tr.train_step();
    d.traffic = dp.traffic();
    for (auto& [kind, count] : d.traffic) {
      if (const auto b = before.find(kind); b != before.end()) {
        count.ops -= b->second.ops;
        count.bytes -= b->second.bytes;
      }
    }
    std::erase_if(d.traffic, [](const auto& kv) { return kv.second.ops == 0; });
    if (i < warmup) continue;
    d.seconds.push_back(st.seconds);
    d.waits.push_back(tr.data_parallel().last_wait_seconds());
    d.hidden.push_back(tr.data_parallel().last_hidden_fraction());
  }
  return d;
}

// The bucketed all-reduces of one step with no compute to hide behind (median seconds).
double comm_only_seconds(Trainer& tr, Comm& dp, int reps) {
  std::vector<double> t;
  float* g = tr.model().grads().data();
  for (int r = 0; r < reps; ++r) {
    dp.barrier();
    Timer timer;
    std::vector<std::unique_ptr<CommHandle>> inflight;
    for (const GradBucket& b : tr.data_parallel().buckets())
      inflight.push_back(dp.allreduce_async(g + b.begin, b.end - b.begin, ReduceOp::kSum));
    for (auto& h : inflight) h->wait();
    t.push_back(timer.seconds());
  }
  return median(t);
}

}  // namespace

int bench_train_dp(RunConfig cfg, const TrainBenchOptions& opt, const ProcessGrid& grid) {
  const int n = grid.shape().dp;
  const bool root = grid.rank() == 0;
  const fs::path dir = fs::temp_directory_path() / fmt::format("loom_bench_dp_{}", ::getpid());
  fs::create_directories(dir);
  cfg.train.steps = opt.warmup + opt.steps;
  cfg.train.grad_accum = 1;
  cfg.data.train = (dir / "train.bin").string();
  cfg.data.val = "";
  cfg.run.dir = (dir / "run").string();
  cfg.parallel.zero = 0;
  kernels::set_compute_threads(1);
  RunConfig one = cfg;
  one.parallel.dp = 1;
  one.train.steps = cfg.train.steps;
  RunConfig many = cfg;
  many.parallel.dp = n;
  many.train.steps = cfg.train.steps;
  // Enough tokens for the dp=n run (which reads n times the rows per step).
  RunConfig sized = many;
  sized.train.micro_batch *= n;
  write_random_shard(cfg.data.train, sized);

  DpSide single;
  if (root) {
    const ProcessGrid alone = ProcessGrid::single();
    Trainer tr(one, alone);
    single = time_steps(tr, opt.warmup, alone.dp_comm());
  }
  grid.world().barrier();
  Trainer tr(many, grid);
  const DpSide multi = time_steps(tr, opt.warmup, grid.dp_comm());
  const double comm_s = comm_only_seconds(tr, grid.dp_comm(), 3);
  double wait_s = median(multi.waits), step_s = median(multi.seconds);
  grid.world().allreduce(&wait_s, 1, ReduceOp::kMax);
  grid.world().allreduce(&step_s, 1, ReduceOp::kMax);
  fs::remove_all(dir);
  if (!root) return 0;

  const double tokens = double(cfg.train.micro_batch) * cfg.train.seq_len;
  const double tps1 = tokens / median(single.seconds), tpsn = tokens * n / step_s;
  const double efficiency = tpsn / (n * tps1);
  const double hidden = median(multi.hidden);
  fmt::print("bench train dp: L={} C={} T={} micro_batch={} per rank, 1 thread per rank, {} "
             "timed steps (median)\n",
             cfg.model.n_layer, cfg.model.n_embd, cfg.train.seq_len, cfg.train.micro_batch,
             opt.steps);
  fmt::print("{}; gemm {}; {}\n", opt.cpu, cfg.run.gemm, opt.openblas);
  uint64_t bytes = 0;
  nlohmann::json kinds = nlohmann::json::object();
  std::string by_kind;
  for (const auto& [kind, count] : multi.traffic) {
    bytes += count.bytes;
    kinds[kind] = {{"ops", count.ops}, {"bytes", count.bytes}};
    by_kind += fmt::format("{}{} x{} {:.2f} MiB", by_kind.empty() ? "" : ", ", kind, count.ops,
                           count.bytes / 1048576.0);
  }
  fmt::print("{:<8} {:>12} {:>12} {:>12} {:>16}\n", "dp", "s/step", "tokens/s", "efficiency",
             "dp MiB/step");
  fmt::print("{:<8} {:>12.3f} {:>12.1f} {:>12} {:>16}\n", 1, median(single.seconds), tps1, "-",
             "-");
  fmt::print("{:<8} {:>12.3f} {:>12.1f} {:>11.1f}% {:>16.2f}\n", n, step_s, tpsn,
             100 * efficiency, bytes / 1048576.0);
  fmt::print("dp traffic per step and rank (bytes sent, as the bandwidth-optimal algorithm "
             "sends them; counted by the trainer's communicator): {}\n", by_kind);
  fmt::print("gradient all-reduce: {:.3f} s with nothing to overlap ({} buckets); in training "
             "{} buckets, {:.1f}% of the gradient bytes, were reduced behind backward; the "
             "optimizer then waited {:.3f} s (the rest, plus rank skew)\n",
             comm_s, tr.data_parallel().buckets().size(), tr.data_parallel().last_early_buckets(),
             100 * hidden, wait_s);
  const nlohmann::json out = {
      {"dp", n}, {"cpu", opt.cpu}, {"gemm", cfg.run.gemm}, {"openblas", opt.openblas},
      {"tokens_per_s_dp1", tps1}, {"tokens_per_s_dpn", tpsn},
      {"weak_scaling_efficiency", efficiency}, {"allreduce_alone_s", comm_s},
      {"exposed_wait_s", wait_s}, {"hidden_fraction", hidden},
      {"buckets", tr.data_parallel().buckets().size()},
      {"buckets_complete_before_backward_end", tr.data_parallel().last_early_buckets()},
      {"step_seconds_dp1", single.seconds}, {"step_seconds_dpn", multi.seconds},
      {"dp_bytes_per_step", bytes}, {"dp_traffic_per_step", kinds}};
  write_file_atomic(opt.json_out, out.dump(2));
  fmt::print("wrote {}\n", opt.json_out.string());
  return 0;
}

}  // namespace loom
