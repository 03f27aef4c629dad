// loom bench kernels | train — tables beside the competitor, JSON next to them.
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <thread>
#include <map>
#include <optional>

#include <oneapi/dnnl/dnnl_version.h>

#include "cli/command.h"
#include "comm/bench_collectives.h"
#include "comm/mpi_comm.h"
#include "core/check.h"
#include "core/dtype.h"
#include "core/file_io.h"
#include "core/timer.h"
#include "kernels/bench_kernels.h"
#include "kernels/kernels.h"
#include "kernels/openblas.h"
#include "launch/child.h"
#include "comm/process_grid.h"
#include "infer/bench_generate.h"
#include "infer/generate.h"
#include "serve/bench_serve.h"
#include "model/param_spec.h"
#include "train/bench_train.h"

#ifndef LOOM_SOURCE_DIR
#define LOOM_SOURCE_DIR "."
#endif

namespace loom::cli {
namespace {

// The GEMM peak per dtype table; the JSON rows, each dtype's best marked "peak".
nlohmann::json print_dtype_peaks(const std::vector<kernels::KernelBenchRow>& rows) {
  fmt::print("\nGEMM peak per input dtype (fp32 accumulation), median of the repeats:\n"
             "{:<6} {:>6} {:>6} {:>6} {:>10} {:>9}  {}\n", "dtype", "M", "N", "K", "time(us)",
             "GFLOP/s", "oneDNN implementation");
  std::map<std::string, double> best;
  for (const kernels::KernelBenchRow& r : rows) best[r.dtype] = std::max(best[r.dtype], r.gflops);
  nlohmann::json out = nlohmann::json::array();
  for (const kernels::KernelBenchRow& r : rows) {
    const bool peak = r.gflops == best[r.dtype];
    fmt::print("{:<6} {:>6} {:>6} {:>6} {:>10.1f} {:>9.1f}  {}{}\n", r.dtype, r.M, r.N, r.K,
               r.median_seconds * 1e6, r.gflops, r.impl, peak ? "  <- peak" : "");
    out.push_back({{"dtype", r.dtype}, {"M", r.M}, {"N", r.N}, {"K", r.K},
                   {"median_s", r.median_seconds}, {"gflops", r.gflops}, {"impl", r.impl},
                   {"peak", peak}});
  }
  for (const char* t : {"bf16", "fp16"}) {
    if (!best.count(t)) {
      fmt::print("{}: oneDNN {}.{} has no {} matmul on this CPU\n", t, DNNL_VERSION_MAJOR,
                 DNNL_VERSION_MINOR, t);
      continue;
    }
    fmt::print("{} peak / fp32 peak: {:.2f}x{}\n", t, best[t] / best["fp32"],
               best[t] < best["fp32"] ? " (slower than fp32 on this CPU)" : "");
  }
  return out;
}

namespace fs = std::filesystem;

// The sweep's JSON rows: impl says which kind ("", "wide", "... one per core"), and the
// flags the calibration reads say it again.
nlohmann::json sweep_json(const std::vector<kernels::KernelBenchRow>& rows) {
  nlohmann::json out = nlohmann::json::array();
  for (const kernels::KernelBenchRow& r : rows)
    out.push_back({{"dtype", r.dtype}, {"threads", r.threads}, {"M", r.M}, {"N", r.N},
                   {"K", r.K}, {"median_s", r.median_seconds}, {"gflops", r.gflops},
                   {"impl", r.impl},
                   {"one_per_core", r.impl.find("one per core") != std::string::npos},
                   {"wide", r.impl.rfind("wide", 0) == 0}});
  return out;
}

// GFLOP/s by the smallest dimension, per dtype and thread count; the JSON rows.
nlohmann::json print_gemm_sweep(const std::vector<kernels::KernelBenchRow>& rows) {
  fmt::print("\nGEMM GFLOP/s by its smallest dimension s: (M,M,s) and (M,s,M), M = {}:\n"
             "{:<6} {:>7} {:>6} {:>6} {:>6} {:>9}\n", kernels::kGemmSweepM, "dtype", "threads",
             "M", "N", "K", "GFLOP/s");
  const nlohmann::json out = sweep_json(rows);
  for (const nlohmann::json& r : out)
    fmt::print("{:<6} {:>7} {:>6} {:>6} {:>6} {:>9.1f}{}{}\n", r["dtype"].get<std::string>(),
               r["threads"].get<int>(), r["M"].get<int>(), r["N"].get<int>(), r["K"].get<int>(),
               r["gflops"].get<double>(), r["wide"].get<bool>() ? "  linear fwd+bwd" : "",
               r["one_per_core"].get<bool>()
                   ? "  (one single-threaded per core at once: their sum)" : "");
  return out;
}

// The one-thread sweep run by `cores` processes at once (loom bench kernels --sweep-worker),
// as ranks of one thread each run: per shape, the sum of their GFLOP/s, impl "... one per
// core". Processes, not threads: a process's threads share its allocator and page tables.
std::vector<kernels::KernelBenchRow> sweep_one_per_core(int cores, int repeats) {
  const fs::path dir = fs::temp_directory_path() / fmt::format("loom-sweep-{}", ::getpid());
  fs::create_directories(dir);
  const std::string exe = fs::read_symlink("/proc/self/exe").string();
  std::string cmd = "pids=''; ";
  for (int i = 0; i < cores; ++i)
    cmd += fmt::format("'{}' bench kernels --sweep-worker --repeats {} --json '{}/w{}.json' "
                       "> '{}/w{}.log' 2>&1 & pids=\"$pids $!\"; ", exe, repeats, dir.string(), i,
                       dir.string(), i);
  cmd += "for p in $pids; do wait $p || exit 1; done";
  const CommandResult r = run_command(cmd, 3600);
  LOOM_REQUIRE(!r.timed_out && r.status == 0, "bench kernels: the one-per-core sweep {}; see {}",
               r.timed_out ? "ran past an hour" : "failed", dir.string());
  std::vector<kernels::KernelBenchRow> sum;
  for (int i = 0; i < cores; ++i) {
    const nlohmann::json w = nlohmann::json::parse(read_file_text(dir / fmt::format("w{}.json", i)));
    LOOM_REQUIRE(i == 0 || w.size() == sum.size(), "bench kernels: sweep workers disagree");
    for (size_t j = 0; j < w.size(); ++j) {
      if (i == 0) {
        kernels::KernelBenchRow row;
        row.dtype = w[j].at("dtype");
        row.M = w[j].at("M"), row.N = w[j].at("N"), row.K = w[j].at("K");
        row.threads = cores;
        row.impl = w[j].at("impl").get<std::string>().empty()
                       ? "one per core" : w[j].at("impl").get<std::string>() + ", one per core";
        sum.push_back(row);
      }
      sum[j].gflops += w[j].at("gflops").get<double>();
      sum[j].median_seconds = std::max(sum[j].median_seconds, w[j].at("median_s").get<double>());
    }
  }
  fs::remove_all(dir);
  return sum;
}

int run_bench_kernels(int threads, int repeats, const std::string& json_out, bool worker) {
  if (worker) {  // one process of sweep_one_per_core
    kernels::set_compute_threads(1);
    write_file_atomic(json_out, sweep_json(kernels::bench_gemm_sweep(repeats, {1})).dump());
    return 0;
  }
  const std::string openblas = kernels::use_best_openblas_core(), cpu = kernels::cpu_summary();
  kernels::set_compute_threads(threads);
  fmt::print("bench kernels: fp32 kernels of GPT-2 124M (B=4, T=256), {} threads, median of {}\n"
             "{}; {}\n",
             threads, repeats, cpu, openblas);
  std::vector<kernels::KernelBenchRow> rows = kernels::bench_gemm_shapes(repeats);
  for (kernels::KernelBenchRow& r : kernels::bench_layer_kernels(repeats)) rows.push_back(r);
  fmt::print("{:<24} {:>6} {:>6} {:>6} {:<9} {:>10} {:>9}\n", "shape", "M", "N", "K", "backend",
             "time(us)", "GFLOP/s");
  nlohmann::json out = nlohmann::json::array();
  for (const kernels::KernelBenchRow& r : rows) {
    fmt::print("{:<24} {:>6} {:>6} {:>6} {:<9} {:>10.1f} {:>9}\n", r.name, r.M, r.N, r.K,
               r.backend, r.median_seconds * 1e6,
               r.gflops > 0 ? fmt::format("{:.1f}", r.gflops) : std::string("-"));
    out.push_back({{"name", r.name}, {"M", r.M}, {"N", r.N}, {"K", r.K},
                   {"backend", r.backend}, {"median_s", r.median_seconds},
                   {"gflops", r.gflops}});
  }
  const nlohmann::json peaks = print_dtype_peaks(kernels::bench_gemm_dtypes(repeats));
  const std::vector<int> counts = threads > 1 ? std::vector<int>{1, threads} : std::vector<int>{1};
  std::vector<kernels::KernelBenchRow> sweep_rows = kernels::bench_gemm_sweep(repeats, counts);
  if (threads > 1)
    for (kernels::KernelBenchRow& r : sweep_one_per_core(threads, repeats))
      sweep_rows.push_back(r);
  const nlohmann::json sweep = print_gemm_sweep(sweep_rows);
  // Streaming bandwidth (arrays beyond the caches) on one thread and on all of them.
  nlohmann::json stream = nlohmann::json::array();
  for (int n : counts) {
    kernels::set_compute_threads(n);
    const double gbs = kernels::measure_read_bandwidth_gbs();
    fmt::print("memory read bandwidth, {} thread{}: {:.1f} GB/s\n", n, n > 1 ? "s" : "", gbs);
    stream.push_back({{"threads", n}, {"gbs", gbs}});
  }
  kernels::set_compute_threads(threads);
  write_file_atomic(json_out, nlohmann::json{{"threads", threads}, {"cpu", cpu},
                                             {"openblas", openblas}, {"gemm", out},
                                             {"gemm_dtypes", peaks}, {"gemm_sweep", sweep},
                                             {"read_bandwidth", stream}}
                                  .dump(2));
  fmt::print("wrote {}\n", json_out);
  return 0;
}

// Ranks computing between collectives, as a training step's do, one thread each, per GEMM
// dtype: a work unit (~50 ms of single-threaded GEMMs of a block's shape) timed on rank 0
// while the others sleep, then rounds in which every rank computes one unit and all-reduces
// a value. On a host with more ranks than cores the rounds take longer than the units'
// share of the cores: what the planner calls the oversubscribed efficiency.
nlohmann::json busy_ranks(Comm& world) {
  kernels::set_compute_threads(1);
  constexpr int M = 1024, N = 1024, K = 128, kRounds = 6;
  const std::vector<float> a(size_t(M) * K, 0.01f), b(size_t(N) * K, 0.02f);
  std::vector<float> c(size_t(M) * N);
  std::vector<uint16_t> A(a.size() * 2), B(b.size() * 2);
  nlohmann::json out = nlohmann::json::object();
  for (DType t : {DType::kF32, DType::kBF16, DType::kF16}) {
    if (!kernels::gemm_typed_available(t)) continue;
    kernels::convert(A.data(), t, a.data(), DType::kF32, a.size());
    kernels::convert(B.data(), t, b.data(), DType::kF32, b.size());
    auto work = [&](double gemms) {
      for (int i = 0; i < int(gemms); ++i)
        kernels::gemm_typed(t, false, true, M, N, K, 1.0f, A.data(), K, B.data(), K, 0.0f,
                            c.data(), N);
    };
    double unit[2] = {0, 0};  // GEMMs per unit, seconds of a unit alone
    if (world.rank() == 0) {
      work(1);
      Timer one;
      work(1);
      unit[0] = std::max(1.0, std::ceil(0.05 / one.seconds()));
      Timer alone;
      work(unit[0]);
      unit[1] = alone.seconds();
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(600));  // idle, not polling
    }
    world.allreduce(unit, 2, ReduceOp::kMax);
    work(unit[0]);
    world.barrier();
    Timer rounds;
    for (int r = 0; r < kRounds; ++r) {
      work(unit[0]);
      double x = 1;
      world.allreduce(&x, 1, ReduceOp::kSum);
    }
    const double round = rounds.seconds() / kRounds;
    if (world.rank() == 0)
      fmt::print("busy ranks, {}: a work unit takes {:.1f} ms alone; {} ranks each computing one "
                 "then all-reducing take {:.1f} ms a round ({:.2f} units)\n",
                 dtype_name(t), 1e3 * unit[1], world.size(), 1e3 * round, round / unit[1]);
    out[dtype_name(t)] = {{"work_s", unit[1]}, {"round_s", round}};
  }
  return out;
}

int run_bench_collectives(size_t min_bytes, size_t max_bytes, int iters,
                          const std::string& json_out) {
  LOOM_REQUIRE(launched_under_mpi(),
               "bench collectives runs under mpirun: mpirun -np 2 loom bench collectives");
  MpiRuntime mpi(MpiOptions{});
  auto world = mpi.world();
  const bool root = world->rank() == 0;
  if (root)
    fmt::print("bench collectives: {} ranks, loom Comm (worker thread + deadline) vs raw MPI "
               "in the same run; busbw = algbw*2(n-1)/n (allreduce), (n-1)/n (others)\n",
               world->size());
  const std::vector<CollectiveRow> rows = bench_collectives(*world, min_bytes, max_bytes, iters);
  const nlohmann::json busy = busy_ranks(*world);
  if (!root) return 0;
  fmt::print("{:<15} {:>12} {:>11} | {:>10} {:>8} {:>8} {:>7} | {:>10} {:>8} {:>8} {:>7} | {:>6}\n",
             "op", "size(B)", "count", "loom(us)", "algbw", "busbw", "#wrong", "mpi(us)", "algbw",
             "busbw", "#wrong", "ratio");
  nlohmann::json out = nlohmann::json::array();
  for (size_t i = 0; i + 1 < rows.size(); i += 2) {
    const CollectiveRow& l = rows[i];
    const CollectiveRow& m = rows[i + 1];
    fmt::print("{:<15} {:>12} {:>11} | {:>10.1f} {:>8.2f} {:>8.2f} {:>7} | {:>10.1f} {:>8.2f} "
               "{:>8.2f} {:>7} | {:>6.2f}\n",
               l.op, l.bytes, l.count, l.time_us, l.algbw, l.busbw, l.wrong, m.time_us, m.algbw,
               m.busbw, m.wrong, l.busbw / m.busbw);
    for (const CollectiveRow* r : {&l, &m})
      out.push_back({{"op", r->op}, {"impl", r->impl}, {"bytes", r->bytes}, {"count", r->count},
                     {"time_us", r->time_us}, {"algbw_GBps", r->algbw},
                     {"busbw_GBps", r->busbw}, {"wrong", r->wrong}});
  }
  write_file_atomic(json_out,
                    nlohmann::json{{"ranks", world->size()}, {"rows", out}, {"busy", busy}}.dump(2));
  fmt::print("wrote {}\n", json_out);
  long wrong = 0;
  for (const CollectiveRow& r : rows) wrong += r.wrong;
  return wrong == 0 ? 0 : 1;
}

}  // namespace

