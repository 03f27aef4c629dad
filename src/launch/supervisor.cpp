#include "launch/supervisor.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <utility>

#include "core/check.h"
#include "launch/availability.h"
#include "launch/child.h"
#include "launch/heartbeat.h"

extern char** environ;

namespace loom {
namespace {

using Clock = std::chrono::steady_clock;

double seconds(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

void say(const std::string& msg) { launch_say(msg); }

// A TCP listener at an ephemeral port (returned in `port`): on 127.0.0.1, or on every
// interface when ranks run on other hosts (the per-job secret keeps other processes out).
Fd listen_local(int* port, bool any_interface) {
  Fd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  LOOM_CHECK(fd.get() >= 0, "socket: {}", std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(any_interface ? INADDR_ANY : INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  LOOM_CHECK(bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), len) == 0 &&
                 listen(fd.get(), 256) == 0 &&
                 getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len) == 0,
             "cannot listen on 127.0.0.1: {}", std::strerror(errno));
  *port = ntohs(addr.sin_port);
  return fd;
}

// SIGINT, SIGTERM and SIGHUP arrive on this descriptor (they are blocked in this process;
// children get them unblocked and at their default action).
Fd interrupt_fd() {
  sigset_t set;
  sigemptyset(&set);
  for (int s : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&set, s);
  LOOM_CHECK(sigprocmask(SIG_BLOCK, &set, nullptr) == 0, "sigprocmask: {}", std::strerror(errno));
  Fd fd(signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));
  LOOM_CHECK(fd.get() >= 0, "signalfd: {}", std::strerror(errno));
  return fd;
}

// A peer's host by its address, or "" for this host's loopback. Numeric: a reverse lookup
// could stall the supervisor's loop on a name server that does not answer (the ranks' own
// records carry their host names).
std::string host_name(const sockaddr_in& peer) {
  if ((ntohl(peer.sin_addr.s_addr) >> 24) == 127) return "";
  char ip[INET_ADDRSTRLEN] = "?";
  inet_ntop(AF_INET, &peer.sin_addr, ip, sizeof ip);
  return ip;
}

std::vector<std::string> child_env(const std::string& address, const std::string& secret,
                                   double heartbeat_s, int attempt) {
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) {
    const std::string_view kv(*e);
    if (kv.starts_with("LOOM_SUPERVISOR=") || kv.starts_with("LOOM_SUPERVISOR_SECRET=") ||
        kv.starts_with("LOOM_ATTEMPT=") || kv.starts_with("LOOM_HEARTBEAT_S="))
      continue;
    env.emplace_back(kv);
  }
  env.push_back("LOOM_SUPERVISOR=" + address);
  env.push_back("LOOM_SUPERVISOR_SECRET=" + secret);
  env.push_back(fmt::format("LOOM_HEARTBEAT_S={}", heartbeat_s));
  env.push_back(fmt::format("LOOM_ATTEMPT={}", attempt));
  return env;
}

std::string join(const std::vector<std::string>& v, const char* sep = " ") {
  std::string out;
  for (const std::string& s : v) out += (out.empty() ? "" : sep) + s;
  return out;
}

struct RankState {
  int step = -1;  // the last step it reported (-1: none yet)
  std::string host;  // where its connection came from, by address ("" on this loopback)
  Clock::time_point last_heard;
  std::optional<Clock::time_point> progress_at;  // its last progress, while in a step
  bool done = false;    // said "done"
  bool closed = false;  // its connection closed without "done"
};

struct Conn {
  Fd fd;
  std::string buf;  // bytes after the last complete line
  std::string peer;
  std::string host;  // the peer's address ("" for loopback)
  int rank = -1;    // from its first valid line
};

