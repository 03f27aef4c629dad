// `loom launch`: runs a training job under mpirun and restarts it from its newest checkpoint
// when it fails, so a rank that dies or hangs costs only the steps since that checkpoint.
//
// Per job: a TCP listener on 127.0.0.1 (ephemeral port) and a secret (16 random bytes, hex).
// Per attempt: `mpirun -np N <mpirun_args> <loom> <train_args>` in its own process group,
// with LOOM_SUPERVISOR, LOOM_SUPERVISOR_SECRET, LOOM_HEARTBEAT_S and LOOM_ATTEMPT (0 for the
// first attempt, then the restart count) in its environment; restarts add `--resume auto`.
// Ranks report their step over the socket (launch/heartbeat.h). An attempt fails when
// mpirun exits non-zero or by a signal, or when a rank that said hello is silent for
// heartbeat_s, or whose step stops moving for the progress timeout; the supervisor then names
// the cause (the silent rank, mpirun's status, and the failure records ranks send over the
// same socket: kind, rank, host, step, collective, group; mpirun's stderr is passed through
// but not read for decisions), ends the process group (SIGTERM, SIGKILL 5 s later) and
// starts the next attempt.
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "core/failure.h"

namespace loom {

struct LaunchOptions {
  int n = 0;                            // processes per attempt (mpirun -np)
  int max_restarts = 3;                 // attempts after the first
  double heartbeat_s = 10;              // a rank silent this long has failed (seconds)
  // A rank whose step has not moved for this long (outside evaluations and checkpoint saves)
  // has failed, though its heartbeats go on; 0 = 5 x the median step time once 3 steps were
  // timed, and at least heartbeat_s.
  double progress_timeout_s = 0;
  double available_timeout_s = 30;      // --available-cmd gets this long to answer
  int min_n = 0;                        // elastic lower bound (0 = not elastic)
  // A shell command printing how many processes can run now, or on which hosts ("h1:2,h2:2":
  // a scheduler's or a host check's answer), asked before each restart. With min_n > 0
  // (elastic) a restart runs on min(n, that) if >= min_n, on those hosts, with `--elastic`
  // added so train reshapes data parallelism for the new world size; without, the restart
  // waits until all n are available, asking every available_poll_s for up to
  // available_wait_s (launch/availability.h).
  std::string available_cmd;
  double available_poll_s = 2, available_wait_s = 600;
  std::string hosts;                    // "h1:s1,h2:s2": mpirun --host (empty: its default)
  // With hosts: the name or address ranks reach the supervisor at (its port is chosen);
  // empty = this host's name.
  std::string supervisor_address;
  std::vector<std::string> train_args;  // "train", "--config", FILE, ...
  std::string loom_binary;              // the loom executable each rank runs
  std::string mpirun = "mpirun";        // the launcher binary, looked up in PATH
  std::vector<std::string> mpirun_args; // between `-np N` and the binary (mpirun only)
  // "mpirun", or "srun" inside a Slurm allocation: `srun -n N --kill-on-bad-exit=1
  // --export=ALL <loom> <train args>` (ranks find each other through Slurm's PMI).
  std::string launcher = "mpirun";
};

// Runs attempts until one succeeds (returns 0) or max_restarts restarts have failed (returns
// 1 after a summary). Returns 2 or 4 where decide_after_failure() stops the job (bad input
// before the first step; a non-finite loss or gradient), 128+signal if the supervisor itself is interrupted (SIGINT/SIGTERM/SIGHUP end the job
// first).
int run_supervisor(const LaunchOptions& opt);

// The train arguments of attempt `attempt` (0 = first): restarts continue from the newest
// checkpoint, `--resume auto` replacing any --resume of the user's.
std::vector<std::string> attempt_train_args(const std::vector<std::string>& train_args,
                                            int attempt);

// 16 bytes of /dev/urandom as 32 lowercase hex digits.
std::string make_job_secret();

// Whether mpirun's stderr line is its own notice of a failed process ("mpirun noticed that
// process rank 1 ... exited on signal 9", "MPI_ABORT was invoked on rank 1 ..."): kept for
// the failure's description, never for a decision.
bool is_mpirun_notice(std::string_view line);

// The summary of the record nearest the cause, then the ranks and kinds of the others. The
// nearest: one naming ranks that did not answer (a cut link, a host gone: what made the
// others wait), else one naming ranks on other hosts it could not read, else one that is
// not a deadline (an error, a non-finite loss), else the first. `host_of` names the hosts
// of those ranks, where known.
std::string describe_records(const std::vector<FailureRecord>& records,
                             const std::map<int, std::string>& host_of = {});

struct FailureDecision {
  int stop_with = 0;  // 0: restart; else the supervisor's exit status (2 or 4)
  std::string why;    // why it stops
};
// What the supervisor does after a failed attempt, from the ranks' records: a non-finite
// loss or gradient stops the job (exit 4: a resume repeats it), as does bad input on the
// first attempt before any step (exit 2: it would fail the same way); anything else is
// restarted. Without records, mpirun's exit status (the record's exit code) decides.
FailureDecision decide_after_failure(const std::vector<FailureRecord>& records, int status,
                                     bool first_attempt, bool started);

}  // namespace loom
