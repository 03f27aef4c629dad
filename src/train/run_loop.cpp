// Trainer::run: the user-facing loop around train_step — run directory, metrics.jsonl,
// validation, checkpoints and the live progress line.
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "core/check.h"
#include "core/file_io.h"
#include "core/timer.h"
#include "kernels/bench_kernels.h"
#include "kernels/kernels.h"
#include "train/memory_need.h"
#include "train/metrics_log.h"
#include "train/run_dir.h"
#include "train/throughput.h"
#include "train/trainer.h"

namespace loom {
namespace fs = std::filesystem;

namespace {

std::string format_eta(double seconds) {
  const int s = int(seconds + 0.5);
  if (s >= 3600) return fmt::format("{}h{:02}m", s / 3600, (s / 60) % 60);
  if (s >= 60) return fmt::format("{}m{:02}s", s / 60, s % 60);
  return fmt::format("{}s", s);
}

// Everything this rank's communicators carried so far, by group.
std::map<std::string, Traffic> grid_traffic(const ProcessGrid& g) {
  return {{"world", g.world().traffic()}, {"dp", g.dp_comm().traffic()},
          {"tp", g.tp_comm().traffic()}, {"pp", g.pp_comm().traffic()}};
}

// What this rank sent between two snapshots (comm.h's TrafficCount): {"total": bytes, "dp":
// {"ALLREDUCE": bytes, ...}, ...}, groups and kinds that carried nothing left out.
nlohmann::json step_traffic(const std::map<std::string, Traffic>& before,
                            const std::map<std::string, Traffic>& after) {
  nlohmann::json out = {{"total", 0}};
  uint64_t total = 0;
  for (const auto& [group, kinds] : after) {
    for (const auto& [kind, count] : kinds) {
      uint64_t earlier = 0;
      if (const auto g = before.find(group); g != before.end())
        if (const auto k = g->second.find(kind); k != g->second.end()) earlier = k->second.bytes;
      const uint64_t bytes = count.bytes - earlier;
      if (bytes == 0) continue;
      out[group][kind] = bytes;
      total += bytes;
    }
  }
  out["total"] = total;
  return out;
}

// Tells the busy observer (heartbeats) that what runs in this scope is not a step.
class Busy {
 public:
  explicit Busy(const std::function<void(bool)>& f) : f_(f) {
    if (f_) f_(true);
  }
  ~Busy() {
    if (f_) f_(false);
  }
  Busy(const Busy&) = delete;
  Busy& operator=(const Busy&) = delete;

 private:
  const std::function<void(bool)>& f_;
};

class Progress {
 public:
  Progress(std::FILE* out, int total) : out_(out), total_(total), tty_(out && isatty(fileno(out))) {}

  void step(const StepStats& s, double tokens_per_s, double mfu, double eta_s) {
    if (!out_) return;
    const std::string line = fmt::format(
        "step {:>5}/{} | loss {:.4f} | lr {:.2e} | norm {:.3f} | {:.0f} tok/s | mfu {:.1f}% | "
        "eta {}{}",
        s.step + 1, total_, s.loss, s.lr, s.grad_norm, tokens_per_s, 100.0 * mfu,
        format_eta(eta_s),
        s.skipped ? fmt::format(" | skipped: inf/NaN gradient at loss scale {:g}", s.loss_scale)
                  : "");
    const bool last = s.step + 1 == total_;
    if (tty_) {
      fmt::print(out_, "\r{}\x1b[K{}", line, last ? "\n" : "");
    } else if (last || s.step % std::max(1, total_ / 40) == 0) {
      fmt::print(out_, "{}\n", line);
    }
    std::fflush(out_);
  }

  void note(const std::string& text) {
    if (!out_) return;
    fmt::print(out_, "{}{}\n", tty_ ? "\r\x1b[K" : "", text);
    std::fflush(out_);
  }