// What one attempt ended with.
struct AttemptResult {
  bool ok = false;
  int interrupted_by = 0;  // a signal to the supervisor
  int status = 0;          // mpirun's exit status (128 + signal when killed; -1 if we ended it)
  std::string cause;
  Clock::time_point ended_at;
  int last_step = -1;     // the highest step any rank reported
  int started_step = -1;  // the first step a rank reported
  std::optional<Clock::time_point> progressed_at;  // first report of a step > started_step
  std::map<int, Clock::time_point> step_seen;      // first report of each step
  std::vector<FailureRecord> records;              // what failing ranks reported, in order
};

class Attempt {
 public:
  Attempt(const LaunchOptions& opt, int index, const Placement& where, int listen_fd,
          int signal_fd, const std::string& address, const std::string& secret)
      : opt_(opt), index_(index), n_(where.n), hosts_(where.hosts), listen_fd_(listen_fd),
        signal_fd_(signal_fd), address_(address), secret_(secret) {}
  // An attempt left by an exception still ends the process group it started.
  ~Attempt() {
    if (child_.pid > 0 && !ended_) kill_group(child_.pid);
  }
  Attempt(const Attempt&) = delete;
  Attempt& operator=(const Attempt&) = delete;

  AttemptResult run();

 private:
  std::vector<std::string> argv() const;
  void watch();
  bool poll_once(int timeout_ms);  // false when nothing was ready
  void accept_conns();
  void read_conn(Conn& c);
  void on_line(Conn& c, std::string_view line);
  void on_record(FailureRecord record);
  bool read_stderr(bool flush);  // true at end of file
  std::optional<std::string> silent_rank(Clock::time_point now) const;
  std::string name(int rank) const;  // "rank 3", or "rank 3 on 10.0.0.2" from another host
  std::map<int, std::string> rank_hosts() const;  // the ranks heard from another host
  std::optional<std::string> stalled_rank(Clock::time_point now) const;
  void note_step(int step, Clock::time_point now);
  void end_group();
  std::string exit_cause() const;

  const LaunchOptions& opt_;
  int index_, n_;
  std::string hosts_;  // mpirun --host for this attempt ("" = none)
  int listen_fd_, signal_fd_;
  const std::string &address_, &secret_;
  Child child_;
  std::vector<Conn> conns_;
  std::map<int, RankState> ranks_;
  std::string err_buf_;
  std::string mpirun_notice_;  // mpirun's own first "mpirun noticed ..." line
  AttemptResult result_;
  std::vector<int> closed_;  // ranks whose connection closed unfinished, in order
  bool all_said_hello_ = false;
  bool err_eof_ = false;
  bool ended_ = false;
  std::vector<double> step_seconds_;  // the last intervals between new steps (a ring)
  size_t step_ring_ = 0;
};

std::vector<std::string> Attempt::argv() const {
  std::vector<std::string> a;
  if (opt_.launcher == "srun") {
    a = {opt_.mpirun, "-n", std::to_string(n_), "--kill-on-bad-exit=1", "--export=ALL"};
  } else {
    a = {opt_.mpirun, "-np", std::to_string(n_)};
    if (!hosts_.empty()) a.insert(a.end(), {"--host", hosts_});
    a.insert(a.end(), opt_.mpirun_args.begin(), opt_.mpirun_args.end());
  }
  a.push_back(opt_.loom_binary);
  const std::vector<std::string> train = attempt_train_args(opt_.train_args, index_);
  a.insert(a.end(), train.begin(), train.end());
  if (n_ != opt_.n) a.push_back("--elastic");  // fewer processes: train reshapes dp
  return a;
}

AttemptResult Attempt::run() {
  const std::vector<std::string> args = argv();
  say(fmt::format("attempt {} of {} (LOOM_ATTEMPT={}): {}", index_ + 1, opt_.max_restarts + 1,
                  index_, join(args)));
  child_ = spawn_child(args, child_env(address_, secret_, opt_.heartbeat_s, index_), STDERR_FILENO);
  watch();
  end_group();
  if (!result_.ok && result_.cause.empty()) {
    result_.cause = exit_cause();
  } else if (!result_.ok && !result_.records.empty()) {  // a silent or stalled rank, and why
    result_.cause += "; " + describe_records(result_.records, rank_hosts());
  }
  return std::move(result_);
}

