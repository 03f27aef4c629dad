#include "launch/availability.h"

#include <fmt/format.h>
#include <poll.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>

#include "launch/child.h"

namespace loom {
namespace {

std::optional<int> whole_number(std::string_view s) {
  int v = -1;
  const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || ptr != s.data() + s.size() || v < 0) return std::nullopt;
  return v;
}

}  // namespace

std::optional<Placement> parse_available(const std::string& text) {
  const size_t begin = text.find_first_not_of(" \t\r\n");
  if (begin == std::string::npos) return std::nullopt;
  const std::string_view s(text.data() + begin, text.find_last_not_of(" \t\r\n") + 1 - begin);
  if (s.find(':') == std::string_view::npos) {
    const std::optional<int> n = whole_number(s);
    return n ? std::optional(Placement{*n, ""}) : std::nullopt;
  }
  Placement p{0, std::string(s)};
  for (size_t at = 0; at <= s.size();) {
    const size_t comma = std::min(s.find(',', at), s.size());
    const std::string_view entry = s.substr(at, comma - at);
    const size_t colon = entry.rfind(':');
    const std::optional<int> slots =
        colon == std::string_view::npos ? std::nullopt : whole_number(entry.substr(colon + 1));
    if (colon == 0 || !slots || *slots < 1 ||
        entry.find_first_of(" \t") != std::string_view::npos)
      return std::nullopt;
    p.n += *slots;
    at = comma + 1;
  }
  return p;
}

RestartPlanner::RestartPlanner(const LaunchOptions& opt, int signal_fd)
    : opt_(opt), signal_fd_(signal_fd), last_known_{opt.n, opt.hosts} {}

std::optional<Placement> RestartPlanner::next() {
  if (opt_.available_cmd.empty()) return Placement{opt_.n, opt_.hosts};
  return opt_.min_n > 0 ? elastic() : wait_for_all();
}

// A command that fails, times out or prints neither a count nor a host list is reported,
// and the last answer it gave (-n on --hosts before any) is used.
Placement RestartPlanner::ask() {
  const CommandResult r = run_command(opt_.available_cmd, opt_.available_timeout_s);
  std::optional<Placement> p = r.status == 0 ? parse_available(r.output) : std::nullopt;
  if (!p) {
    std::string out = r.output.substr(0, 80);
    std::erase(out, '\n');
    const std::string what =
        r.timed_out ? fmt::format("gave no answer within {:g} s (--available-timeout-s); it "
                                  "was killed", opt_.available_timeout_s)
        : r.status != 0 ? fmt::format("exited with status {}", r.status)
                        : fmt::format("printed '{}', which is not a process count", out);
    launch_say(fmt::format("--available-cmd '{}' {}: using the last known count, {}",
                           opt_.available_cmd, what, last_known_.n));
    return last_known_;
  }
  last_known_ = *p;
  return *p;
}

std::optional<Placement> RestartPlanner::elastic() {
  const Placement a = ask();
  const int n = std::min(opt_.n, a.n);
  if (n < opt_.min_n) {
    launch_say(fmt::format("only {} process(es) available, below --min-n {}: giving up", a.n,
                           opt_.min_n));
    return std::nullopt;
  }
  const std::string hosts = a.hosts.empty() ? opt_.hosts : a.hosts;
  if (n < opt_.n)
    launch_say(fmt::format("elastic: {} of {} processes available{}; restarting on {} (train "
                           "reshapes data parallelism and keeps the global batch)", a.n, opt_.n,
                           a.hosts.empty() ? "" : " on " + a.hosts, n));
  return Placement{n, hosts};
}

std::optional<Placement> RestartPlanner::wait_for_all() {
  using Clock = std::chrono::steady_clock;
  const Clock::time_point start = Clock::now();
  for (bool said = false;; said = true) {
    const Placement a = ask();
    const double waited = std::chrono::duration<double>(Clock::now() - start).count();
    if (a.n >= opt_.n) {
      if (said)
        launch_say(fmt::format("all {} processes are available again after {:.1f} s", opt_.n,
                               waited));
      return Placement{opt_.n, opt_.hosts};
    }
    if (waited >= opt_.available_wait_s) {
      launch_say(fmt::format("gave up waiting: after {:.0f} s (--available-wait-s) only {} of {} "
                             "processes are available", waited, a.n, opt_.n));
      return std::nullopt;
    }
    if (!said)
      launch_say(fmt::format("waiting for all {} processes before restarting: --available-cmd "
                             "reports {}{}; asking every {:g} s, for up to {:g} s", opt_.n, a.n,
                             a.hosts.empty() ? "" : " (" + a.hosts + ")", opt_.available_poll_s,
                             opt_.available_wait_s));
    pollfd p{signal_fd_, POLLIN, 0};
    if (poll(&p, 1, int(opt_.available_poll_s * 1000)) > 0) {
      signalfd_siginfo si{};
      if (read(signal_fd_, &si, sizeof si) == ssize_t(sizeof si)) {
        interrupted_by_ = int(si.ssi_signo);
        launch_say(fmt::format("interrupted by signal {} while waiting", si.ssi_signo));
        return std::nullopt;
      }
    }
  }
}

}  // namespace loom