 private:
  std::FILE* out_;
  int total_;
  bool tty_;
};

}  // namespace

std::string Trainer::write_metrics(MetricsLog& metrics, const nlohmann::json& rec, int step) {
  std::string error;
  if (metrics.is_open()) {
    if (metrics_fault_step_ >= 0 && step >= metrics_fault_step_) metrics.fail_as_full();
    error = metrics.append(rec.dump());
  }
  // Only world rank 0 writes metrics; one 8-byte all-reduce per step lets every rank take
  // the same decision, so the final save that follows is collective.
  if (grid_->shape().world() > 1) {
    double failed = error.empty() ? 0.0 : 1.0;
    grid_->world().allreduce(&failed, 1, ReduceOp::kMax);
    if (failed > 0 && error.empty()) error = "world rank 0 could not write metrics";
  }
  return error;
}

namespace {

// Says once what the compute precision buys on this machine: its GEMM against fp32's.
void note_precision(Progress& progress, DType precision, double peak) {
  const char* p = dtype_name(precision);
  if (kernels::compute_storage(precision) == DType::kF32) {
    progress.note(fmt::format("precision {0}: this oneDNN has no {0} matmul on this CPU, so the "
                              "GEMM operands are {0}-rounded values in fp32 through sgemm: {0}'s "
                              "numerics, fp32's speed and memory", p));
    return;
  }
  const double peak32 = kernels::measure_gemm_peak_gflops(DType::kF32) * 1e9;
  const std::string impl = kernels::gemm_peak_impl(precision);
  if (peak < peak32)
    progress.note(fmt::format("precision {0}: the {0} GEMM measured {1:.0f} GFLOP/s here, slower "
                              "than fp32's {2:.0f} ({3}); training goes on in {0}, which still "
                              "halves the saved GEMM inputs and the weight copy's bytes",
                              p, peak / 1e9, peak32 / 1e9, impl));
  else
    progress.note(fmt::format("precision {0}: the {0} GEMM measured {1:.0f} GFLOP/s here, "
                              "{2:.2f}x fp32's {3:.0f} ({4})",
                              p, peak / 1e9, peak / peak32, peak32 / 1e9, impl));
}

}  // namespace

void Trainer::stop_on_write_error(const std::string& error, std::FILE* out) {
  if (out) fmt::print(out, "\nerror: {}; saving a final checkpoint, then stopping\n", error);
  std::string saved;
  try {
    saved = "a final checkpoint was saved to " + save_checkpoint().string();
    finish_checkpoint();
  } catch (const Error& e) {
    saved = fmt::format("the final checkpoint failed too ({})", e.what());
  }
  throw Error(fmt::format("step {}: {}; stopped, and {}", step_, error, saved));
}

std::string Trainer::record_peak_memory(double predicted) {
  double grew = read_process_memory().peak - at_start_.rss;
  grid_->world().allreduce(&grew, 1, ReduceOp::kMax);
  if (is_writer())
    write_file_atomic(fs::path(cfg_.run.dir) / "memory.json",
                      nlohmann::json{{"peak_rank_bytes", grew}, {"predicted_bytes", predicted}}
                          .dump(2));
  return fmt::format("peak memory: {} above the start on the rank that grew most; predicted {}",
                     format_bytes(grew), format_bytes(predicted));
}

void Trainer::run(std::FILE* progress_out) {
  const TrainConfig& t = cfg_.train;
  const fs::path dir = cfg_.run.dir;
  MetricsLog metrics;
  if (is_writer()) {
    fs::create_directories(dir);
    write_file_atomic(dir / "config.toml", cfg_.to_toml());
    trim_metrics(dir / "metrics.jsonl", step_);  // resumed: the replayed steps come again
    metrics = MetricsLog(dir / "metrics.jsonl");
  } else {
    progress_out = nullptr;  // rank 0 speaks for the job
  }

  const DType precision = model_.precision();
  const double peak = kernels::measure_gemm_peak_gflops(precision) * 1e9;
  const double flops = flops_per_token();
  Progress progress(progress_out, t.steps);
  progress.note(fmt::format(
      "model: {:.2f}M params, L={} C={} NH={} T={}, B={} x accum {} x dp {} (zero {}) | {:.0f} "
      "MFLOP/token ({}) | {} | {} GEMM peak {:.0f} GFLOP/s per rank",
      double(model_.flop_params()) / 1e6, cfg_.model.n_layer, cfg_.model.n_embd,
      cfg_.model.n_head, t.seq_len, t.micro_batch, t.grad_accum, grid_->shape().dp,
      cfg_.parallel.zero, flops / 1e6, kFlopsFormula, dtype_name(precision),
      dtype_name(kernels::compute_storage(precision)), peak / 1e9));
  if (precision != DType::kF32) note_precision(progress, precision, peak);
  progress.note(dp_.memory_report());
  const MemoryNeed need = estimate_rank_memory(cfg_);
  progress.note(fmt::format("memory check: about {} per rank with activations {}; {} was "
                            "available ({})",
                            format_bytes(need.total()), format_bytes(need.activations),
                            format_bytes(memory_limit_.bytes), memory_limit_.why));
  progress.note(fmt::format(
      "activations: {}, recompute {}, {} attention, {} micro-batch{} in flight, tp {}{}: "
      "predicted {} (the rank with the most blocks), this rank's arena {}",
      t.precision, t.recompute, t.attention, model_.slots(), model_.slots() > 1 ? "es" : "",
      grid_->shape().tp, cfg_.parallel.sequence_parallel ? " sp" : "",
      format_bytes(need.activations), format_bytes(double(model_.arena_bytes()))));

  Timer wall;
  const int first = step_;
  double ema_tps = 0.0;
  while (step_ < t.steps) {
    if (step_observer_) step_observer_(step_);
    const std::map<std::string, Traffic> before = grid_traffic(*grid_);
    const StepStats s = train_step();
    const nlohmann::json traffic = step_traffic(before, grid_traffic(*grid_));
    ema_tps = ema_tps == 0.0 ? s.tokens_per_s : 0.8 * ema_tps + 0.2 * s.tokens_per_s;
    // MFU against the peak of all the job's ranks.
    const double mfu = s.tokens_per_s * flops / (peak * grid_->shape().world());
    const double eta = (wall.seconds() / (step_ - first)) * (t.steps - step_);
    nlohmann::json rec = {{"step", s.step + 1}, {"loss", s.loss}, {"lr", s.lr},
                          {"grad_norm", s.grad_norm}, {"tokens_per_s", s.tokens_per_s},
                          {"mfu", mfu}, {"comm_bytes", traffic}};
    if (scaler_.enabled()) {
      rec["loss_scale"] = s.loss_scale;
      rec["skipped"] = s.skipped;
    }
    progress.step(s, ema_tps, ema_tps * flops / (peak * grid_->shape().world()), eta);
    if (val_data_ && t.eval_every > 0 && (step_ % t.eval_every == 0 || step_ == t.steps)) {
      const Busy busy(busy_observer_);
      const float val = evaluate(t.eval_tokens);
      rec["val_loss"] = val;
      progress.note(fmt::format("step {:>5} | val_loss {:.4f}", step_, val));
    }
    if (const std::string error = write_metrics(metrics, rec, s.step); !error.empty())
      stop_on_write_error(error, progress_out);
    if (t.checkpoint_every > 0 && step_ % t.checkpoint_every == 0 && step_ < t.steps) {
      const Busy busy(busy_observer_);
      const fs::path saved = save_checkpoint();
      progress.note(fmt::format("checkpoint {} ({}training stalled {:.3f} s)", saved.string(),
                                cfg_.checkpoint.async ? "async, committed later; " : "",
                                last_checkpoint_stall()));
    }
  }
  progress.note(record_peak_memory(need.total()));
  const Busy busy(busy_observer_);
  const fs::path saved = save_checkpoint();
  finish_checkpoint();
  progress.note(fmt::format("checkpoint {} (training stalled {:.3f} s)", saved.string(),
                            last_checkpoint_stall()));
}

}  // namespace loom