// loom bench generate: the model of --ckpt, or of --config with the run's seed's weights.
std::pair<CLI::App*, RunFn> setup_bench_generate(CLI::App& sub) {
  struct Opts {
    std::string config = "configs/gpt2-124m.toml", ckpt, json;
    std::vector<std::string> overrides;
    GenerateBenchOptions bench;
  };
  auto o = std::make_shared<Opts>();
  o->bench.torch_script = LOOM_SOURCE_DIR "/reference/torch_decode.py";
  CLI::App* g = sub.add_subcommand(
      "generate", "prefill, time to first token and decode tokens/s beside PyTorch's KV-cache "
                  "decode and the memory-bandwidth bound");
  g->add_option("--config", o->config, "model config (TOML; random weights from its seed)")
      ->capture_default_str();
  g->add_option("--set", o->overrides, "override a config value: section.key=value");
  g->add_option("--ckpt", o->ckpt, "a run or checkpoint directory instead of --config");
  g->add_option("--threads", o->bench.threads, "threads for both loom and PyTorch")
      ->capture_default_str()
      ->check(in_range(1, 4096));
  g->add_option("--prompt-len", o->bench.prompt_len, "prompt tokens")->capture_default_str()
      ->check(in_range(1, 1e6));
  g->add_option("--decode-steps", o->bench.decode_steps, "timed decode steps per batch size")
      ->capture_default_str()
      ->check(in_range(2, 1e6));
  g->add_option("--batches", o->bench.batches, "decode batch sizes")->capture_default_str();
  g->add_option("--precision", o->bench.precisions, "precisions (fp32 bf16 fp16)")
      ->capture_default_str();
  g->add_option("--agreement-positions", o->bench.agreement_positions,
                "fp32 greedy positions bf16's top-1 is compared on")
      ->capture_default_str()
      ->check(in_range(1, 1e6));
  g->add_option("--torch-script", o->bench.torch_script, "reference/torch_decode.py")
      ->capture_default_str();
  g->add_option("--json", o->json, "JSON output (default loom-bench-generate.json)");
  return {g, [o] {
            for (int b : o->bench.batches)
              LOOM_REQUIRE(b >= 1, "--batches: {} is not a batch size", b);
            for (const std::string& p : o->bench.precisions) parse_dtype(p);
            o->bench.json_out = o->json.empty() ? "loom-bench-generate.json" : o->json;
            o->bench.cpu = kernels::cpu_summary();
            kernels::use_best_openblas_core();  // PyTorch's fp32 matmul
            kernels::set_compute_threads(o->bench.threads);
            const ProcessGrid grid = ProcessGrid::single();
            std::unique_ptr<Gpt> model;
            if (!o->ckpt.empty()) {
              model = std::move(load_model(o->ckpt, grid).model);
            } else {
              const RunConfig cfg = load_run_config(o->config, o->overrides);
              model = std::make_unique<Gpt>(cfg.model, grid);
              init_params(model->params(), cfg.train.seed, model->weights().data());
            }
            return bench_generate(*model, o->bench);
          }};
}