// Until mpirun exits, a rank falls silent or the supervisor is interrupted.
void Attempt::watch() {
  for (;;) {
    poll_once(100);
    const Clock::time_point now = Clock::now();
    if (const std::optional<int> status = exited(child_.pid)) {
      // The ranks' last lines may still be unread: take what is there (at most 1 s more).
      for (int i = 0; i < 50 && poll_once(20);) ++i;
      result_.status = *status;
      result_.ok = *status == 0;
      result_.ended_at = now;
      return;
    }
    std::optional<std::string> failed = silent_rank(now);
    if (!failed) failed = stalled_rank(now);
    if (failed) {
      result_.status = -1;
      result_.cause = *failed;
      result_.ended_at = now;
      return;
    }
    signalfd_siginfo si{};
    if (read(signal_fd_, &si, sizeof si) == ssize_t(sizeof si)) {
      result_.interrupted_by = int(si.ssi_signo);
      result_.status = -1;
      result_.cause = fmt::format("the supervisor got signal {} ({})", si.ssi_signo,
                                  strsignal(int(si.ssi_signo)));
      result_.ended_at = now;
      return;
    }
  }
}

bool Attempt::poll_once(int timeout_ms) {
  std::vector<pollfd> fds = {{listen_fd_, POLLIN, 0}, {signal_fd_, POLLIN, 0},
                             {err_eof_ ? -1 : child_.out.get(), POLLIN, 0}};
  for (const Conn& c : conns_) fds.push_back({c.fd.get(), POLLIN, 0});
  if (poll(fds.data(), fds.size(), timeout_ms) <= 0) return false;
  // Only the connections that were polled have an entry in fds: those accepted below are
  // read from the next round on (reading fds[3 + i] for them overflowed it).
  const size_t polled = conns_.size();
  if (fds[2].revents) err_eof_ = read_stderr(false);
  for (size_t i = 0; i < polled; ++i)
    if (fds[3 + i].revents) read_conn(conns_[i]);
  if (fds[0].revents) accept_conns();
  std::erase_if(conns_, [](const Conn& c) { return c.fd.get() < 0; });
  return true;
}

void Attempt::accept_conns() {
  for (;;) {
    sockaddr_in peer{};
    socklen_t len = sizeof peer;
    const int fd = accept4(listen_fd_, reinterpret_cast<sockaddr*>(&peer), &len,
                           SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) return;
    char ip[INET_ADDRSTRLEN] = "?";
    inet_ntop(AF_INET, &peer.sin_addr, ip, sizeof ip);
    conns_.push_back(Conn{Fd(fd), "", fmt::format("{}:{}", ip, ntohs(peer.sin_port)),
                          host_name(peer)});
  }
}

void Attempt::read_conn(Conn& c) {
  char buf[4096];
  const ssize_t n = read(c.fd.get(), buf, sizeof buf);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  if (n <= 0) {  // closed: a rank that did not say "done" stops beating and will be missed
    if (c.rank >= 0 && !ranks_[c.rank].done) {
      ranks_[c.rank].closed = true;
      closed_.push_back(c.rank);
    }
    c.fd.reset();
    return;
  }
  c.buf.append(buf, size_t(n));
  for (size_t nl; c.fd.get() >= 0 && (nl = c.buf.find('\n')) != std::string::npos;) {
    const std::string line = c.buf.substr(0, nl);
    c.buf.erase(0, nl + 1);
    on_line(c, line);
  }
  if (c.buf.size() > kMaxHeartbeatLine) {
    say(fmt::format("closed the connection from {}: a line longer than {} bytes", c.peer,
                    kMaxHeartbeatLine));
    c.fd.reset();
  }
}

