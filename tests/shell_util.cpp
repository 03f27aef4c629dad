#include "shell_util.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <optional>

namespace loom::test {

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

int status_code(int status) {
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace

Result shell(const std::string& cmd, double limit_s) {
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) return Result{-1, "pipe failed"};
  const pid_t pid = fork();
  if (pid < 0) return Result{-1, "fork failed"};
  if (pid == 0) {
    setpgid(0, 0);
    dup2(out[1], STDOUT_FILENO);
    dup2(out[1], STDERR_FILENO);
    execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  setpgid(pid, pid);
  close(out[1]);
  Result r{-1, ""};
  const Clock::time_point t0 = Clock::now();
  std::optional<Clock::time_point> exited_at;
  bool eof = false;
  while (!eof && !(exited_at && since(*exited_at) > 5.0)) {
    if (since(t0) > limit_s) {
      kill(-pid, SIGKILL);
      if (!exited_at) waitpid(pid, nullptr, 0);
      close(out[0]);
      r.code = 124;
      r.output += "\n[test harness: killed the command's process group after " +
                  std::to_string(int(limit_s)) + " s]\n";
      return r;
    }
    pollfd p{out[0], POLLIN, 0};
    if (poll(&p, 1, 100) > 0) {
      char buf[4096];
      const ssize_t n = read(out[0], buf, sizeof buf);
      if (n > 0) r.output.append(buf, size_t(n));
      if (n == 0) eof = true;
    }
    int status = 0;
    if (!exited_at && waitpid(pid, &status, WNOHANG) == pid) {
      exited_at = Clock::now();
      r.code = status_code(status);
    }
  }
  close(out[0]);
  if (!exited_at) {
    int status = 0;
    waitpid(pid, &status, 0);
    r.code = status_code(status);
  }
  return r;
}

}  // namespace loom::test
