// Runs a lowered pipeline schedule (schedule.h) over MPI: the one executor for GPipe, 1F1B
// and interleaved 1F1B. Each rank walks its own action list in order:
//   RecvAct / RecvGrad  post a non-blocking receive into a per-(chunk, micro-batch) buffer;
//   F / B               wait for that buffer's receive, then call the stage;
//   SendAct / SendGrad  post a non-blocking send of the stage's output buffer.
// Buffers are owned by the executor, one per (chunk, micro-batch) and direction, so no
// send buffer is overwritten before the step ends; every send is waited for at the end.
// On an exception (from the stage or the communicator) the executor prints the step x
// rank grid of the schedule with the failing action marked "<-- ERROR HERE" and rethrows.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "comm/comm.h"
#include "core/trace.h"
#include "parallel/schedule.h"

namespace loom {

// The model chunks of one pipeline rank, as the executor drives them. Chunk c of rank r is
// virtual stage c*p + r (schedule.h).
class PipelineStage {
 public:
  virtual ~PipelineStage() = default;
  // `in`: the received input activation (act_floats), null on virtual stage 0 (which reads
  // tokens itself); `out`: where the output activation goes, null on the last virtual
  // stage (which computes the loss).
  virtual void forward(int chunk, int mb, const float* in, float* out) = 0;
  // `dout`: the received gradient of the output, null on the last virtual stage; `din`:
  // where the gradient of the input goes, null on virtual stage 0.
  virtual void backward(int chunk, int mb, const float* dout, float* din) = 0;
};

// Which schedule, by name, lowered: "gpipe", "1f1b" (v = 1), "interleaved" (v >= 2).
// Throws InputError for an unknown name or a shape the builder rejects.
Schedule build_schedule(const std::string& name, int p, int m, int v);

// The step x rank grid of a lowered schedule (one row per action index, one column per
// rank, as the simulator prints a deadlock), with rank `rank`'s action `failed_index`
// marked "<-- ERROR HERE" (an index past the end marks the final wait for sends).
std::string pipeline_error_grid(const Schedule& lowered, int v, int rank, size_t failed_index);

// The executor posts sends and receives in list order and MPI matches the messages between
// two ranks in posting order, so for every ordered pair (a, b) the sends a posts to b must
// come in the order b posts its receives from a. Returns "" when they do, else names the
// first pair and position where they differ. Messages a rank sends itself are exempt (the
// executor copies them).
std::string p2p_order_mismatch(const Schedule& lowered, int v);

struct PipelineStats {
  double seconds = 0;       // wall time of run()
  double compute_s = 0;     // inside stage forward/backward
  double idle_fraction() const { return seconds > 0 ? 1.0 - compute_s / seconds : 0.0; }
};

class PipelineExecutor {
 public:
  // `pp`: the pipeline communicator (rank = pipeline stage); `lowered`: the lowered
  // schedule of all p ranks (this rank runs lowered[pp.rank()]); `act_floats`: the size of
  // one activation (and of its gradient) exchanged between stages. `trace` may be null.
  // Checks that the schedule fits the communicator and passes p2p_order_mismatch(). A
  // message a rank sends itself (pp=1 interleaved) is copied, never sent.
  PipelineExecutor(Comm& pp, Schedule lowered, int m, int v, size_t act_floats,
                   Trace* trace = nullptr, CommProgress* progress = nullptr);

  // Executes this rank's action list once (one optimizer step's micro-batches).
  PipelineStats run(PipelineStage& stage, int64_t step);

  const Schedule& schedule() const { return lowered_; }
  // Micro-batches whose activations chunk `chunk` of this rank holds at once at most
  // (forwards done, backwards not yet): the activation slots the model needs.
  int peak_inflight(int chunk) const;

 private:
  struct RunState;  // pending receives and sends, done flags and stats of one run()
  void execute(const Action& a, RunState& st);
  void compute(const Action& a, RunState& st);
  void post_recv(const Action& a, RunState& st);
  void post_send(const Action& a, RunState& st);
  void wait_input(const Action& a, RunState& st);
  std::vector<float>& buffer(OpKind op, int chunk, int mb);
  bool tracing() const { return trace_ && trace_->enabled(); }

  Comm& pp_;
  Schedule lowered_;
  int m_, v_;
  size_t act_floats_;
  Trace* trace_;
  CommProgress* progress_;
  // [chunk][mb] buffers of act_floats_: received activations, sent activations,
  // received output-gradients, sent input-gradients (allocated once, and only those this
  // rank's forwards and backwards use; the rest stay empty).
  std::vector<std::vector<std::vector<float>>> recv_act_, send_act_, recv_grad_, send_grad_;
};

}  // namespace loom