void Attempt::on_line(Conn& c, std::string_view line) {
  const std::optional<HeartbeatLine> hb = parse_heartbeat_line(line, secret_);
  if (!hb || hb->rank >= n_) {
    say(fmt::format("rejected the connection from {}: {}", c.peer,
                    hb ? fmt::format("rank {} is not below -n {}", hb->rank, n_)
                       : std::string("a wrong secret or a malformed line")));
    c.fd.reset();
    return;
  }
  if (hb->failure) {  // on a connection of its own, which then closes: not a heartbeat
    on_record(std::move(*hb->failure));
    return;
  }
  const Clock::time_point now = Clock::now();
  RankState& r = ranks_[hb->rank];
  r.host = c.host;
  r.last_heard = now;
  r.closed = false;
  r.progress_at.reset();
  if (hb->idle_ms >= 0) r.progress_at = now - std::chrono::milliseconds(hb->idle_ms);
  if (hb->done) {
    r.done = true;
  } else if (hb->step >= 0) {
    r.step = hb->step;
    note_step(hb->step, now);
  }
  c.peer = fmt::format("rank {}", hb->rank);
  c.rank = hb->rank;
  if (!all_said_hello_ && int(ranks_.size()) == n_) {
    all_said_hello_ = true;
    say(fmt::format("attempt {}: all {} ranks are reporting", index_ + 1, n_));
  }
}

// A rank's later record replaces its earlier one (it read what the first left unread).
void Attempt::on_record(FailureRecord record) {
  say(fmt::format("failure record: {}", record.summary()));
  auto& records = result_.records;
  const auto same = std::find_if(records.begin(), records.end(),
                                 [&](const FailureRecord& r) { return r.rank == record.rank; });
  if (same != records.end()) *same = std::move(record);
  else if (records.size() < 64) records.push_back(std::move(record));
}

void Attempt::note_step(int step, Clock::time_point now) {
  if (result_.started_step < 0) result_.started_step = step;
  if (step > result_.started_step && !result_.progressed_at) result_.progressed_at = now;
  if (result_.step_seen.try_emplace(step, now).second) {
    // The step time, from when the previous step was first seen: the last 101 of them.
    const auto prev = result_.step_seen.find(step - 1);
    if (prev != result_.step_seen.end()) {
      const double dt = seconds(prev->second, now);
      if (step_seconds_.size() < 101) step_seconds_.push_back(dt);
      else step_seconds_[step_ring_++ % 101] = dt;
    }
  }
  result_.last_step = std::max(result_.last_step, step);
}

// Passes mpirun's stderr through line by line, keeping mpirun's own notice of a failed
// process (what loom's ranks say reaches the supervisor as records instead).
bool Attempt::read_stderr(bool flush) {
  char buf[8192];
  ssize_t n;
  while ((n = read(child_.out.get(), buf, sizeof buf)) > 0) err_buf_.append(buf, size_t(n));
  size_t begin = 0;
  for (size_t nl; (nl = err_buf_.find('\n', begin)) != std::string::npos; begin = nl + 1) {
    const std::string_view line(err_buf_.data() + begin, nl - begin);
    if (mpirun_notice_.empty() && is_mpirun_notice(line)) mpirun_notice_ = line;
    fmt::print(stderr, "{}\n", line);
  }
  err_buf_.erase(0, begin);
  if ((flush || err_buf_.size() > 65536) && !err_buf_.empty()) {
    fmt::print(stderr, "{}\n", err_buf_);
    err_buf_.clear();
  }
  std::fflush(stderr);
  return n == 0;
}

std::map<int, std::string> Attempt::rank_hosts() const {
  std::map<int, std::string> out;
  for (const auto& [rank, r] : ranks_)
    if (!r.host.empty()) out[rank] = r.host;
  return out;
}

std::string Attempt::name(int rank) const {
  const auto it = ranks_.find(rank);
  return it == ranks_.end() || it->second.host.empty()
             ? fmt::format("rank {}", rank)
             : fmt::format("rank {} on {}", rank, it->second.host);
}