// loom bench serve: a load test of a running loom serve over loopback.
std::pair<CLI::App*, RunFn> setup_bench_serve(CLI::App& sub) {
  auto o = std::make_shared<ServeBenchOptions>();
  auto json_out = std::make_shared<std::string>();
  CLI::App* s = sub.add_subcommand(
      "serve", "load test of a running loom serve: throughput, TTFT, TPOT and ITL percentiles");
  s->add_option("--url", o->url, "the server (loopback only)")->capture_default_str();
  s->add_option("--concurrency", o->concurrency, "concurrent clients, one level each")
      ->capture_default_str();
  s->add_option("--requests", o->requests, "requests per level, at most")
      ->capture_default_str()
      ->check(in_range(1, 1e7));
  s->add_option("--duration", o->duration_s, "seconds per level, at most")
      ->capture_default_str()
      ->check(in_range(0.1, 1e6));
  s->add_option("--prompt-tokens", o->prompt_tokens, "random prompt tokens per request")
      ->capture_default_str()
      ->check(in_range(1, 1e6));
  s->add_option("--max-tokens", o->max_tokens, "tokens generated per request")
      ->capture_default_str()
      ->check(in_range(2, 1e6));
  s->add_option("--json", *json_out, "JSON output (default loom-bench-serve.json)");
  return {s, [o, json_out] {
            for (int c : o->concurrency)
              LOOM_REQUIRE(c >= 1, "--concurrency: {} is not a client count", c);
            o->json_out = json_out->empty() ? "loom-bench-serve.json" : *json_out;
            return bench_serve(*o);
          }};
}

