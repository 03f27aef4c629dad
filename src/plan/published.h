// Published large-scale runs (configs/clusters/published-runs.toml): each run's model,
// cluster, world, global batch, the layout it used and its measured TFLOP/s per GPU. The
// planner prices the published layout from first principles (the cluster file's sourced
// peaks and efficiencies, nothing fitted to the result) and searches its own best for the
// same model, world and batch, so a prediction can be set beside a measurement and the
// planner's choice beside the one that was run.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "plan/cost_model.h"

namespace loom {

struct PublishedRun {
  std::string name, source, cluster;
  RunConfig config;  // the model and the published layout, global_batch set
  int world = 0;
  double tflops_per_gpu = 0;  // as published
};

// Throws InputError naming the file, run and key that is missing or wrong.
std::vector<PublishedRun> load_published_runs(const std::string& path);

// Megatron's FLOPs per step (Narayanan et al. 2021, eq. 3), the count their TFLOP/s use:
// 96 B s l h^2 (1 + s/(6h) + V/(16 l h)), with the recomputation forward included.
double megatron_flops_per_step(const RunConfig& cfg);

struct PublishedComparison {
  PublishedRun run;
  Prediction theirs;          // their layout, priced
  double predicted_tflops = 0;  // theirs, by eq. 3
  Prediction best;            // the planner's first choice
  int64_t priced = 0;
  double search_seconds = 0;
};

// Prices every run (clusters read from `cluster_dir`) and searches each one's best layout.
std::vector<PublishedComparison> compare_published(const std::vector<PublishedRun>& runs,
                                                   const std::string& cluster_dir);

// The table: run, published and predicted TFLOP/s per GPU with the error, their layout, the
// planner's layout and its predicted speed-up; then the median absolute error.
std::string format_published(const std::vector<PublishedComparison>& rows);
nlohmann::json published_json(const std::vector<PublishedComparison>& rows);

}  // namespace loom
