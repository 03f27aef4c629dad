// loom report RUN_DIR
// Merges RUN_DIR/trace/rank_*.json into RUN_DIR/trace.json (open it in Perfetto), prints
// each rank's compute time, span and idle (bubble) fraction, and plots metrics.jsonl into
// RUN_DIR/loss.png and RUN_DIR/tokens_per_s.png with gnuplot.
#include <fmt/core.h>

#include <memory>
#include <string>

#include "cli/command.h"
#include "train/report.h"

namespace loom::cli {
namespace {

int run_report(const std::string& run_dir) {
  const ReportResult r = make_report(run_dir);
  if (r.trace_files == 0) {
    fmt::print("no rank traces in {}/trace (train with tracing on to get a timeline)\n", run_dir);
  } else {
    fmt::print("merged {} rank trace(s) into {} (open in https://ui.perfetto.dev)\n",
               r.trace_files, r.trace_json.string());
    fmt::print("{}", idle_table(r.idle));
  }
  fmt::print("plotted {} steps: {} {}\n", r.metric_steps, r.loss_png.string(),
             r.tokens_png.string());
  return 0;
}

}  // namespace

RunFn setup_report(CLI::App& sub) {
  auto run_dir = std::make_shared<std::string>();
  sub.add_option("run_dir", *run_dir, "run directory written by loom train")->required();
  return [run_dir] { return run_report(*run_dir); };
}

}  // namespace loom::cli