RunFn setup_bench(CLI::App& sub) {
  struct Opts {
    int threads = 2, repeats = 10, steps = 5, warmup = 1, iters = 20, dp = 1, pp = 1;
    size_t min_bytes = 4096, max_bytes = size_t(256) << 20;
    std::string config = "configs/gpt2-124m.toml", json, dir = "runs";
    std::vector<std::string> overrides;
    std::string torch_script = LOOM_SOURCE_DIR "/bench/torch_train.py";
    std::optional<std::string> precision;
    bool sweep_worker = false;
  };
  auto o = std::make_shared<Opts>();
  sub.require_subcommand(1);
  const auto [gen, run_generate] = setup_bench_generate(sub);
  const auto [srv, run_serve] = setup_bench_serve(sub);
  CLI::App* k = sub.add_subcommand("kernels", "GEMM GFLOP/s for the model's shapes, per backend");
  k->add_option("--threads", o->threads, "threads")->capture_default_str();
  k->add_option("--repeats", o->repeats, "timed repeats per shape")->capture_default_str();
  k->add_option("--json", o->json, "JSON output (default loom-bench-kernels.json)");
  k->add_flag("--sweep-worker", o->sweep_worker, "")->group("");  // one process of the sweep
  CLI::App* c = sub.add_subcommand("collectives", "Comm vs raw MPI bandwidth (under mpirun)");
  c->add_option("--min-bytes", o->min_bytes, "smallest size")->capture_default_str();
  c->add_option("--max-bytes", o->max_bytes, "largest size (x4 steps)")->capture_default_str();
  c->add_option("--iters", o->iters, "timed iterations per size (at most)")->capture_default_str();
  c->add_option("--json", o->json, "JSON output (default loom-bench-collectives.json)");
  CLI::App* ck = sub.add_subcommand("checkpoint", "checkpoint write GB/s beside dd");
  ck->add_option("--config", o->config, "model config (TOML)")->capture_default_str();
  ck->add_option("--dir", o->dir, "where to write")->capture_default_str();
  ck->add_option("--repeats", o->repeats, "timed saves")->capture_default_str();
  ck->add_option("--json", o->json, "JSON output (default loom-bench-checkpoint.json)");
  CLI::App* mem = sub.add_subcommand(
      "memory", "activation memory (predicted, allocated, peak RSS) and step time over "
                "recompute x attention x T");
  auto mo = std::make_shared<MemoryBenchOptions>();
  mem->add_option("--config", o->config, "model/train config (TOML)")->capture_default_str();
  mem->add_option("--set", o->overrides, "override a config value: section.key=value");
  mem->add_option("--seq-lens", mo->seq_lens, "sequence lengths")->capture_default_str();
  mem->add_option("--recompute", mo->recompute, "policies; the first is the baseline")
      ->capture_default_str();
  mem->add_option("--attention", mo->attention, "attention kernels")->capture_default_str();
  mem->add_option("--precision", mo->precision, "compute precisions (fp32 bf16 fp16)")
      ->capture_default_str();
  mem->add_option("--threads", mo->threads, "threads")->capture_default_str();
  mem->add_option("--steps", mo->steps, "timed steps per row")->capture_default_str();
  mem->add_option("--warmup", mo->warmup, "untimed steps first")->capture_default_str();
  mem->add_option("--json", o->json, "JSON output (default loom-bench-memory.json)");
  CLI::App* t = sub.add_subcommand("train", "training step throughput beside PyTorch");
  t->add_option("--config", o->config, "model/train config (TOML)")->capture_default_str();
  t->add_option("--set", o->overrides, "override a config value: section.key=value");
  t->add_option("--threads", o->threads, "threads for both loom and PyTorch")
      ->capture_default_str();
  t->add_option("--steps", o->steps, "timed steps")->capture_default_str();
  t->add_option("--dp", o->dp,
                 "data-parallel weak scaling instead (run under mpirun -np DP; 1 thread per rank)");
  t->add_option("--pp", o->pp,
                 "pipeline stages: schedules' tokens/s and bubble vs the simulator (under "
                 "mpirun -np PP)")
      ->capture_default_str();
  t->add_option("--warmup", o->warmup, "untimed steps first")->capture_default_str();
  t->add_option("--precision", o->precision,
                "fp32 | bf16 | fp16: loom in it beside loom fp32 and PyTorch (autocast for "
                "bf16) ([train] precision)");
  t->add_option("--torch-script", o->torch_script, "bench/torch_train.py")->capture_default_str();
  t->add_option("--json", o->json, "JSON output (default loom-bench-train.json)");
  return [o, k, c, t, ck, mem, mo, gen = gen, run_generate = run_generate, srv = srv,
          run_serve = run_serve] {
    if (gen->parsed()) return run_generate();
    if (srv->parsed()) return run_serve();
    if (mem->parsed()) {
      mo->cpu = kernels::cpu_summary();
      mo->json_out = o->json.empty() ? "loom-bench-memory.json" : o->json;
      return bench_memory(load_run_config(o->config, o->overrides), *mo);
    }
    if (ck->parsed())
      return bench_checkpoint(load_run_config(o->config, o->overrides), o->dir, o->repeats,
                              o->json.empty() ? "loom-bench-checkpoint.json" : o->json);
    if (c->parsed())
      return run_bench_collectives(o->min_bytes, o->max_bytes, o->iters,
                                   o->json.empty() ? "loom-bench-collectives.json" : o->json);
    if (k->parsed())
      return run_bench_kernels(o->threads, o->repeats,
                               o->json.empty() ? "loom-bench-kernels.json" : o->json,
                               o->sweep_worker);
    TrainBenchOptions opt;
    opt.openblas = kernels::use_best_openblas_core();  // PyTorch's fp32 matmul and gemm=openblas
    opt.cpu = kernels::cpu_summary();
    opt.threads = o->threads;
    opt.steps = o->steps;
    opt.warmup = o->warmup;
    opt.torch_script = o->torch_script;
    opt.json_out = o->json.empty() ? "loom-bench-train.json" : o->json;
    std::vector<std::string> overrides = o->overrides;
    if (o->precision) overrides.push_back(fmt::format("train.precision=\"{}\"", *o->precision));
    const RunConfig cfg = load_run_config(o->config, overrides);
    if (o->pp > 1) {
      LOOM_REQUIRE(launched_under_mpi(), "bench train --pp {0} runs under mpirun -np {0}", o->pp);
      MpiRuntime mpi(MpiOptions{.timeout_s = cfg.comm.timeout_s});
      const ProcessGrid grid =
          ProcessGrid::create(mpi.world(), GridShape{.pp = o->pp, .dp = 1, .tp = 1});
      return bench_train_pp(cfg, opt, grid);
    }
    if (o->dp == 1) return bench_train(cfg, opt);
    LOOM_REQUIRE(launched_under_mpi(), "bench train --dp {0} runs under mpirun -np {0}", o->dp);
    MpiRuntime mpi(MpiOptions{.timeout_s = cfg.comm.timeout_s});
    const ProcessGrid grid = ProcessGrid::create(mpi.world(), GridShape{.pp = 1, .dp = o->dp, .tp = 1});
    return bench_train_dp(cfg, opt, grid);
  };
}

}  // namespace loom::cli
