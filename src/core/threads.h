// How many compute threads a rank runs with. `[run] threads = 0` (and --threads 0) means the
// cores of this host divided among the ranks on this host, so `mpirun -np 4` on 2 cores
// starts 4 x 1 threads, not 4 x 2.
#pragma once

#include <string>

namespace loom {

struct HostShare {
  int cores = 1;        // CPUs this process may run on (its affinity mask)
  int host_cores = 1;   // CPUs online on this host
  int local_ranks = 1;  // ranks of this job on this host (launcher's variables, else 1)
  int omp_env = 0;      // OMP_NUM_THREADS when set (its first level), else 0
};

// Reads the affinity mask, the online CPUs and the launcher's local size: OpenMPI's
// OMPI_COMM_WORLD_LOCAL_SIZE, MPICH/Hydra's MPI_LOCALNRANKS, Slurm's SLURM_STEP_TASKS_PER_NODE
// (e.g. "4(x2),3") at SLURM_NODEID; one rank when none is set.
HostShare host_share();

// Parses Slurm's tasks-per-node list ("2(x3),1") and returns the count of node `node`
// (0 when malformed or out of range).
int slurm_tasks_on_node(const std::string& list, int node);

struct ThreadChoice {
  int threads = 1;
  std::string why;  // e.g. "2 cores / 4 ranks on this host"
};

// `requested` > 0 is kept as it is, and so is OMP_NUM_THREADS when set. Otherwise: when a
// launcher bound this process to fewer CPUs than the host has (mpirun --bind-to core, srun
// --cpu-bind), the binding already is the rank's share and all of it is used; else the
// host's cores divided by its ranks; never fewer than 1.
ThreadChoice choose_threads(int requested, const HostShare& host);

}  // namespace loom
