// The communication interface every layer above talks to: SingleComm for a one-process
// job, MpiComm over OpenMPI (NCCL later). Every operation carries a tag (op, group,
// sequence number, bytes, step, micro-batch) and a deadline: a rank that waits past it
// reports which ranks of the group never entered the operation, then ends the job.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

namespace loom {

enum class ReduceOp { kSum, kMax };

// Where the job is, for messages: set by the trainer, read by every communicator.
struct CommProgress {
  int64_t step = -1;
  int micro_batch = -1;
};

// What a communicator's operations of one kind ("ALLREDUCE", "SEND", ...) cost this rank:
// how many, and the bytes it sends for them under the bandwidth-optimal algorithm over the
// g ranks of the group: an all-reduce of B bytes 2(g-1)/g B (reduce-scatter, then
// all-gather), a reduce-scatter, all-gather, all-to-all, reduce or broadcast (g-1)/g of its
// whole buffer, a send its bytes, a receive none. The count is exact for what loom asks;
// the algorithm MPI picks may send more (a tree, a small message's latency-bound one).
struct TrafficCount {
  uint64_t ops = 0, bytes = 0;
};
using Traffic = std::map<std::string, TrafficCount>;

// A handle on an asynchronous operation; wait() blocks until it completed (or the
// deadline passed, which ends the job).
class CommHandle {
 public:
  virtual ~CommHandle() = default;
  virtual void wait() = 0;
  // True once the operation completed (never blocks).
  virtual bool ready() = 0;
};

class Comm {
 public:
  virtual ~Comm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // A name for messages, e.g. "dp[0..3]".
  virtual std::string name() const = 0;
  // Every operation this communicator ran so far, by kind (none for a one-rank job).
  virtual Traffic traffic() const = 0;

  // In-place all-reduce of `count` values.
  virtual std::unique_ptr<CommHandle> allreduce_async(float* data, size_t count, ReduceOp op) = 0;
  virtual void allreduce(double* data, size_t count, ReduceOp op) = 0;
  // `count` floats from every rank's `send`; rank r's chunk lands at recv + r*count.
  virtual std::unique_ptr<CommHandle> allgather_async(const float* send, float* recv,
                                                      size_t count) = 0;
  // recv (count floats) = sum over ranks of send[rank*count, (rank+1)*count).
  virtual std::unique_ptr<CommHandle> reduce_scatter_async(const float* send, float* recv,
                                                           size_t count) = 0;
  // In place: on `root`, data becomes the sum over ranks; elsewhere it is left as sent.
  virtual std::unique_ptr<CommHandle> reduce_async(float* data, size_t count, int root) = 0;
  virtual std::unique_ptr<CommHandle> broadcast_async(float* data, size_t count, int root) = 0;
  virtual std::unique_ptr<CommHandle> send_async(const float* data, size_t count, int dst) = 0;
  virtual std::unique_ptr<CommHandle> recv_async(float* data, size_t count, int src) = 0;
  virtual std::unique_ptr<CommHandle> barrier_async() = 0;
  // Gradient reduction in bf16 ([parallel] grad_reduce = "bf16"): `count` bf16 values
  // (their bits), each pairwise sum taken in fp32 and rounded back to bf16 (half the bytes
  // of the fp32 forms). Every rank gets the same bits.
  virtual std::unique_ptr<CommHandle> allreduce_bf16_async(uint16_t* data, size_t count) = 0;
  virtual std::unique_ptr<CommHandle> reduce_bf16_async(uint16_t* data, size_t count,
                                                        int root) = 0;
  // `count` 16-bit values (the bits of bf16 or fp16 weights) from root to every rank:
  // ZeRO's low-precision weight gathers.
  virtual std::unique_ptr<CommHandle> broadcast_u16_async(uint16_t* data, size_t count,
                                                          int root) = 0;
  // `count` bytes from root to every rank: control messages (a server's step inputs).
  virtual std::unique_ptr<CommHandle> broadcast_bytes_async(std::byte* data, size_t count,
                                                            int root) = 0;
  // Bytes: rank r's `count` bytes at send + q*count go to rank q, landing at recv + r*count
  // (compressed gradient blocks to the rank that sums them).
  virtual std::unique_ptr<CommHandle> alltoall_bytes_async(const std::byte* send,
                                                           std::byte* recv, size_t count) = 0;
  // Bytes: every rank's `count` bytes, rank r's landing at recv + r*count.
  virtual std::unique_ptr<CommHandle> allgather_bytes_async(const std::byte* send,
                                                            std::byte* recv, size_t count) = 0;
  // Ends every process of the job (MPI_Abort for MPI); for one rank, exits.
  [[noreturn]] virtual void abort(int exit_code) = 0;
  // A sub-communicator of the ranks passing the same color, ordered by key (collective).
  virtual std::unique_ptr<Comm> split(int color, int key, const std::string& name) = 0;

  // Blocking forms.
  void allreduce(float* data, size_t count, ReduceOp op) { allreduce_async(data, count, op)->wait(); }
  void allgather(const float* send, float* recv, size_t count) {
    allgather_async(send, recv, count)->wait();
  }
  void reduce_scatter(const float* send, float* recv, size_t count) {
    reduce_scatter_async(send, recv, count)->wait();
  }
  void broadcast(float* data, size_t count, int root) { broadcast_async(data, count, root)->wait(); }
  void send(const float* data, size_t count, int dst) { send_async(data, count, dst)->wait(); }
  void recv(float* data, size_t count, int src) { recv_async(data, count, src)->wait(); }
  void barrier() { barrier_async()->wait(); }
};

// The trivial communicator of a one-process job: every collective is the identity.
std::unique_ptr<Comm> make_single_comm(std::string name = "world");

}  // namespace loom
