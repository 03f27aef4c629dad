// `loom plan --verify`: the cost model against measurement on this machine. Every feasible
// layout of N ranks is priced; the top K and an even sample of the rest are each trained for
// a few steps (mpirun -np N loom train, on a random token shard), and the measured tokens/s
// (median of the steps after the first) and peak memory (RUN/memory.json: the most any rank
// grew) are set beside the predictions: per-layout errors, the median absolute error, the
// Spearman rank correlation, and how far the predicted best is from the measured best.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "plan/plan_report.h"
#include "plan/search.h"

namespace loom {

struct VerifyOptions {
  int ranks = 4;
  int steps = 4;         // optimizer steps per layout (the first is not timed)
  int top = 4;           // the best predicted, all run
  int sample = 12;       // layouts run in all: the top and an even sample of the rest
  int repeats = 1;       // runs of each layout, round the sample; the fastest counts
  std::string dir = "runs/plan-verify";  // a run directory per layout, the shard, the plot
  std::string loom;      // the binary to run (default: this one)
  double timeout_s = 600;  // per layout
};

struct VerifyRow {
  Prediction predicted;
  int predicted_rank = 0;   // 1 = the planner's first choice
  double measured_tokens_per_s = 0, measured_peak_bytes = 0;
};

struct VerifyResult {
  std::vector<VerifyRow> rows;
  int feasible = 0;            // layouts that fit, of which rows.size() ran
  double median_abs_error = 0;  // of predicted tokens/s against measured, relative
  double spearman = 0;          // rank correlation of predicted and measured tokens/s
  double best_gap = 0;          // 1 - measured(predicted best) / max measured
  double memory_median_abs_error = 0;
};

// Spearman's rho of two equally long series (average ranks for ties).
double spearman(const std::vector<double>& a, const std::vector<double>& b);

// Which of `n` ranked layouts to run: the first `top`, then an even spread over the rest up
// to `sample` in all (every one when n <= sample), ascending.
std::vector<int> verify_selection(int n, int top, int sample);

VerifyResult verify_plan(const RunConfig& base, const ClusterSpec& cluster,
                         const VerifyOptions& opt);

std::string format_verify(const VerifyResult& r, const VerifyOptions& opt);
nlohmann::json verify_json(const VerifyResult& r, const VerifyOptions& opt);

// predicted against measured tokens/s, one point per layout, the diagonal drawn: a PNG by
// gnuplot (gnuplot-nox). Throws InputError when gnuplot is missing or fails.
void plot_verify(const VerifyResult& r, const std::string& png);

}  // namespace loom
