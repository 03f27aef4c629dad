// Where each restart of `loom launch` runs: -n processes on --hosts, or what --available-cmd
// (a scheduler's answer, a host check) reports: a process count, or the hosts that can be
// used now as "h1:s1,h2:s2". Elastic (--min-n) restarts on what is available; otherwise
// the supervisor waits until all -n processes are available again (a link back up, a host
// rebooted), asking every --available-poll-s for up to --available-wait-s.
#pragma once

#include <optional>
#include <string>

#include "launch/supervisor.h"

namespace loom {

struct Placement {
  int n = 0;
  std::string hosts;  // mpirun's --host list; "" = mpirun's own choice
};

// "N" or "h1:s1,h2:s2" (slots >= 1; blanks around allowed), else nullopt.
std::optional<Placement> parse_available(const std::string& text);

class RestartPlanner {
 public:
  // `signal_fd` is watched while waiting: a signal to the supervisor ends the wait.
  RestartPlanner(const LaunchOptions& opt, int signal_fd);

  // The next attempt's placement; nullopt, after saying why, when the job cannot go on
  // (fewer than --min-n processes, the wait ran out, or a signal: then interrupted_by()).
  std::optional<Placement> next();
  int interrupted_by() const { return interrupted_by_; }

 private:
  Placement ask();  // runs --available-cmd once; the last known answer if it gave none
  std::optional<Placement> elastic();
  std::optional<Placement> wait_for_all();

  const LaunchOptions& opt_;
  int signal_fd_;
  int interrupted_by_ = 0;
  Placement last_known_;
};

}  // namespace loom
