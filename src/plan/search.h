// The planner's search: every valid layout of a world size and global batch, priced by the
// cost model, those that do not fit dropped (with their overshoot), the rest ranked by
// predicted tokens/s. A layout is valid when RunConfig::validate() accepts it, the trainer's
// own checks; the enumerator generates each distinct layout once (canonical forms: without
// a pipeline the schedule is 1f1b with one virtual stage; without data parallelism ZeRO is
// 0; sequence parallelism only with tp > 1).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "plan/cost_model.h"

namespace loom {

// Fields the user fixed (--layout dp=2,pp=2,...); the rest the planner chooses.
struct LayoutFilter {
  std::optional<int> dp, tp, pp, zero, microbatches, virtual_stages, micro_batch;
  std::optional<std::string> schedule, precision, recompute;
  std::optional<bool> sequence_parallel;
  bool admits(const Layout& l) const;
};

// "dp=2,tp=1,pp=2,zero=1,schedule=1f1b,m=4,v=1,mb=2,precision=bf16,recompute=none,sp=0"
// (any subset, any order; microbatches/virtual_stages/micro_batch/sequence_parallel also
// spelled out). Throws InputError naming a bad field or value.
LayoutFilter parse_layout_filter(const std::string& spec);

// The sequences per optimizer step `cfg` asks for: [train] global_batch, or when that is 0
// micro_batch x grad_accum x dp.
int64_t global_batch_of(const RunConfig& cfg);

// Every valid layout of `world` ranks whose micro_batch x microbatches x dp = global_batch,
// admitted by `filter`, in a fixed order.
std::vector<Layout> enumerate_layouts(const RunConfig& base, int world, int64_t global_batch,
                                      const LayoutFilter& filter = {});

struct SearchResult {
  std::vector<Prediction> ranked;   // layouts that fit, best predicted tokens/s first
  std::vector<Prediction> too_big;  // layouts that do not fit, least overshoot first
  int64_t priced = 0;               // layouts priced
  int simulated = 0;                // of them, pipelines re-priced in the simulator
  double seconds = 0;               // wall time of the search
};

// Prices every layout with the closed-form pipeline, then re-prices in the simulator the
// best `simulate_top` that fit (all of them when fewer) and ranks again.
SearchResult search_layouts(const RunConfig& base, const CostModel& model, int64_t global_batch,
                            const LayoutFilter& filter = {}, int simulate_top = 64);

// One line on why `best` beats `runner_up`: the term of the step that differs most.
std::string why_first(const Prediction& best, const Prediction& runner_up);

}  // namespace loom
