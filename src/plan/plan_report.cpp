#include "plan/plan_report.h"

#include <fmt/format.h>

#include <algorithm>

#include "core/memory.h"

namespace loom {

nlohmann::json to_json(const Prediction& p) {
  const Layout& l = p.layout;
  return {{"dp", l.dp},
          {"tp", l.tp},
          {"pp", l.pp},
          {"zero", l.zero},
          {"schedule", l.schedule},
          {"microbatches", l.microbatches},
          {"virtual_stages", l.virtual_stages},
          {"micro_batch", l.micro_batch},
          {"precision", l.precision},
          {"recompute", l.recompute},
          {"sequence_parallel", l.sequence_parallel},
          {"tokens_per_s", p.tokens_per_s},
          {"mfu", p.mfu},
          {"memory_per_rank_bytes", p.memory.total()},
          {"memory_limit_bytes", p.memory_limit},
          {"step_time_s", p.step_s},
          {"compute_s", p.compute_s},
          {"exposed_comm_s", p.exposed_comm_s},
          {"bubble_s", p.bubble_s},
          {"optimizer_s", p.optimizer_s},
          {"contention_s", p.contention_s},
          {"simulated", p.simulated}};
}

namespace {

std::string row(int rank, const Prediction& p, size_t width) {
  return fmt::format("{:>4} {:<{}} {:>11.4g} {:>6.1f}% {:>10} {:>9.3g} {:>9.3g} {:>9.4g}\n",
                     rank, to_string(p.layout), width, p.tokens_per_s, 100 * p.mfu,
                     format_bytes(p.memory.total()), p.exposed_comm_s, p.bubble_s, p.step_s);
}

}  // namespace

std::string format_plan(const SearchResult& r, const CostModel& model, int64_t global_batch,
                        int top) {
  const ClusterSpec& c = model.cluster;
  std::string out = fmt::format(
      "plan: {} ranks of {} ({}), global batch {}: priced {} layouts in {:.2f} s ({} pipelines "
      "re-priced in the simulator); {} fit, {} do not\n",
      model.world, c.name, c.source, global_batch, r.priced, r.seconds, r.simulated,
      r.ranked.size(), r.too_big.size());
  if (!r.ranked.empty()) {
    const int n = std::min(int(r.ranked.size()), std::max(1, top));
    size_t width = 6;
    for (int i = 0; i < n; ++i) width = std::max(width, to_string(r.ranked[size_t(i)].layout).size());
    out += fmt::format("{:>4} {:<{}} {:>11} {:>7} {:>10} {:>9} {:>9} {:>9}\n", "rank", "layout",
                       width, "tokens/s", "MFU", "mem/rank", "comm(s)", "bubble(s)", "step(s)");
    for (int i = 0; i < n; ++i) out += row(i + 1, r.ranked[size_t(i)], width);
    // The runner-up is the best layout that is slower: ties (fp16 beside bf16, the same
    // layout) are said as such.
    const Prediction& best = r.ranked[0];
    size_t next = 1;
    while (next < r.ranked.size() && r.ranked[next].tokens_per_s >= best.tokens_per_s) ++next;
    if (next > 1)
      out += fmt::format("tie: {} more layout{} predicted as fast; the first uses the least "
                         "memory\n", next - 1, next > 2 ? "s" : "");
    if (next < r.ranked.size()) out += "why: " + why_first(best, r.ranked[next]) + "\n";
  }
  if (!r.too_big.empty()) {
    const Prediction& p = r.too_big.front();
    out += fmt::format("{} layouts do not fit in memory; the closest, {}, needs {} per rank, {} "
                       "over its {} ({})\n",
                       r.too_big.size(), to_string(p.layout), format_bytes(p.memory.total()),
                       format_bytes(p.memory.total() - p.memory_limit),
                       format_bytes(p.memory_limit), p.memory.breakdown());
  }
  return out;
}

}  // namespace loom
