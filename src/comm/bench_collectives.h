// `loom bench collectives`: an nccl-tests style table of loom's Comm beside raw MPI calls
// in the same run, 4 KB to 256 MB. Every timed size is verified first (#wrong counts
// elements that differ from the closed-form result). busbw = algbw * 2(n-1)/n for
// all-reduce and (n-1)/n for reduce-scatter and all-gather, so figures compare across
// rank counts.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "comm/comm.h"

namespace loom {

struct CollectiveRow {
  std::string op;      // "allreduce" | "reduce_scatter" | "allgather"
  std::string impl;    // "loom" | "mpi"
  size_t bytes = 0;    // nccl-tests "size": the full buffer (send of RS, recv of AG)
  size_t count = 0;    // floats in that buffer
  double time_us = 0;  // median of the timed iterations
  double algbw = 0;    // GB/s: bytes / time
  double busbw = 0;    // GB/s: algbw * bus factor
  long wrong = 0;
};

// Collective on `world` (an MpiComm); every rank gets the rows.
std::vector<CollectiveRow> bench_collectives(Comm& world, size_t min_bytes, size_t max_bytes,
                                             int max_iters);

}  // namespace loom
