// The communication interface every layer above talks to. This issue ships the
// single-rank implementation; MpiComm (and later NCCL) implement the same interface.
// Every operation will carry a tag (op, group, sequence, bytes, step, micro-batch) and a
// deadline once there is more than one rank to wait for.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

namespace loom {

enum class ReduceOp { kSum, kMax };

class Comm {
 public:
  virtual ~Comm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // A name for messages, e.g. "dp[0..3]".
  virtual std::string name() const = 0;

  // In-place all-reduce of `count` floats.
  virtual void allreduce(float* data, size_t count, ReduceOp op) = 0;
  virtual void allreduce(double* data, size_t count, ReduceOp op) = 0;
  // send: `count` floats from every rank's `send`, rank r's chunk lands at recv + r*count.
  virtual void allgather(const float* send, float* recv, size_t count) = 0;
  // recv (count floats) = sum over ranks of send[rank*count, (rank+1)*count).
  virtual void reduce_scatter(const float* send, float* recv, size_t count) = 0;
  virtual void broadcast(float* data, size_t count, int root) = 0;
  virtual void barrier() = 0;
  // Ends every process of the job (MPI_Abort for MPI); for one rank, exits.
  [[noreturn]] virtual void abort(int exit_code) = 0;
};

// The trivial communicator of a one-process job: every collective is the identity.
std::unique_ptr<Comm> make_single_comm(std::string name = "world");

}  // namespace loom
