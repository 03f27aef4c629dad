#include "train/stage_profile.h"

#include <fmt/format.h>

#include <algorithm>

#include "core/check.h"
#include "core/timer.h"
#include "parallel/partition.h"
#include "train/trainer.h"

namespace loom {

double median_event(const std::vector<TraceEvent>& events, char kind, int chunk) {
  std::vector<double> d;
  const std::string suffix = fmt::format(" c{}", chunk);
  for (const TraceEvent& e : events)
    if (e.cat == "compute" && !e.name.empty() && e.name[0] == kind &&
        e.name.size() > suffix.size() &&
        e.name.compare(e.name.size() - suffix.size(), suffix.size(), suffix) == 0)
      d.push_back(e.dur_us * 1e-6);
  return d.empty() ? 0.0 : median(d);
}

StageSeconds stage_seconds(const Trainer& tr, const ProcessGrid& grid) {
  const int p = grid.shape().pp, v = tr.config().parallel.virtual_stages, rank = grid.coord().pp;
  const std::vector<TraceEvent> events = const_cast<Trainer&>(tr).trace().events();
  StageSeconds s{std::vector<double>(size_t(p * v), 0.0), std::vector<double>(size_t(p * v), 0.0)};
  for (int chunk = 0; chunk < v; ++chunk) {
    s.fwd[size_t(chunk * p + rank)] = median_event(events, 'F', chunk);
    s.bwd[size_t(chunk * p + rank)] = median_event(events, 'B', chunk);
  }
  grid.world().allreduce(s.fwd.data(), s.fwd.size(), ReduceOp::kMax);
  grid.world().allreduce(s.bwd.data(), s.bwd.size(), ReduceOp::kMax);
  return s;
}

namespace {

// `part` with each virtual stage's measured seconds as its cost (for describe()).
StagePartition with_costs(StagePartition part, const std::vector<double>& seconds) {
  part.cost = seconds;
  return part;
}

}  // namespace

RunConfig resolve_stage_layers(RunConfig cfg, const ProcessGrid& grid, std::FILE* out,
                               int probe_steps) {
  if (cfg.parallel.stage_layers != "auto") return cfg;
  const int p = cfg.parallel.pp, S = p * cfg.parallel.virtual_stages;
  if (p == 1) {
    cfg.parallel.stage_layers.clear();
    return cfg;
  }
  StagePartition before;
  std::vector<double> seconds(static_cast<size_t>(S), 0.0);
  {
    RunConfig probe = cfg;
    probe.run.trace = false;
    Trainer tr(probe, grid);
    tr.enable_trace(Trace::Clock::now());
    for (int i = 0; i < std::max(2, probe_steps); ++i) {
      if (i == 1) tr.trace().clear();  // the first step warms up
      tr.train_step();
    }
    const StageSeconds st = stage_seconds(tr, grid);
    for (int s = 0; s < S; ++s) seconds[size_t(s)] = st.fwd[size_t(s)] + st.bwd[size_t(s)];
    before = tr.partition();
  }
  const LayerCosts costs = measured_layer_costs(before, seconds);
  const StagePartition after = balance_stages(costs, S, p);
  cfg.parallel.stage_layers = stage_layers_spec(after);
  if (out != nullptr && grid.rank() == 0)
    fmt::print(out, "stage layers auto: measured forward+backward per micro-batch: a block "
               "{:.3g} ms, the embeddings {:.3g} ms, the head {:.3g} ms\nFLOP-balanced split "
               "{} as measured:\n{}\nbalanced by measured cost, split {} (predicted):\n{}\n",
               1e3 * costs.block.front(), 1e3 * costs.embed, 1e3 * costs.head,
               stage_layers_spec(before), describe(with_costs(before, seconds), p),
               cfg.parallel.stage_layers, describe(after, p));
  return cfg;
}

}  // namespace loom
