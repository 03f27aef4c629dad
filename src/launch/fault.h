// Fault injection for testing recovery (`loom train --inject-fault SPEC`):
//
//   kill:rank=R:step=S                       world rank R raises SIGKILL at the start of step S
//   hang:rank=R:step=S                       world rank R sleeps forever at the start of step S
//   exit-during-checkpoint:rank=R[:step=S]   world rank R calls _Exit(9) in the middle of the
//                                            save of checkpoint S (the first save if omitted)
//   disk-full:step=S                         from step S on, world rank 0's metrics.jsonl
//                                            writes fail with ENOSPC (they go to /dev/full),
//                                            for testing where no small file system can be
//                                            mounted
//   kill:rank=R:every=N                      world rank R raises SIGKILL at step (a+1)*N on
//                                            supervisor attempt a (LOOM_ATTEMPT): one failure
//                                            every N steps however far back each restart
//                                            resumes (measuring recovery over many failures)
//
// Steps are 0-based optimizer step indices (Trainer::next_step()); checkpoint S is the one
// saved after S completed steps (checkpoints/step_S). A supervisor's restarts set
// LOOM_ATTEMPT > 0, and faults fire only on attempt 0, so the restarted job runs clean.
#pragma once

#include <atomic>
#include <string>

namespace loom {

struct FaultSpec {
  enum class Kind { kNone, kKill, kHang, kExitDuringCheckpoint, kDiskFull } kind = Kind::kNone;
  int rank = -1;  // world rank that fails
  int step = -1;  // kill/hang: step index; exit-during-checkpoint: checkpoint step (-1 = first)
  int every = 0;  // kill: every N steps (and on every attempt) when > 0
};

// Parses SPEC as above; "" gives kNone. Anything else throws InputError listing the forms.
FaultSpec parse_fault(const std::string& spec);

// True unless LOOM_ATTEMPT is set to something other than "0" (a supervisor's restart).
bool fault_armed_from_env();

class FaultInjector {
 public:
  FaultInjector(FaultSpec spec, int world_rank, bool armed);

  // Called at the start of every step: kill or hang on the matching rank and step.
  void at_step(int step) const;
  // Called in the middle of every checkpoint save (tensor files written, manifest not yet).
  void during_checkpoint() const;
  // disk-full: the step from which metrics writes fail, when armed; else -1.
  int disk_full_step() const;

 private:
  bool fires_here() const { return armed_ && spec_.rank == world_rank_; }

  FaultSpec spec_;
  int world_rank_;
  bool armed_;
  // The last step seen by at_step: the checkpoint being saved is step last_step_ + 1.
  mutable std::atomic<int> last_step_{-1};
  int attempt_ = 0;  // LOOM_ATTEMPT
};

}  // namespace loom
