// loom report RUN_DIR [RUN_DIR2 ... --compare FILE.png]
// Merges RUN_DIR/trace/rank_*.json into RUN_DIR/trace.json (open it in Perfetto), prints
// each rank's compute time, span and idle (bubble) fraction, and plots metrics.jsonl into
// RUN_DIR/loss.png and RUN_DIR/tokens_per_s.png with gnuplot.
#include <fmt/core.h>

#include <memory>
#include <filesystem>
#include <string>
#include <vector>

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
  struct Opts {
    std::vector<std::string> run_dirs;
    std::string compare;
  };
  auto o = std::make_shared<Opts>();
  sub.add_option("run_dir", o->run_dirs, "run directories written by loom train")->required();
  sub.add_option("--compare", o->compare,
                 "with two or more runs: their losses in one PNG at this path (default "
                 "FIRST_RUN/compare_loss.png)");
  return [o] {
    for (const std::string& d : o->run_dirs)
      if (const int rc = run_report(d); rc != 0) return rc;
    if (o->run_dirs.size() < 2) return 0;
    namespace fs = std::filesystem;
    const fs::path out =
        o->compare.empty() ? fs::path(o->run_dirs[0]) / "compare_loss.png" : fs::path(o->compare);
    const int steps = compare_runs({o->run_dirs.begin(), o->run_dirs.end()}, out);
    fmt::print("compared {} runs ({} steps at most): {}\n", o->run_dirs.size(), steps,
               out.string());
    return 0;
  };
}

}  // namespace loom::cli