std::optional<std::string> Attempt::silent_rank(Clock::time_point now) const {
  for (const auto& [rank, r] : ranks_) {
    if (r.done || seconds(r.last_heard, now) < opt_.heartbeat_s) continue;
    return fmt::format("{} missed its heartbeat for {:g} s (last step {})", name(rank),
                       opt_.heartbeat_s, r.step);
  }
  return std::nullopt;
}

// A rank whose step has not moved for the progress timeout, though it still beats (a hang
// inside a step: heartbeats come from a thread of their own).
std::optional<std::string> Attempt::stalled_rank(Clock::time_point now) const {
  double timeout = opt_.progress_timeout_s;
  std::string why = fmt::format("--progress-timeout {:g} s", timeout);
  if (timeout <= 0) {
    if (step_seconds_.size() < 3) return std::nullopt;  // too few steps timed yet
    std::vector<double> t = step_seconds_;
    std::nth_element(t.begin(), t.begin() + t.size() / 2, t.end());
    const double median = t[t.size() / 2];
    timeout = std::max(opt_.heartbeat_s, 5 * median);
    why = fmt::format("progress timeout {:.3g} s: 5 x the median step {:.3g} s, at least "
                      "--heartbeat-s", timeout, median);
  }
  std::optional<int> worst;
  double worst_idle = 0;
  std::vector<std::string> others;
  for (const auto& [rank, r] : ranks_) {
    if (r.done || !r.progress_at) continue;
    const double idle = seconds(*r.progress_at, now);
    if (idle < timeout) continue;
    others.push_back(std::to_string(rank));
    if (!worst || idle > worst_idle) {
      worst = rank;
      worst_idle = idle;
    }
  }
  if (!worst) return std::nullopt;
  std::erase(others, std::to_string(*worst));
  return fmt::format("{} made no progress for {:.1f} s in step {} ({}){}", name(*worst),
                     worst_idle, ranks_.at(*worst).step, why,
                     others.empty() ? "" : "; stalled too: rank " + join(others, ", "));
}

// Ends whatever is left of the process group: SIGTERM, then SIGKILL after 5 s; reaps mpirun
// and reads the rest of its stderr and of the ranks' failure records.
void Attempt::end_group() {
  const pid_t pgid = child_.pid;
  if (!exited(pgid)) {
    kill(-pgid, SIGTERM);
    const Clock::time_point start = Clock::now();
    // Records the failing ranks send meanwhile are still read.
    while (!exited(pgid) && seconds(start, Clock::now()) < 5.0) poll_once(50);
  }
  kill(-pgid, SIGKILL);  // stragglers; mpirun itself is a zombie or still running
  int status = 0;
  waitpid(pgid, &status, 0);
  // The pipe ends when the last process holding it is gone (stragglers were just killed).
  for (const Clock::time_point t0 = Clock::now(); !err_eof_ && seconds(t0, Clock::now()) < 2.0;) {
    pollfd p{child_.out.get(), POLLIN, 0};
    if (poll(&p, 1, 50) > 0) err_eof_ = read_stderr(false);
  }
  read_stderr(true);
  conns_.clear();
  ended_ = true;
}

// The records first (what the ranks said), then what mpirun's exit and the connections show.
std::string Attempt::exit_cause() const {
  std::string cause = describe_records(result_.records, rank_hosts());
  cause += fmt::format("{}mpirun exited with status {}", cause.empty() ? "" : "; ", result_.status);
  if (result_.status > 128) cause += fmt::format(" ({})", strsignal(result_.status - 128));
  if (!closed_.empty())
    cause += fmt::format("; {} (last step {}) was the first to disconnect", name(closed_[0]),
                         ranks_.at(closed_[0]).step);
  if (!mpirun_notice_.empty()) cause += "; " + mpirun_notice_;
  return cause;
}

// The per-failure recovery lines of the final summary.
struct Failure {
  int attempt;
  std::string cause;
  Clock::time_point at;
  int last_step;
};

