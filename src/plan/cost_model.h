// The planner's cost model: what one optimizer step of a layout costs on a cluster, priced
// from the model's shapes, the cluster's calibrated rates and the same objects the trainer
// runs: the stage partition balance_stages() makes, the pipeline schedule's action lists
// (run in the simulator with the per-stage costs), and the memory the start-up line prints
// (estimate_rank_memory).
//
// Per micro-batch and virtual stage, forward and backward time = GEMM FLOPs at the device's
// GEMM rate + causal attention FLOPs at its attention rate + elementwise bytes at its memory
// bandwidth + the tensor-parallel all-reduces (or, with sequence parallelism, the
// reduce-scatters and all-gathers) + the activation send to the next stage. The step is the
// pipeline's makespan, the data-parallel gradient reduction that the last micro-batch's
// backward does not hide, the ZeRO gathers, and the optimizer. Collectives are ring α-β:
// an all-reduce of n bytes over g ranks costs 2(g-1)α + 2(g-1)/g n/β, on the link between
// hosts when the group spans hosts. On a CPU host whose ranks outnumber its cores, the ranks
// share the cores: the step is at least the host's total work over its cores.
#pragma once

#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "parallel/partition.h"
#include "plan/cluster.h"
#include "train/memory_need.h"
#include "train/run_config.h"

namespace loom {

// Every choice the planner makes. `microbatches` is [train] grad_accum.
struct Layout {
  int dp = 1, tp = 1, pp = 1, zero = 0;
  std::string schedule = "1f1b";
  int microbatches = 1, virtual_stages = 1, micro_batch = 1;
  std::string precision = "fp32", recompute = "none";
  bool sequence_parallel = false;
  int world() const { return dp * tp * pp; }
  bool operator==(const Layout&) const = default;
};

// "dp=2,tp=1,pp=2,zero=1,schedule=1f1b,m=4,v=1,mb=2,bf16,recompute=none,sp=0"
std::string to_string(const Layout& l);

// `base` with the layout's fields set; global_batch = micro_batch * microbatches * dp.
RunConfig with_layout(const RunConfig& base, const Layout& l);
Layout layout_of(const RunConfig& cfg);

struct Prediction {
  Layout layout;
  double step_s = 0;          // one optimizer step
  double compute_s = 0;       // forward + backward compute on the busiest rank
  double exposed_comm_s = 0;  // communication nothing hides (tp, p2p, dp, ZeRO gathers)
  double bubble_s = 0;        // the pipeline's idle time on the busiest rank
  double optimizer_s = 0;     // AdamW over the rank's shard, and the low-precision cast
  double contention_s = 0;    // a CPU host's ranks beyond its cores waiting for one
  double tokens_per_s = 0, mfu = 0;
  MemoryNeed memory;          // per rank, the start-up line's estimate
  double memory_limit = 0;    // per rank: the device's, or the host's share
  bool fits = true;
  bool simulated = false;     // the bubble came from the simulator (else the closed form)
  std::vector<double> stage_fwd, stage_bwd;  // per virtual stage and micro-batch, seconds
};

struct CostModel {
  CostModel(const ClusterSpec& c, int ranks);
  const ClusterSpec& cluster;
  int world;  // ranks of the run
  // Ranks on one host: a GPU host's devices; a CPU host's share of the world.
  int ranks_per_node() const;
  // The link within a host as this world uses it: on a CPU host with measured aggregates
  // (host_collective_bytes), each rank gets at most its share of them, since the ranks on
  // the host communicate at once (every dp group reduces at the step's end, every tp group
  // within each block).
  LinkSpec intra;
  // Prices `cfg` (a resolved, valid RunConfig at this world size). With `simulate`, the
  // pipeline's makespan comes from the simulator on the schedule's action lists; without, a
  // closed form ((m + (p-1)/v) times the busiest rank's work per micro-batch) for a fast
  // first pass.
  Prediction price(const RunConfig& cfg, bool simulate = true) const;
  // Model FLOPs per second the whole world can do at peak in `precision` (MFU's denominator).
  double world_peak_flops(const std::string& precision) const;
  // The trainer's stage partition of `cfg` (balance_stages, or its stage_layers), cached per
  // (n_layer, seq_len, virtual stages, stage_layers): a search asks for the same few
  // hundreds of thousands of times.
  const StagePartition& partition(const RunConfig& cfg) const;
  mutable std::map<std::tuple<int, int, int, std::string>, StagePartition> partitions;
};

}  // namespace loom
