#include "comm/bench_collectives.h"

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <functional>

#include "core/timer.h"

namespace loom {
namespace {

// Rank r's input element i: small integers, so every sum is exact in fp32.
float input(int rank, size_t i) { return float(rank + 1) + float(i % 7); }

struct Case {
  std::string op;
  double bus_factor;
  size_t send_count, recv_count;
  std::function<void(bool loom, float* send, float* recv)> run;
  std::function<float(size_t i)> expected;  // recv element i
};

std::vector<Case> cases(Comm& world, size_t count) {
  const int n = world.size(), r = world.rank();
  const size_t per_rank = count / size_t(n);
  const double nn = n;
  return {
      {"allreduce", 2 * (nn - 1) / nn, count, count,
       [&world, count](bool loom, float* send, float*) {
         if (loom) world.allreduce(send, count, ReduceOp::kSum);
         else MPI_Allreduce(MPI_IN_PLACE, send, int(count), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
       },
       [n](size_t i) { return float(n * (n + 1) / 2) + float(n) * float(i % 7); }},
      {"reduce_scatter", (nn - 1) / nn, count, per_rank,
       [&world, per_rank](bool loom, float* send, float* recv) {
         if (loom) world.reduce_scatter(send, recv, per_rank);
         else MPI_Reduce_scatter_block(send, recv, int(per_rank), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
       },
       [n, r, per_rank](size_t i) {
         return float(n * (n + 1) / 2) + float(n) * float((size_t(r) * per_rank + i) % 7);
       }},
      {"allgather", (nn - 1) / nn, per_rank, count,
       [&world, per_rank](bool loom, float* send, float* recv) {
         if (loom) world.allgather(send, recv, per_rank);
         else MPI_Allgather(send, int(per_rank), MPI_FLOAT, recv, int(per_rank), MPI_FLOAT, MPI_COMM_WORLD);
       },
       [per_rank](size_t i) { return input(int(i / per_rank), i % per_rank); }},
  };
}

CollectiveRow measure(Comm& world, const Case& c, bool loom, size_t bytes, int iters) {
  std::vector<float> send(c.send_count), recv(c.recv_count);
  for (size_t i = 0; i < send.size(); ++i) send[i] = input(world.rank(), i);
  c.run(loom, send.data(), recv.data());  // verify before timing
  const std::vector<float>& out = c.op == "allreduce" ? send : recv;
  long wrong = 0;
  for (size_t i = 0; i < out.size(); ++i) wrong += out[i] != c.expected(i);
  std::vector<double> times;
  for (int it = 0; it < iters; ++it) {
    MPI_Barrier(MPI_COMM_WORLD);
    const auto t0 = std::chrono::steady_clock::now();
    c.run(loom, send.data(), recv.data());
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  // The slowest rank's median is the collective's time.
  double t = median(times);
  MPI_Allreduce(MPI_IN_PLACE, &t, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, &wrong, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
  CollectiveRow row{c.op, loom ? "loom" : "mpi", bytes, bytes / 4, t * 1e6, 0, 0, wrong};
  row.algbw = double(bytes) / t / 1e9;
  row.busbw = row.algbw * c.bus_factor;
  return row;
}

}  // namespace

std::vector<CollectiveRow> bench_collectives(Comm& world, size_t min_bytes, size_t max_bytes,
                                             int max_iters) {
  std::vector<CollectiveRow> rows;
  const size_t align = 4 * size_t(world.size());  // whole floats per rank
  for (size_t target = min_bytes; target <= max_bytes; target *= 4) {
    const size_t bytes = std::max(align, target / align * align);
    const int iters = int(std::clamp<size_t>((size_t(1) << 30) / bytes, 3, size_t(max_iters)));
    for (const Case& c : cases(world, bytes / 4))
      for (bool loom : {true, false}) rows.push_back(measure(world, c, loom, bytes, iters));
  }
  return rows;
}

}  // namespace loom
