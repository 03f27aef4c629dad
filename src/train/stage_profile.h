// Pipeline stages balanced by measured cost ([parallel] stage_layers = "auto"): a probe
// trainer on the FLOP-balanced split runs a few steps with its trace on, each virtual
// stage's forward and backward are timed (the median of the executor's compute events),
// the per-block and per-end costs are fitted to those times (measured_layer_costs), and the
// split is balanced again on them. The probe's steps are thrown away with it: the run then
// starts from step 0 on the measured split, as if it had been given explicitly.
#pragma once

#include <cstdio>
#include <string>
#include <vector>

#include "comm/process_grid.h"
#include "core/trace.h"
#include "train/run_config.h"

namespace loom {

class Trainer;

// Median seconds of the trace's compute events of `kind` ('F' or 'B') and `chunk` (the
// executor names them "F mb3 c1"); 0 when there are none.
double median_event(const std::vector<TraceEvent>& events, char kind, int chunk);

// Forward and backward seconds per virtual stage (chunk * pp + pp rank) of `tr`'s last
// steps, the slowest rank of each stage: collective over the world.
struct StageSeconds {
  std::vector<double> fwd, bwd;
};
StageSeconds stage_seconds(const Trainer& tr, const ProcessGrid& grid);

// `cfg` with stage_layers "auto" resolved to an explicit split (anything else is returned as
// it is). Collective over the world; rank 0 prints both splits with their measured
// imbalance (max/mean) to `out`. `probe_steps`: steps the probe runs (the first untimed).
RunConfig resolve_stage_layers(RunConfig cfg, const ProcessGrid& grid, std::FILE* out,
                               int probe_steps = 3);

}  // namespace loom