void print_recovery(const std::vector<Failure>& failures, const std::vector<AttemptResult>& runs) {
  for (size_t i = 0; i < failures.size(); ++i) {
    const Failure& f = failures[i];
    std::string line = fmt::format("failure {} (attempt {}, last step {}): ", i + 1,
                                   f.attempt + 1, f.last_step);
    std::optional<double> resumed, passed;
    for (size_t a = size_t(f.attempt) + 1; a < runs.size(); ++a) {
      if (!resumed && runs[a].progressed_at) resumed = seconds(f.at, *runs[a].progressed_at);
      for (const auto& [step, t] : runs[a].step_seen)
        if (!passed && step > f.last_step) passed = seconds(f.at, t);
    }
    line += resumed ? fmt::format("training again {:.1f} s later (a step completed after the "
                                  "restart)", *resumed)
                    : std::string("no step completed after the restart");
    if (passed) line += fmt::format(", past step {} {:.1f} s later", f.last_step, *passed);
    say(line);
  }
}

}  // namespace

std::vector<std::string> attempt_train_args(const std::vector<std::string>& train_args,
                                            int attempt) {
  if (attempt == 0) return train_args;
  std::vector<std::string> out;
  for (size_t i = 0; i < train_args.size(); ++i) {
    if (train_args[i] == "--resume") {
      ++i;  // and its value
      continue;
    }
    if (train_args[i].starts_with("--resume=")) continue;
    out.push_back(train_args[i]);
  }
  out.insert(out.end(), {"--resume", "auto"});
  return out;
}

std::string make_job_secret() {
  std::ifstream in("/dev/urandom", std::ios::binary);
  unsigned char bytes[16];
  LOOM_CHECK(in.read(reinterpret_cast<char*>(bytes), sizeof bytes).good(),
             "cannot read /dev/urandom");
  std::string hex;
  for (unsigned char b : bytes) hex += fmt::format("{:02x}", b);
  return hex;
}

bool is_mpirun_notice(std::string_view line) {
  return line.starts_with("mpirun noticed that process rank") ||
         line.starts_with("MPI_ABORT was invoked on rank");
}

std::string describe_records(const std::vector<FailureRecord>& records,
                             const std::map<int, std::string>& host_of) {
  if (records.empty()) return "";
  auto first = [&](auto pred) {
    return std::find_if(records.begin(), records.end(), pred);
  };
  auto primary = first([](const FailureRecord& r) { return !r.unreachable.empty(); });
  if (primary == records.end())
    primary = first([](const FailureRecord& r) { return !r.unread.empty(); });
  if (primary == records.end())
    primary = first([](const FailureRecord& r) {
      return r.kind != FailureKind::kCollectiveDeadline && r.kind != FailureKind::kPeerDeadline;
    });
  if (primary == records.end()) primary = records.begin();
  std::string out = primary->summary();
  std::vector<std::string> away;
  for (const std::vector<int>* ranks : {&primary->unreachable, &primary->unread})
    for (int rank : *ranks)
      if (const auto h = host_of.find(rank); h != host_of.end() && !h->second.empty())
        away.push_back(fmt::format("rank {} on {}", rank, h->second));
  if (!away.empty()) out += fmt::format(" ({})", join(away, ", "));
  std::vector<std::string> more;
  for (auto r = records.begin(); r != records.end(); ++r)
    if (r != primary)
      more.push_back(fmt::format("rank {} ({})", r->rank, failure_kind_name(r->kind)));
  if (!more.empty())
    out += fmt::format(" [{} more record(s): {}]", more.size(), join(more, ", "));
  return out;
}

