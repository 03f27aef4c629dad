// Threads per rank: `[run] threads = 0` divides this host's cores among its ranks.
#include "core/threads.h"

#include <gtest/gtest.h>

namespace loom {
namespace {

TEST(Threads, ZeroDividesTheHostsCoresAmongItsRanks) {
  const ThreadChoice c =
      choose_threads(0, HostShare{.cores = 2, .host_cores = 2, .local_ranks = 4});
  EXPECT_EQ(c.threads, 1);  // never fewer than one
  EXPECT_EQ(c.why, "2 cores / 4 ranks on this host");
  EXPECT_EQ(choose_threads(0, HostShare{.cores = 64, .host_cores = 64, .local_ranks = 8}).threads,
            8);
  EXPECT_EQ(choose_threads(0, HostShare{.cores = 6, .host_cores = 6, .local_ranks = 4}).threads,
            1);
  const ThreadChoice alone = choose_threads(0, HostShare{.cores = 16, .host_cores = 16});
  EXPECT_EQ(alone.threads, 16);
  EXPECT_EQ(alone.why, "16 cores / 1 rank on this host");
}

TEST(Threads, ABindingIsTheRanksShareAndAnExplicitNumberIsKept) {
  // mpirun --bind-to core: the mask already is this rank's share.
  const ThreadChoice bound =
      choose_threads(0, HostShare{.cores = 4, .host_cores = 32, .local_ranks = 8});
  EXPECT_EQ(bound.threads, 4);
  EXPECT_EQ(bound.why, "the 4 cores this rank is bound to");
  const HostShare host{.cores = 2, .host_cores = 2, .local_ranks = 4};
  EXPECT_EQ(choose_threads(3, host).threads, 3);
  EXPECT_EQ(choose_threads(3, host).why, "set explicitly");
  HostShare with_env = host;
  with_env.omp_env = 2;
  EXPECT_EQ(choose_threads(0, with_env).threads, 2);
  EXPECT_EQ(choose_threads(0, with_env).why, "OMP_NUM_THREADS");
  EXPECT_EQ(choose_threads(5, with_env).threads, 5);
}

TEST(Threads, SlurmTasksPerNodeList) {
  EXPECT_EQ(slurm_tasks_on_node("4", 0), 4);
  EXPECT_EQ(slurm_tasks_on_node("2(x3),1", 0), 2);
  EXPECT_EQ(slurm_tasks_on_node("2(x3),1", 2), 2);
  EXPECT_EQ(slurm_tasks_on_node("2(x3),1", 3), 1);
  EXPECT_EQ(slurm_tasks_on_node("2(x3),1", 4), 0);  // no such node
  EXPECT_EQ(slurm_tasks_on_node("8,4(x2)", 2), 4);
  for (const char* bad : {"", "x", "2(x", "2(x0)", "2;3", "-1"})
    EXPECT_EQ(slurm_tasks_on_node(bad, 0), 0) << bad;
}

}  // namespace
}  // namespace loom
