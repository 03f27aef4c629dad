// Child processes of `loom launch`: each in a process group of its own, ended with the
// supervisor even when the supervisor is killed without a chance to clean up.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace loom {

// An owned file descriptor.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() { reset(); }
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept;
  int get() const { return fd_; }
  void reset();

 private:
  int fd_;
};

struct Child {
  pid_t pid = -1;  // also its process group id
  Fd out;          // read end of the stream it writes (see spawn_child), non-blocking
};

// Starts argv[0] (looked up in PATH) with `env` in a new process group, with `stream`
// (STDOUT_FILENO or STDERR_FILENO) into a pipe, signals unblocked and at their defaults,
// and PR_SET_PDEATHSIG set to SIGTERM: if the supervisor dies (kill -9), mpirun is told to
// end, and ends its ranks. Throws InputError when the program cannot be started.
Child spawn_child(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                  int stream);

// The child's exit status (128 + signal when killed) once it has exited, without reaping it:
// the process group id stays reserved until the stragglers are killed.
std::optional<int> exited(pid_t pid);

// Kills the whole group and reaps its leader.
void kill_group(pid_t pgid);

// "loom launch: MSG" on stderr, on a clean line (rank 0's progress line may be unfinished).
void launch_say(const std::string& msg);

struct CommandResult {
  bool timed_out = false;
  int status = -1;     // exit status (128 + signal), when it exited
  std::string output;  // stdout, at most 4 KiB
};

// Runs `sh -c command` and waits at most timeout_s for it to exit; on timeout its process
// group is killed. Its stderr passes through.
CommandResult run_command(const std::string& command, double timeout_s);

}  // namespace loom