FailureDecision decide_after_failure(const std::vector<FailureRecord>& records, int status,
                                     bool first_attempt, bool started) {
  auto any = [&](FailureKind k) {
    return std::any_of(records.begin(), records.end(),
                       [k](const FailureRecord& r) { return r.kind == k; });
  };
  // Without a record (a rank killed, or one that could not reach the supervisor), the exit
  // status the record would have carried is all there is.
  const bool non_finite = records.empty() ? status == 4 : any(FailureKind::kNonFinite);
  const bool bad_input = records.empty() ? status == 2 : any(FailureKind::kBadInput);
  const char* from = records.empty() ? "mpirun's exit status" : "the ranks' failure records";
  if (non_finite)
    return {4, fmt::format("the job stopped on a non-finite loss or gradient ({}): a restart "
                           "from the same checkpoint would repeat it; not restarting", from)};
  if (bad_input && first_attempt && !started)
    return {2, fmt::format("the job failed on bad input ({}) before its first step: not "
                           "restarting", from)};
  return {0, ""};
}

int run_supervisor(const LaunchOptions& opt) {
  LOOM_REQUIRE(opt.n >= 1, "launch: -n must be at least 1 (got {})", opt.n);
  LOOM_REQUIRE(opt.max_restarts >= 0, "launch: --max-restarts must be >= 0 (got {})",
               opt.max_restarts);
  LOOM_REQUIRE(opt.heartbeat_s > 0, "launch: --heartbeat-s must be > 0 (got {})", opt.heartbeat_s);
  LOOM_REQUIRE(opt.min_n >= 0 && opt.min_n <= opt.n,
               "launch: --min-n {} must be between 1 and -n {}", opt.min_n, opt.n);
  LOOM_REQUIRE(!opt.train_args.empty() && opt.train_args[0] == "train",
               "launch: expected the train command after '--', e.g. loom launch -n 2 -- train "
               "--config FILE.toml --dp 2");
  int port = 0;
  // With --hosts the ranks reach the supervisor over the job's network, by this host's name.
  const bool remote = !opt.hosts.empty();
  const Fd listener = listen_local(&port, remote);
  const Fd signals = interrupt_fd();
  char host[256] = "127.0.0.1";
  if (remote) LOOM_CHECK(gethostname(host, sizeof host - 1) == 0, "gethostname failed");
  const std::string address =
      fmt::format("{}:{}", opt.supervisor_address.empty() ? host : opt.supervisor_address, port);
  const std::string secret = make_job_secret();
  say(fmt::format("{} processes, up to {} restart(s), heartbeat timeout {:g} s, listening on {}",
                  opt.n, opt.max_restarts, opt.heartbeat_s, address));
  std::vector<AttemptResult> runs;
  std::vector<Failure> failures;
  RestartPlanner planner(opt, signals.get());
  for (int attempt = 0; attempt <= opt.max_restarts; ++attempt) {
    const std::optional<Placement> where =
        attempt == 0 ? Placement{opt.n, opt.hosts} : planner.next();
    if (!where) return planner.interrupted_by() ? 128 + planner.interrupted_by() : 1;
    runs.push_back(
        Attempt(opt, attempt, *where, listener.get(), signals.get(), address, secret).run());
    const AttemptResult& r = runs.back();
    if (r.ok) {
      say(fmt::format("completed after {} restart(s)", attempt));
      print_recovery(failures, runs);
      return 0;
    }
    say(fmt::format("attempt {} failed: {}", attempt + 1, r.cause));
    failures.push_back({attempt, r.cause, r.ended_at, r.last_step});
    if (r.interrupted_by) {
      say("interrupted: the job was ended; not restarting");
      return 128 + r.interrupted_by;
    }
    const FailureDecision d =
        decide_after_failure(r.records, r.status, attempt == 0, r.started_step >= 0);
    if (d.stop_with != 0) {
      say(d.why);
      return d.stop_with;
    }
    if (attempt < opt.max_restarts)
      say(fmt::format("restarting from the newest checkpoint (restart {} of {})", attempt + 1,
                      opt.max_restarts));
  }
  say(fmt::format("gave up: {} attempt(s) failed, the last with: {}", runs.size(),
                  failures.back().cause));
  return 1;
}

}  // namespace loom
