// loom launch -n N [--max-restarts R] [--heartbeat-s S] [--available-cmd CMD [--min-n M]]
//             [--hosts h1:s1,h2:s2]
//             [--mpirun PATH] -- train --config FILE.toml --dp D --tp T --pp P ...
// Runs the train command under mpirun and, when a rank dies or hangs, restarts the job from
// its newest checkpoint (launch/supervisor.h).
#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "cli/command.h"
#include "core/check.h"
#include "launch/supervisor.h"

namespace loom::cli {
namespace {

// OpenMPI's flags for oversubscribed hosts (ranks may outnumber cores), plus root if needed.
std::vector<std::string> default_mpirun_args(const std::string& hosts) {
  std::vector<std::string> args = {"--oversubscribe", "--mca", "mpi_yield_when_idle", "1",
                                   "--bind-to", "none"};
  if (geteuid() == 0) args.push_back("--allow-run-as-root");
  if (!hosts.empty()) {
    // Ranks on other hosts need the supervisor's address, secret and attempt too (the
    // supervisor adds each attempt's --host list).
    for (const char* v : {"LOOM_SUPERVISOR", "LOOM_SUPERVISOR_SECRET", "LOOM_HEARTBEAT_S",
                          "LOOM_ATTEMPT"})
      args.insert(args.end(), {"-x", v});
  }
  return args;
}

}  // namespace

RunFn setup_launch(CLI::App& sub) {
  auto o = std::make_shared<LaunchOptions>();
  o->launcher = "auto";
  sub.add_option("-n", o->n, "processes (mpirun -np)")->required();
  sub.add_option("--max-restarts", o->max_restarts, "restarts after a failure (default 3)");
  sub.add_option("--heartbeat-s", o->heartbeat_s,
                 "seconds a rank may stay silent before it counts as failed (default 10)")
      ->check(in_range(0.1, 1e6));
  sub.add_option("--progress-timeout", o->progress_timeout_s,
                 "seconds a rank's step may stay unchanged, outside evaluations and checkpoint "
                 "saves, before it counts as failed (default 0: 5 x the median step time once 3 "
                 "steps were timed, at least --heartbeat-s)")
      ->check(in_range(0, 1e7));
  sub.add_option("--available-timeout-s", o->available_timeout_s,
                 "seconds --available-cmd may take to answer (default 30)")
      ->check(in_range(0.1, 1e5));
  sub.add_option("--min-n", o->min_n,
                 "elastic: restart on fewer processes (as --available-cmd reports), down to this");
  sub.add_option("--available-cmd", o->available_cmd,
                 "a shell command printing how many processes can run now, or on which hosts "
                 "(h1:2,h2:2), asked before each restart: elastic with --min-n, else the restart "
                 "waits until all -n are available");
  sub.add_option("--available-poll-s", o->available_poll_s,
                 "while waiting for all -n processes, ask --available-cmd this often (default 2)")
      ->check(in_range(0.01, 1e5));
  sub.add_option("--available-wait-s", o->available_wait_s,
                 "wait at most this long for all -n processes before giving up (default 600)")
      ->check(in_range(0, 1e7));
  sub.add_option("--hosts", o->hosts, "mpirun --host list, e.g. h1:4,h2:4 (the supervisor "
                 "then listens on the job's network, by this host's name)");
  sub.add_option("--supervisor-address", o->supervisor_address,
                 "with --hosts: the name or address ranks reach the supervisor at (default: "
                 "this host's name)");
  sub.add_option("--mpirun", o->mpirun,
                 "the launcher binary to run (default: mpirun, or srun with --launcher srun)");
  sub.add_option("--launcher", o->launcher,
                 "mpirun | srun | auto (default auto: srun inside a Slurm allocation, i.e. when "
                 "SLURM_JOB_ID is set, else mpirun)")
      ->check(CLI::IsMember({"mpirun", "srun", "auto"}));
  sub.add_option("train", o->train_args, "after '--': train --config FILE.toml ...")
      ->required();
  return [o] {
    std::error_code ec;
    o->loom_binary = std::filesystem::read_symlink("/proc/self/exe", ec).string();
    LOOM_CHECK(!ec, "cannot resolve /proc/self/exe: {}", ec.message());
    o->mpirun_args = default_mpirun_args(o->hosts);
    if (o->launcher == "auto") o->launcher = std::getenv("SLURM_JOB_ID") ? "srun" : "mpirun";
    if (o->launcher == "srun" && o->mpirun == "mpirun") o->mpirun = "srun";
    LOOM_REQUIRE(o->launcher != "srun" || o->hosts.empty(),
                 "launch: --hosts is for mpirun; under srun the allocation names the hosts");
    return run_supervisor(*o);
  };
}

}  // namespace loom::cli
