#include "launch/child.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "core/check.h"

extern char** environ;

namespace loom {

Fd& Fd::operator=(Fd&& o) noexcept {
  if (this != &o) {
    reset();
    fd_ = std::exchange(o.fd_, -1);
  }
  return *this;
}

void Fd::reset() {
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
}

namespace {

std::vector<char*> c_strings(std::vector<std::string>& v) {
  std::vector<char*> out;
  for (std::string& s : v) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

// In the forked child, before exec: only async-signal-safe calls.
[[noreturn]] void exec_child(char** argv, char** envp, int write_end, int stream,
                             pid_t parent, int report_fd) {
  setpgid(0, 0);
  sigset_t none;
  sigemptyset(&none);
  for (int s : {SIGINT, SIGTERM, SIGHUP, SIGPIPE}) signal(s, SIG_DFL);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (getppid() != parent) _exit(127);  // the supervisor died before prctl took effect
  dup2(write_end, stream);
  execvpe(argv[0], argv, envp);
  const int err = errno;
  (void)!write(report_fd, &err, sizeof err);
  _exit(127);
}

}  // namespace

Child spawn_child(const std::vector<std::string>& argv_in, const std::vector<std::string>& env_in,
                  int stream) {
  std::vector<std::string> argv = argv_in, env = env_in;
  std::vector<char*> cargv = c_strings(argv), cenv = c_strings(env);
  int out[2], report[2];
  LOOM_CHECK(pipe2(out, O_CLOEXEC) == 0 && pipe2(report, O_CLOEXEC) == 0, "pipe: {}",
             std::strerror(errno));
  Child child{.pid = -1, .out = Fd(out[0])};
  Fd write_end(out[1]), report_read(report[0]), report_write(report[1]);
  const pid_t parent = getpid();
  child.pid = fork();
  LOOM_CHECK(child.pid >= 0, "fork: {}", std::strerror(errno));
  if (child.pid == 0)
    exec_child(cargv.data(), cenv.data(), write_end.get(), stream, parent, report_write.get());
  setpgid(child.pid, child.pid);  // also here, so the group exists before anyone signals it
  report_write.reset();
  int err = 0;
  // exec closes the report pipe (O_CLOEXEC): 0 bytes means it started.
  if (read(report_read.get(), &err, sizeof err) == ssize_t(sizeof err)) {
    waitpid(child.pid, nullptr, 0);
    throw InputError(fmt::format("cannot start '{}': {}", argv[0], std::strerror(err)));
  }
  fcntl(child.out.get(), F_SETFL, O_NONBLOCK);
  return child;
}

std::optional<int> exited(pid_t pid) {
  siginfo_t info{};
  if (waitid(P_PID, id_t(pid), &info, WEXITED | WNOHANG | WNOWAIT) != 0 || info.si_pid == 0)
    return std::nullopt;
  return info.si_code == CLD_EXITED ? info.si_status : 128 + info.si_status;
}

void kill_group(pid_t pgid) {
  kill(-pgid, SIGKILL);
  waitpid(pgid, nullptr, 0);
}

CommandResult run_command(const std::string& command, double timeout_s) {
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) env.emplace_back(*e);
  Child child = spawn_child({"/bin/sh", "-c", command}, env, STDOUT_FILENO);
  CommandResult r;
  using Clock = std::chrono::steady_clock;
  const Clock::time_point deadline =
      Clock::now() + std::chrono::duration_cast<Clock::duration>(
                         std::chrono::duration<double>(timeout_s));
  bool eof = false;
  while (!exited(child.pid) || !eof) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      r.timed_out = true;
      kill_group(child.pid);
      return r;
    }
    pollfd p{eof ? -1 : child.out.get(), POLLIN, 0};
    if (poll(&p, 1, int(std::min<int64_t>(left.count(), 50))) > 0) {
      char buf[512];
      const ssize_t n = read(child.out.get(), buf, sizeof buf);
      if (n > 0 && r.output.size() < 4096) r.output.append(buf, size_t(n));
      if (n == 0) eof = true;
    }
  }
  r.status = *exited(child.pid);
  kill_group(child.pid);  // reaps it (and anything it left in its group)
  return r;
}

void launch_say(const std::string& msg) {
  fmt::print(stderr, "{}loom launch: {}\n", isatty(STDERR_FILENO) ? "\r\x1b[K" : "", msg);
  std::fflush(stderr);
}

}  // namespace loom
