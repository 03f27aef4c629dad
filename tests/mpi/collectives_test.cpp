// Collectives over MpiComm: each rank contributes values derived from its rank, checked
// against closed-form sums; sizes that are not multiples of the group size; async handles
// completed out of order; sub-communicators of the process grid.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "comm/process_grid.h"
#include "core/check.h"
#include "mpi_test_main.h"

namespace loom {
namespace {

TEST(Collectives, AllreduceSumsRankValues) {
  auto world = test::mpi().world();
  const int n = world->size(), r = world->rank();
  for (size_t count : {size_t(1), size_t(7), size_t(1000), size_t(1) << 18}) {
    std::vector<float> x(count);
    for (size_t i = 0; i < count; ++i) x[i] = float(r + 1) + float(i % 13);
    world->allreduce(x.data(), count, ReduceOp::kSum);
    for (size_t i = 0; i < count; ++i)
      ASSERT_EQ(x[i], float(n * (n + 1) / 2) + float(n) * float(i % 13)) << "i=" << i;
  }
  double d[2] = {double(r), double(r) * 0.5};
  world->allreduce(d, 2, ReduceOp::kMax);
  EXPECT_EQ(d[0], double(n - 1));
  EXPECT_EQ(d[1], double(n - 1) * 0.5);
}

TEST(Collectives, AllgatherAndReduceScatterOddSizes) {
  auto world = test::mpi().world();
  const int n = world->size(), r = world->rank();
  const size_t count = 5;  // per rank; total 5n is not a power of two
  std::vector<float> mine(count), all(count * n);
  for (size_t i = 0; i < count; ++i) mine[i] = float(r * 100 + int(i));
  world->allgather(mine.data(), all.data(), count);
  for (int q = 0; q < n; ++q)
    for (size_t i = 0; i < count; ++i) ASSERT_EQ(all[q * count + i], float(q * 100 + int(i)));
  // In place: this rank's chunk already sits in the output buffer.
  std::vector<float> inplace(count * n, -1.0f);
  for (size_t i = 0; i < count; ++i) inplace[r * count + i] = mine[i];
  world->allgather(inplace.data() + r * count, inplace.data(), count);
  EXPECT_EQ(inplace, all);

  std::vector<float> send(count * n), recv(count);
  for (size_t j = 0; j < count * n; ++j) send[j] = float(r + 1) * float(j);
  world->reduce_scatter(send.data(), recv.data(), count);
  for (size_t i = 0; i < count; ++i)
    ASSERT_EQ(recv[i], float(n * (n + 1) / 2) * float(r * count + i));
}

TEST(Collectives, BytesAllToAllAndAllGather) {
  auto world = test::mpi().world();
  const int n = world->size(), r = world->rank();
  const size_t count = 3;
  std::vector<std::byte> send(count * n), recv(count * n);
  for (int q = 0; q < n; ++q)  // the bytes for rank q say who sent them and to whom
    for (size_t i = 0; i < count; ++i) send[q * count + i] = std::byte(16 * r + q + int(i));
  world->alltoall_bytes_async(send.data(), recv.data(), count)->wait();
  for (int q = 0; q < n; ++q)
    for (size_t i = 0; i < count; ++i)
      ASSERT_EQ(recv[q * count + i], std::byte(16 * q + r + int(i))) << q << " " << i;
  std::vector<std::byte> mine(count, std::byte(r + 1)), all(count * n);
  world->allgather_bytes_async(mine.data(), all.data(), count)->wait();
  for (int q = 0; q < n; ++q)
    for (size_t i = 0; i < count; ++i) ASSERT_EQ(all[q * count + i], std::byte(q + 1));
  // Each kind counted with what the rank sends: (g - 1) / g of its whole buffer.
  const Traffic t = world->traffic();
  EXPECT_EQ(t.at("ALLTOALL(bytes)").bytes, count * size_t(n - 1)) << n;
  EXPECT_GE(t.at("ALLGATHER(bytes)").ops, 1u);
}

TEST(Collectives, AsyncHandlesCompleteOutOfOrder) {
  auto world = test::mpi().world();
  const int n = world->size(), r = world->rank();
  std::vector<std::vector<float>> bufs(6, std::vector<float>(333));
  std::vector<std::unique_ptr<CommHandle>> handles;
  for (size_t b = 0; b < bufs.size(); ++b) {
    for (float& v : bufs[b]) v = float(r) + float(b);
    handles.push_back(world->allreduce_async(bufs[b].data(), bufs[b].size(), ReduceOp::kSum));
  }
  for (int b = int(bufs.size()) - 1; b >= 0; --b) {
    handles[b]->wait();
    for (float v : bufs[b]) ASSERT_EQ(v, float(n * (n - 1) / 2) + float(n * b));
  }
}

TEST(Collectives, BroadcastSendRecvBarrier) {
  auto world = test::mpi().world();
  const int n = world->size(), r = world->rank();
  std::vector<float> x(10, float(r));
  world->broadcast(x.data(), x.size(), n - 1);
  for (float v : x) ASSERT_EQ(v, float(n - 1));
  if (n >= 2 && r < 2) {
    std::vector<float> msg(4, 42.0f + r);
    if (r == 0) world->send(msg.data(), msg.size(), 1);
    if (r == 1) {
      world->recv(msg.data(), msg.size(), 0);
      for (float v : msg) ASSERT_EQ(v, 42.0f);
    }
  }
  world->barrier();
  // Asynchronous forms: start several, complete them in reverse order.
  std::vector<float> b1(8, float(r)), b2(8, float(r) * 2);
  auto h1 = world->broadcast_async(b1.data(), b1.size(), 0);
  auto h2 = world->broadcast_async(b2.data(), b2.size(), n - 1);
  auto h3 = world->barrier_async();
  h3->wait();
  h2->wait();
  h1->wait();
  for (float v : b1) ASSERT_EQ(v, 0.0f);
  for (float v : b2) ASSERT_EQ(v, float(n - 1) * 2);
  // 16-bit words (low-precision weight gathers): every bit pattern arrives unchanged.
  std::vector<uint16_t> words(70000);
  for (size_t i = 0; i < words.size(); ++i) words[i] = uint16_t(r == 1 ? i : 0);
  world->broadcast_u16_async(words.data(), words.size(), n > 1 ? 1 : 0)->wait();
  for (size_t i = 0; i < words.size(); ++i) ASSERT_EQ(words[i], uint16_t(n > 1 ? i : 0));
  if (n >= 2 && r < 2) {
    std::vector<float> msg(3, 7.0f);
    auto h = r == 0 ? world->send_async(msg.data(), msg.size(), 1)
                    : world->recv_async(msg.data(), msg.size(), 0);
    EXPECT_TRUE(h != nullptr);
    h->wait();
    EXPECT_TRUE(h->ready());
    for (float v : msg) ASSERT_EQ(v, 7.0f);
  }
}

TEST(Collectives, GridSubCommunicatorsFollowTheLayout) {
  const int n = test::mpi().world_size();
  if (n % 2 != 0) GTEST_FAIL() << "run with an even number of ranks";
  const GridShape shape{.pp = 1, .dp = n / 2, .tp = 2};
  ProcessGrid grid = ProcessGrid::create(test::mpi().world(), shape);
  EXPECT_EQ(grid.tp_comm().size(), 2);
  EXPECT_EQ(grid.dp_comm().size(), n / 2);
  EXPECT_EQ(grid.tp_comm().rank(), grid.coord().tp);
  EXPECT_EQ(grid.dp_comm().rank(), grid.coord().dp);
  // Sum of world ranks within my dp group: ranks tp + 2*d for d in [0, n/2).
  float x = float(grid.rank());
  grid.dp_comm().allreduce(&x, 1, ReduceOp::kSum);
  const int D = n / 2, t = grid.coord().tp;
  EXPECT_EQ(x, float(t * D + 2 * (D * (D - 1) / 2)));
  EXPECT_THROW(ProcessGrid::create(test::mpi().world(), GridShape{.pp = 1, .dp = n, .tp = 2}),
               InputError);
}

}  // namespace
}  // namespace loom
