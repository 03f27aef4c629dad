// `loom report RUN_DIR`: one timeline from the per-rank traces, the pipeline bubble per
// rank, and plots of metrics.jsonl.
//
//   RUN_DIR/trace/rank_<r>.json  (Trace::write, one per rank)  -> RUN_DIR/trace.json
//   RUN_DIR/metrics.jsonl        (one JSON object per step)    -> RUN_DIR/loss.png,
//                                                                 RUN_DIR/tokens_per_s.png
//
// The plots are drawn by gnuplot (Debian package gnuplot-nox), run as a subprocess.
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>
#include <vector>

namespace loom {

// How busy one rank's compute lane (tid 0) was. The span is that of the rank's events of
// cat "step" (first start to last end) when it has any, else of all its events.
// idle_fraction = 1 - compute_s / span_s: the bubble, when compute is all the rank does
// outside communication (0 when the span is empty).
struct RankIdle {
  int rank = 0;               // Chrome pid
  double compute_s = 0;       // union of the compute events inside the span, seconds
  double span_s = 0;          // seconds
  double idle_fraction = 0;   // in [0, 1]
};

// The rank_<r>.json files of `trace_dir`, ordered by r; empty if the directory is absent.
std::vector<std::filesystem::path> find_rank_traces(const std::filesystem::path& trace_dir);

// One Chrome trace {"traceEvents":[...], "displayTimeUnit":"ms"} holding every file's
// events (each rank keeps its pid). Throws InputError naming a file that is not a trace.
nlohmann::json merge_traces(const std::vector<std::filesystem::path>& files);

// Per rank (ascending) of a merged trace: compute time, span and idle fraction.
std::vector<RankIdle> trace_idle(const nlohmann::json& merged);

// The table printed by `loom report`: rank, compute (s), span (s), idle fraction.
std::string idle_table(const std::vector<RankIdle>& idle);

struct ReportResult {
  int trace_files = 0;                // rank traces merged (0: no trace.json written)
  std::filesystem::path trace_json;   // RUN_DIR/trace.json, empty when trace_files == 0
  std::vector<RankIdle> idle;         // trace_idle of the merged trace
  std::filesystem::path loss_png;     // RUN_DIR/loss.png
  std::filesystem::path tokens_png;   // RUN_DIR/tokens_per_s.png
  int metric_steps = 0;               // distinct steps read from metrics.jsonl
};

// Everything `loom report` writes. Throws InputError (exit code 2) when RUN_DIR or
// metrics.jsonl is missing or unreadable, or gnuplot is not installed.
ReportResult make_report(const std::filesystem::path& run_dir);

// Runs `gnuplot plot.gp` in `dir`, its output to dir/gnuplot.log. InputError naming `who`
// (the command) when gnuplot is missing, and what it would have drawn, or when it fails.
void run_gnuplot(const std::filesystem::path& dir, const std::string& who,
                 const std::string& draws);

// One PNG with every run's train loss (lines) and validation loss (dashed, points), one
// colour per run, titled by the run directory's name (e.g. fp32 and bf16 runs of the same
// seed). Returns the most steps any run logged. InputError as make_report.
int compare_runs(const std::vector<std::filesystem::path>& run_dirs,
                 const std::filesystem::path& out_png);

}  // namespace loom
