// OpenMPI behind the Comm interface.
//
// Each communicator owns a worker thread that runs its operations in submission order
// (MPI_THREAD_MULTIPLE): an async operation returns at once and really progresses while
// the caller computes (a bucket's all-reduce overlaps the rest of backward), and blocking
// forms are async + wait. Every rank submits the same operations in the same order, so
// the MPI collective ordering rule holds.
//
// Hang detection: every rank publishes, per communicator, the sequence number of the last
// operation it entered, in an MPI one-sided window (passive target: readable while the
// owner computes or sleeps). A wait that passes the deadline reads those numbers, prints
// e.g. "rank 3 (pp 0, dp 3, tp 0) never entered ALLREDUCE #305 of group dp[0..3] at step
// 12", hands the same facts as a FailureRecord to MpiOptions::on_failure, then MPI_Aborts
// the job.
//
// Tracing: with set_trace(t), each operation adds a TraceEvent to t when the worker has
// run it ("ALLREDUCE dp[0..3]", cat "collective" on kLaneCollective; SEND/RECV cat "p2p" on
// kLaneP2p, spanning only the posting of the request), with bytes, step and micro-batch.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "comm/comm.h"
#include "core/failure.h"

namespace loom {

class Trace;

// True when this process was started by mpirun/srun (OpenMPI or PMI environment).
bool launched_under_mpi();

struct MpiOptions {
  double timeout_s = 300;  // deadline of every operation
  // Called with the record of a passed deadline after its report is printed and before
  // the job is aborted (loom launch's supervisor decides from it); may be empty.
  std::function<void(const FailureRecord&)> on_failure = nullptr;
};

// Owns MPI_Init_thread/MPI_Finalize and the hang-detection window. One per process.
class MpiRuntime {
 public:
  explicit MpiRuntime(const MpiOptions& opt);
  ~MpiRuntime();
  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;

  int world_rank() const;
  int world_size() const;
  // The world communicator (id 0); sub-communicators come from split().
  std::unique_ptr<Comm> world();
  // Where the job is (step, micro-batch), quoted in deadline reports.
  CommProgress& progress();
  // How a world rank is named in reports, e.g. "rank 3 (pp 0, dp 3, tp 0)".
  void set_rank_describer(std::function<std::string(int)> f);
  // Records every communicator's operations into `trace` from now on; nullptr turns it
  // off (the default). The trace must outlive the operations that run while it is set:
  // set nullptr and wait for outstanding handles before destroying it.
  void set_trace(Trace* trace);

  struct State;

 private:
  std::shared_ptr<State> state_;
};

}  // namespace loom
