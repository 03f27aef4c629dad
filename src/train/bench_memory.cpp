// `loom bench memory`: activation memory and step time over recompute policy x attention
// kernel x sequence length for one model, predicted (the activation table, as the start-up
// line and the memory guard price it) beside measured (the arena the model allocated and
// the process's peak RSS growth over construction and the timed steps). Validates first:
// for each (T, attention) every policy's losses are bitwise those of `none`.
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <malloc.h>
#include <unistd.h>

#include "core/check.h"
#include "core/file_io.h"
#include "core/memory.h"
#include "core/timer.h"
#include "kernels/openblas.h"
#include "train/bench_train.h"
#include "train/memory_need.h"
#include "train/trainer.h"

namespace loom {
namespace fs = std::filesystem;

namespace {

struct MemoryRow {
  int T = 0;
  std::string precision, attention, recompute;
  double predicted = 0, arena = 0, total = 0, peak_growth = 0, step_s = 0;
  std::vector<float> losses;
};

MemoryRow measure(RunConfig cfg, const MemoryBenchOptions& opt) {
  MemoryRow r;
  r.T = cfg.train.seq_len;
  r.precision = cfg.train.precision;
  r.attention = cfg.train.attention;
  r.recompute = cfg.train.recompute;
  const MemoryNeed need = estimate_rank_memory(cfg);
  r.predicted = need.activations;
  r.total = need.total();
  malloc_trim(0);  // give freed pages back, so the baseline is what is live
  reset_peak_rss();
  const double before = read_process_memory().rss;
  std::vector<double> times;
  {
    const ProcessGrid grid = ProcessGrid::single();
    Trainer tr(cfg, grid);
    r.arena = double(tr.model().arena_bytes());
    for (int s = 0; s < opt.warmup + opt.steps; ++s) {
      Timer t;
      r.losses.push_back(tr.train_step().loss);
      if (s >= opt.warmup) times.push_back(t.seconds());
    }
    r.peak_growth = read_process_memory().peak - before;
  }
  r.step_s = median(times);
  return r;
}

void print_row(const MemoryRow& r, const MemoryRow& none) {
  fmt::print("{:>5} {:<5} {:<12} {:<9} {:>11} {:>11} {:>11} {:>11} {:>9.1f} {:>6.2f} {:>6.3f}\n",
             r.T, r.precision, r.attention, r.recompute, format_bytes(r.predicted),
             format_bytes(r.arena),
             format_bytes(r.total), format_bytes(r.peak_growth), r.step_s * 1e3,
             r.arena / none.arena, r.step_s / none.step_s);
}

}  // namespace

int bench_memory(RunConfig cfg, const MemoryBenchOptions& opt) {
  LOOM_REQUIRE(opt.steps >= 1 && opt.warmup >= 0, "bench memory: --steps {} must be >= 1",
               opt.steps);
  const fs::path dir = fs::temp_directory_path() / fmt::format("loom_bench_memory_{}", getpid());
  fs::create_directories(dir);
  kernels::set_compute_threads(opt.threads);
  // Large blocks straight from mmap and back on free, so each row's peak RSS growth is its
  // own (glibc's adaptive threshold would otherwise keep a freed trainer's pages resident).
  // Setting it fixes the trim threshold at 128 KiB, and then the GEMMs' packing buffers,
  // taken and freed on every call, move the heap's top up and down with a system call each
  // time (brk, madvise): keep 64 MiB of top, as measure() trims before each baseline.
  mallopt(M_MMAP_THRESHOLD, 1 << 20);
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
  cfg.train.steps = opt.warmup + opt.steps;
  cfg.train.warmup_steps = 0;
  cfg.run.dir = (dir / "run").string();
  cfg.data.val.clear();
  fmt::print("bench memory: L={} C={} NH={} B={}, {} threads, median of {} steps after {}; "
             "{}\n", cfg.model.n_layer, cfg.model.n_embd, cfg.model.n_head,
             cfg.train.micro_batch, opt.threads, opt.steps, opt.warmup, opt.cpu);
  fmt::print("{:>5} {:<5} {:<12} {:<9} {:>11} {:>11} {:>11} {:>11} {:>9} {:>6} {:>6}\n", "T",
             "prec", "attention", "recompute", "act pred", "act arena", "total pred", "peak RSS+",
             "step ms", "mem/n", "time/n");
  nlohmann::json rows = nlohmann::json::array();
  int status = 0;
  for (int T : opt.seq_lens) {
    cfg.train.seq_len = T;
    cfg.model.block_size = std::max(cfg.model.block_size, T);
    cfg.data.train = (dir / fmt::format("train_{}.bin", T)).string();
    write_random_shard(cfg.data.train, cfg);
    for (const std::string& precision : opt.precision)
    for (const std::string& attention : opt.attention) {
      cfg.train.precision = precision;
      cfg.train.attention = attention;
      MemoryRow none;
      for (const std::string& policy : opt.recompute) {
        cfg.train.recompute = policy;
        cfg.validate();
        const MemoryRow r = measure(cfg, opt);
        if (none.T == 0) none = r;  // the first policy listed is the baseline (none)
        const bool same = r.losses == none.losses;
        if (!same) status = 1;
        print_row(r, none);
        if (!same) fmt::print("  ^ losses differ from {}: recomputation is not bitwise\n",
                              none.recompute);
        rows.push_back({{"T", T}, {"precision", precision}, {"attention", attention},
                        {"recompute", policy},
                        {"predicted_bytes", r.predicted}, {"arena_bytes", r.arena},
                        {"predicted_total_bytes", r.total},
                        {"peak_rss_growth_bytes", r.peak_growth}, {"step_s", r.step_s},
                        {"bitwise_equal_to_first", same}});
      }
    }
  }
  fs::remove_all(dir);
  write_file_atomic(opt.json_out, nlohmann::json{{"cpu", opt.cpu}, {"threads", opt.threads},
                                                 {"rows", rows}}
                                      .dump(2));
  fmt::print("act: activations, as the table predicts them and as the model's arena holds "
             "them; total: weights, gradients, AdamW moments and activations, predicted, and "
             "the peak RSS growth over building the trainer and its steps; mem/n, time/n: "
             "arena and step time against the first policy of the same T, precision and "
             "attention\n"
             "wrote {}\n",
             opt.json_out.string());
  return status;
}

}  // namespace loom
