// loom train --config FILE.toml [--set section.key=value ...] [--dp N --zero Z]
//            [--resume auto|DIR] [--inject-fault SPEC]
// Under mpirun/srun the job's processes form the process grid; alone it is one process.
// Under `loom launch` every rank also sends heartbeats with its step to the supervisor.
#include <fmt/core.h>

#include <cstdlib>
#include <filesystem>
#include <optional>

#include "ckpt/checkpoint.h"
#include "cli/command.h"
#include "comm/mpi_comm.h"
#include "comm/process_grid.h"
#include "core/check.h"
#include "core/memory.h"
#include "kernels/openblas.h"
#include "launch/fault.h"
#include "launch/heartbeat.h"
#include "parallel/partition.h"
#include "plan/search.h"
#include "train/stage_profile.h"
#include "train/run_dir.h"
#include "train/startup_checks.h"
#include "train/trainer.h"

namespace loom::cli {
namespace {

struct TrainOpts {
  std::string config;
  std::vector<std::string> overrides;
  std::string resume;
  std::string inject_fault;
  std::string layout, cluster = "configs/clusters/local.toml";  // --layout auto
  FaultSpec fault;  // parsed inject_fault
  std::optional<int> dp, tp, pp, zero, microbatches, virtual_stages;
  std::optional<std::string> schedule, stage_layers, recompute, attention, precision;
  bool sequence_parallel = false, trace = false, elastic = false, overwrite = false;
  ThreadChoice threads;  // resolved from [run] threads
};

std::vector<std::string> flag_overrides(const TrainOpts& o) {
  std::vector<std::string> out = o.overrides;
  for (auto [key, v] : {std::pair{"parallel.dp", o.dp}, {"parallel.tp", o.tp},
                        {"parallel.pp", o.pp}, {"parallel.zero", o.zero},
                        {"train.grad_accum", o.microbatches},
                        {"parallel.virtual_stages", o.virtual_stages}})
    if (v) out.push_back(fmt::format("{}={}", key, *v));
  if (o.schedule) out.push_back(fmt::format("parallel.schedule=\"{}\"", *o.schedule));
  if (o.stage_layers) out.push_back(fmt::format("parallel.stage_layers=\"{}\"", *o.stage_layers));
  if (o.recompute) out.push_back(fmt::format("train.recompute=\"{}\"", *o.recompute));
  if (o.attention) out.push_back(fmt::format("train.attention=\"{}\"", *o.attention));
  if (o.precision) out.push_back(fmt::format("train.precision=\"{}\"", *o.precision));
  if (o.sequence_parallel) out.push_back("parallel.sequence_parallel=true");
  if (o.trace) out.push_back("run.trace=true");
  return out;
}

// A restart by `loom launch` (LOOM_ATTEMPT > 0) resumes with "auto"; when the failed attempt
// saved no valid checkpoint it starts again from step 0, which gives the same run.
bool restarted_by_supervisor() {
  const char* attempt = std::getenv("LOOM_ATTEMPT");
  return attempt != nullptr && std::string(attempt) != "0";
}

std::optional<std::filesystem::path> resume_point(const RunConfig& cfg, const std::string& resume,
                                                  int rank) {
  if (resume.empty()) return std::nullopt;
  if (resume != "auto") return resolve_checkpoint(resume);
  if (!restarted_by_supervisor()) return resolve_checkpoint(cfg.run.dir);
  try {
    return resolve_checkpoint(cfg.run.dir);
  } catch (const InputError& e) {
    if (rank == 0)
      fmt::print("restart without a checkpoint ({}): starting from step 0\n", e.what());
    return std::nullopt;
  }
}

// Elastic restart on a different number of processes: data parallelism takes what tensor
// and pipeline parallelism leave, and accumulation grows or shrinks so the global batch (and
// with it the data order and the optimizer's trajectory) stays the same.
RunConfig elastic_config(RunConfig cfg, int world, int rank) {
  ParallelConfig& p = cfg.parallel;
  TrainConfig& t = cfg.train;
  const int mp = p.tp * p.pp;
  LOOM_REQUIRE(world % mp == 0, "--elastic: {} processes cannot hold tp={} x pp={}", world, p.tp,
               p.pp);
  const int dp = world / mp;
  if (dp == p.dp) return cfg;
  const int64_t global = int64_t(t.micro_batch) * t.grad_accum * p.dp;
  LOOM_REQUIRE(global % (int64_t(t.micro_batch) * dp) == 0,
               "--elastic: the global batch {} is not micro_batch {} x a whole accumulation at "
               "dp={}", global, t.micro_batch, dp);
  if (rank == 0)
    fmt::print("elastic: {} processes: dp {} -> {}, grad_accum {} -> {} (global batch {} kept)\n",
               world, p.dp, dp, t.grad_accum, global / (int64_t(t.micro_batch) * dp), global);
  t.grad_accum = int(global / (int64_t(t.micro_batch) * dp));
  p.dp = dp;
  if (t.global_batch != 0) t.global_batch = int(global);
  cfg.validate();
  return cfg;
}

// --layout auto: the layout `loom plan` ranks first for this world and the config's global
// batch on the cluster file. Every rank computes it from the same inputs, so every rank
// picks the same (check_same_binary_and_config compares them).
RunConfig auto_layout(const RunConfig& cfg, const TrainOpts& o, int world, int rank) {
  LOOM_REQUIRE(o.layout == "auto", "--layout '{}': only 'auto' is accepted (fix fields with "
               "--dp, --tp, ... instead)", o.layout);
  const ClusterSpec cluster = load_cluster(o.cluster);
  const CostModel model(cluster, world);
  const int64_t global = global_batch_of(cfg);
  const SearchResult r = search_layouts(cfg, model, global);
  LOOM_REQUIRE(!r.ranked.empty(), "--layout auto: none of the {} layouts of {} ranks fits in "
               "memory on {}", r.priced, world, o.cluster);
  const Prediction& best = r.ranked.front();
  if (rank == 0)
    fmt::print("layout auto: {} layouts of {} ranks priced on {}; training the first: {} "
               "(predicted {:.4g} tokens/s, {} per rank)\n",
               r.priced, world, o.cluster, to_string(best.layout), best.tokens_per_s,
               format_bytes(best.memory.total()));
  RunConfig out = with_layout(cfg, best.layout);
  out.validate();
  return out;
}

// stage_layers "auto": a resumed run keeps the split its run directory recorded (the same
// split, the same numerics); a new one measures its stages (train/stage_profile.h).
RunConfig resolve_stages(RunConfig cfg, const ProcessGrid& grid, const TrainOpts& o) {
  if (cfg.parallel.stage_layers != "auto" || cfg.parallel.pp == 1)
    return resolve_stage_layers(cfg, grid, nullptr);
  const std::filesystem::path recorded = std::filesystem::path(cfg.run.dir) / "config.toml";
  if (!o.resume.empty() && std::filesystem::exists(recorded)) {
    try {
      const ParallelConfig was = load_run_config(recorded.string()).parallel;
      if (was.pp == cfg.parallel.pp && was.virtual_stages == cfg.parallel.virtual_stages &&
          !was.stage_layers.empty() && was.stage_layers != "auto") {
        if (grid.rank() == 0)
          fmt::print("stage layers auto: resuming with the recorded split {}\n", was.stage_layers);
        cfg.parallel.stage_layers = was.stage_layers;
        return cfg;
      }
    } catch (const InputError&) {
      // An unreadable record: measure again.
    }
  }
  return resolve_stage_layers(cfg, grid, stdout);
}

int train_on(const RunConfig& cfg, const ProcessGrid& grid, const TrainOpts& o,
             const std::function<void(Trace*)>& trace_sink = nullptr) {
  const std::unique_ptr<HeartbeatClient> heartbeat = HeartbeatClient::from_env(grid.rank());
  const FaultInjector injector(o.fault, grid.rank(), fault_armed_from_env());
  Trainer trainer(cfg, grid);  // checks the data files; writes nothing yet
  // World rank 0 writes the run directory, and holds it for the whole run.
  std::optional<RunDirLock> run_dir_lock;
  if (grid.rank() == 0) {
    run_dir_lock.emplace(cfg.run.dir);
    claim_run_dir(cfg.run.dir, !o.resume.empty(), o.overwrite);
  }
  trainer.set_step_observer([&heartbeat, &injector](int step) {
    if (heartbeat) heartbeat->set_step(step);
    injector.at_step(step);
  });
  trainer.set_checkpoint_observer([&injector] { injector.during_checkpoint(); });
  trainer.set_metrics_fault(injector.disk_full_step());
  if (heartbeat) trainer.set_busy_observer([&heartbeat](bool busy) { heartbeat->set_busy(busy); });
  if (grid.rank() == 0)
    fmt::print("threads: {} per rank ({})\n", o.threads.threads, o.threads.why);
  if (grid.rank() == 0 && grid.shape().pp > 1)
    fmt::print("pipeline partition ({} schedule, {} micro-batches):\n{}\n", cfg.parallel.schedule,
               cfg.train.grad_accum, describe(trainer.partition(), grid.shape().pp));
  if (cfg.run.trace) {
    grid.world().barrier();  // one clock origin for every rank of this host
    trainer.enable_trace(Trace::Clock::now());
    if (trace_sink) trace_sink(&trainer.trace());
  }
  if (const auto from = resume_point(cfg, o.resume, grid.rank())) {
    trainer.resume(*from);
    if (grid.rank() == 0)
      fmt::print("resumed from {} at step {}\n", from->string(), trainer.next_step());
  }
  trainer.run(stdout);
  if (heartbeat) heartbeat->finish();
  if (trace_sink) trace_sink(nullptr);
  trainer.write_trace();
  return 0;
}

}  // namespace

RunFn setup_train(CLI::App& sub) {
  auto o = std::make_shared<TrainOpts>();
  sub.add_option("--config", o->config, "run config (TOML)")->required();
  sub.add_option("--set", o->overrides, "override a config value: section.key=value");
  sub.add_option("--dp", o->dp, "data-parallel ranks ([parallel] dp)");
  sub.add_option("--tp", o->tp, "tensor-parallel ranks ([parallel] tp)");
  sub.add_option("--pp", o->pp, "pipeline stages ([parallel] pp)");
  sub.add_option("--zero", o->zero, "ZeRO stage 0-3 ([parallel] zero)");
  sub.add_option("--microbatches", o->microbatches,
                 "micro-batches per step and dp rank ([train] grad_accum)");
  sub.add_option("--schedule", o->schedule, "pipeline schedule: gpipe | 1f1b | interleaved");
  sub.add_option("--virtual-stages", o->virtual_stages,
                 "model chunks per pipeline rank (interleaved, >= 2)");
  sub.add_option("--stage-layers", o->stage_layers,
                 "blocks per virtual stage, e.g. 3,4,4,1 (the last may be 0: the head alone); "
                 "auto (default): balanced by measured cost; '' by FLOP count");
  sub.add_option("--recompute", o->recompute,
                 "activation recomputation: none | selective | full ([train] recompute)");
  sub.add_option("--attention", o->attention,
                 "attention kernel: flash | materialized ([train] attention)");
  sub.add_option("--precision", o->precision,
                 "compute precision: fp32 | bf16 | fp16 ([train] precision)");
  sub.add_flag("--sequence-parallel", o->sequence_parallel,
               "shard layernorm and residual token rows over tp ranks");
  sub.add_option("--layout", o->layout,
                 "auto: train the layout loom plan ranks first for the processes started "
                 "(replaces dp, tp, pp, zero, schedule, micro-batches, precision, recompute)");
  sub.add_option("--cluster", o->cluster, "cluster file --layout auto prices on")
      ->capture_default_str();
  sub.add_flag("--trace", o->trace, "write per-rank Chrome traces to RUN/trace (loom report)");
  sub.add_option("--resume", o->resume,
                 "continue from a checkpoint: 'auto' (newest valid one in the run dir) or a "
                 "checkpoint directory");
  sub.add_flag("--overwrite", o->overwrite,
               "start afresh in a run directory that holds another run, removing its contents");
  sub.add_flag("--elastic", o->elastic,
               "fit data parallelism to the processes started (loom launch --min-n), keeping "
               "the global batch");
  sub.add_option("--inject-fault", o->inject_fault,
                 "for recovery tests: kill:rank=R:step=S | hang:rank=R:step=S | "
                 "exit-during-checkpoint:rank=R[:step=S] (only when LOOM_ATTEMPT is unset or 0)");
  return [o] {
    o->fault = parse_fault(o->inject_fault);
    // A restart by loom launch adds --resume auto to the first attempt's arguments.
    if (restarted_by_supervisor()) o->overwrite = false;
    LOOM_REQUIRE(!(o->overwrite && !o->resume.empty()),
                 "--overwrite clears the run directory and --resume continues it: pass one");
    RunConfig cfg = load_run_config(o->config, flag_overrides(*o));
    o->threads = kernels::set_compute_threads(cfg.run.threads);
    LOOM_REQUIRE(o->layout.empty() || !o->elastic, "--layout auto chooses dp itself: drop "
                 "--elastic");
    if (!launched_under_mpi()) {
      if (!o->layout.empty()) cfg = auto_layout(cfg, *o, 1, 0);
      if (o->elastic) cfg = elastic_config(cfg, 1, 0);
      const GridShape shape{.pp = cfg.parallel.pp, .dp = cfg.parallel.dp, .tp = cfg.parallel.tp};
      LOOM_REQUIRE(shape.world() == 1,
                   "pp={} x dp={} x tp={} needs {} processes: run under mpirun -np {} (or srun)",
                   shape.pp, shape.dp, shape.tp, shape.world(), shape.world());
      const ProcessGrid grid = ProcessGrid::single();
      return train_on(resolve_stages(cfg, grid, *o), grid, *o);
    }
    MpiRuntime mpi(MpiOptions{.timeout_s = cfg.comm.timeout_s,
                              .on_failure = [](const FailureRecord& r) {
                                send_failure_record(r);
                              }});
    try {
      if (o->elastic) cfg = elastic_config(cfg, mpi.world_size(), mpi.world_rank());
      if (!o->layout.empty()) cfg = auto_layout(cfg, *o, mpi.world_size(), mpi.world_rank());
      const GridShape shape{.pp = cfg.parallel.pp, .dp = cfg.parallel.dp, .tp = cfg.parallel.tp};
      ProcessGrid grid = ProcessGrid::create(mpi.world(), shape, &mpi.progress());
      mpi.set_rank_describer([&grid](int r) { return grid.describe(r); });
      check_same_binary_and_config(grid, cfg);
      cfg = resolve_stages(cfg, grid, *o);
      return train_on(cfg, grid, *o, [&mpi](Trace* t) { mpi.set_trace(t); });
    } catch (const Error& e) {
      // Every rank sees the same config error; a rank-local one must still end the job.
      fmt::print(stderr, "error (rank {}): {}\n", mpi.world_rank(), e.what());
      std::fflush(stderr);
      // Under loom launch the supervisor decides from this record, not from the words.
      FailureRecord r;
      r.kind = failure_kind_for_exit(e.exit_code());
      r.rank = mpi.world_rank();
      r.step = mpi.progress().step;
      r.micro_batch = mpi.progress().micro_batch;
      r.exit_code = e.exit_code();
      r.message = e.what();
      send_failure_record(r);
      mpi.world()->abort(e.exit_code());
    }
    return 1;  // not reached: abort() ends the job
  };
}

}  // namespace loom::cli
