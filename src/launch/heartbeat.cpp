#include "launch/heartbeat.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <vector>

namespace loom {
namespace {

// Parses a whole decimal int (optional leading '-'); nullopt otherwise.
std::optional<int> to_int(std::string_view s) {
  int v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || s.empty()) return std::nullopt;
  return v;
}

bool same_secret(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= uint8_t(a[i]) ^ uint8_t(b[i]);
  return diff == 0;
}

// connect(), abandoned after timeout_s when that is > 0; the socket is left blocking.
bool connect_within(int fd, const addrinfo* ai, double timeout_s, std::string& err) {
  const int flags = fcntl(fd, F_GETFL);
  if (timeout_s > 0) fcntl(fd, F_SETFL, flags | O_NONBLOCK);
  int rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
  if (rc != 0 && errno == EINPROGRESS && timeout_s > 0) {
    pollfd p{fd, POLLOUT, 0};
    rc = poll(&p, 1, int(timeout_s * 1000));
    int so_error = ETIMEDOUT;
    socklen_t len = sizeof so_error;
    if (rc == 1) getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &len);
    errno = so_error;
    rc = so_error == 0 ? 0 : -1;
  }
  if (timeout_s > 0) fcntl(fd, F_SETFL, flags);
  if (rc != 0) err = std::strerror(errno);
  return rc == 0;
}

// Connects within timeout_s (0: as long as connect takes) to "HOST:PORT"; -1 with `err`
// set on failure.
int connect_to(const std::string& address, std::string& err, double timeout_s = 0) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) {
    err = "expected HOST:PORT";
    return -1;
  }
  const std::string host = address.substr(0, colon), port = address.substr(colon + 1);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (const int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &res); rc != 0) {
    err = gai_strerror(rc);
    return -1;
  }
  int fd = -1;
  for (addrinfo* ai = res; ai && fd < 0; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd >= 0 && !connect_within(fd, ai, timeout_s, err)) {
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(res);
  if (fd >= 0) {
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  return fd;
}

}  // namespace

std::string format_heartbeat_line(std::string_view secret, int rank, int step, int64_t idle_ms) {
  return idle_ms < 0 ? fmt::format("{} {} {} -", secret, rank, step)
                     : fmt::format("{} {} {} {}", secret, rank, step, idle_ms);
}

std::string format_done_line(std::string_view secret, int rank) {
  return fmt::format("{} {} done", secret, rank);
}

namespace {

using nlohmann::json;

constexpr size_t kMaxField = 256;  // host, where, op, group: cut to this many bytes

json record_json(const FailureRecord& r) {
  auto cut = [](const std::string& s) { return s.substr(0, kMaxField); };
  return json{{"kind", failure_kind_name(r.kind)}, {"rank", r.rank}, {"host", cut(r.host)},
              {"where", cut(r.where)}, {"step", r.step}, {"micro_batch", r.micro_batch},
              {"op", cut(r.op)}, {"group", cut(r.group)}, {"seq", r.seq}, {"bytes", r.bytes},
              {"peer", r.peer}, {"missing", r.missing}, {"unreachable", r.unreachable},
              {"unread", r.unread},
              {"waited_s", r.waited_s},
              {"deadline_s", r.deadline_s}, {"exit_code", r.exit_code}, {"message", r.message}};
}

// A value into `out`: false when it has the wrong type or range.
template <typename T>
bool read_value(const json& v, T& out) {
  if constexpr (std::is_same_v<T, std::string>) {
    if (!v.is_string()) return false;
    out = v.get<std::string>();
  } else if constexpr (std::is_same_v<T, double>) {
    if (!v.is_number()) return false;
    out = v.get<double>();
    return std::isfinite(out) && out >= 0;
  } else {
    if (!v.is_number_integer()) return false;
    const int64_t x =
        v.is_number_unsigned() && v.get<uint64_t>() > INT64_MAX ? INT64_MAX : v.get<int64_t>();
    if (x < -1 || x > std::numeric_limits<T>::max()) return false;
    out = T(x);
  }
  return true;
}

// The field `key` of `j` into `out` when present.
template <typename T>
bool take(const json& j, const char* key, T& out) {
  const auto it = j.find(key);
  return it == j.end() || read_value(*it, out);
}

// A list of world ranks (>= 0) at `key`, when present.
bool take_ranks(const json& j, const char* key, std::vector<int>& out) {
  const auto m = j.find(key);
  if (m == j.end()) return true;
  if (!m->is_array()) return false;
  for (const json& x : *m) {
    int rank = -1;
    if (!read_value(x, rank) || rank < 0) return false;
    out.push_back(rank);
  }
  return true;
}

std::optional<FailureRecord> record_from_json(std::string_view text) {
  const json j = json::parse(text.begin(), text.end(), nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("kind") || !j["kind"].is_string())
    return std::nullopt;
  const std::optional<FailureKind> kind = parse_failure_kind(j["kind"].get<std::string>());
  if (!kind) return std::nullopt;
  FailureRecord r;
  r.kind = *kind;
  bool ok = take(j, "rank", r.rank) && take(j, "host", r.host) && take(j, "where", r.where) &&
            take(j, "step", r.step) && take(j, "micro_batch", r.micro_batch) &&
            take(j, "op", r.op) && take(j, "group", r.group) && take(j, "seq", r.seq) &&
            take(j, "bytes", r.bytes) && take(j, "peer", r.peer) &&
            take(j, "waited_s", r.waited_s) && take(j, "deadline_s", r.deadline_s) &&
            take(j, "exit_code", r.exit_code) && take(j, "message", r.message);
  ok = ok && take_ranks(j, "missing", r.missing) && take_ranks(j, "unreachable", r.unreachable) &&
       take_ranks(j, "unread", r.unread);
  for (const std::string* s : {&r.host, &r.where, &r.op, &r.group}) ok &= s->size() <= kMaxField;
  if (!ok || r.rank < 0) return std::nullopt;
  return r;
}

}  // namespace

std::string format_failure_line(std::string_view secret, const FailureRecord& record) {
  FailureRecord r = record;
  const std::string head = fmt::format("{} {} fail ", secret, r.rank);
  auto line = [&] {
    return head + record_json(r).dump(-1, ' ', false, json::error_handler_t::replace);
  };
  std::string out = line();
  // Each byte of the message takes at least one in the line: cutting the excess is enough,
  // unless the rest alone is too long (thousands of ranks missing), then the list is cut.
  const std::string_view mark = " [cut]";
  while (out.size() > kMaxHeartbeatLine &&
         !(r.message.empty() && r.missing.empty() && r.unreachable.empty() &&
           r.unread.empty())) {
    const size_t excess = out.size() - kMaxHeartbeatLine + mark.size();
    if (r.message.size() > excess) {
      size_t keep = r.message.size() - excess;
      while (keep > 0 && (uint8_t(r.message[keep]) & 0xC0) == 0x80) --keep;  // UTF-8
      r.message = r.message.substr(0, keep) + std::string(mark);
    } else {
      r.message.clear();
      r.missing.resize(r.missing.size() / 2);
      r.unreachable.resize(r.unreachable.size() / 2);
      r.unread.resize(r.unread.size() / 2);
    }
    out = line();
  }
  return out;
}

std::optional<HeartbeatLine> parse_heartbeat_line(std::string_view line,
                                                  std::string_view secret) {
  // "SECRET RANK fail JSON": the JSON may hold spaces.
  const size_t s1 = line.find(' '), s2 = s1 == line.npos ? line.npos : line.find(' ', s1 + 1);
  if (s2 != line.npos && line.substr(s2 + 1).starts_with("fail ")) {
    const std::optional<int> rank = to_int(line.substr(s1 + 1, s2 - s1 - 1));
    if (!same_secret(line.substr(0, s1), secret) || !rank || *rank < 0) return std::nullopt;
    std::optional<FailureRecord> record = record_from_json(line.substr(s2 + 6));
    if (!record || record->rank != *rank) return std::nullopt;
    return HeartbeatLine{*rank, -1, false, -1, std::move(record)};
  }
  std::vector<std::string_view> f;
  for (size_t begin = 0;;) {
    const size_t sp = line.find(' ', begin);
    f.push_back(line.substr(begin, sp == std::string_view::npos ? sp : sp - begin));
    if (sp == std::string_view::npos) break;
    begin = sp + 1;
  }
  if (f.size() < 3 || f.size() > 4 || !same_secret(f[0], secret)) return std::nullopt;
  const std::optional<int> rank = to_int(f[1]);
  if (!rank || *rank < 0) return std::nullopt;
  if (f[2] == "done")
    return f.size() == 3 ? std::optional(HeartbeatLine{*rank, -1, true, -1, {}}) : std::nullopt;
  const std::optional<int> step = to_int(f[2]);
  if (!step || *step < -1) return std::nullopt;
  HeartbeatLine hb{*rank, *step, false, -1, {}};
  if (f.size() == 4 && f[3] != "-") {
    const std::optional<int> idle = to_int(f[3]);
    if (!idle || *idle < 0) return std::nullopt;
    hb.idle_ms = *idle;
  }
  return hb;
}

std::unique_ptr<HeartbeatClient> HeartbeatClient::from_env(int world_rank) {
  const char* address = std::getenv("LOOM_SUPERVISOR");
  if (address == nullptr || *address == '\0') return nullptr;
  const char* secret = std::getenv("LOOM_SUPERVISOR_SECRET");
  const char* timeout = std::getenv("LOOM_HEARTBEAT_S");
  const double timeout_s = timeout && std::atof(timeout) > 0 ? std::atof(timeout) : 10.0;
  return std::make_unique<HeartbeatClient>(address, secret ? secret : "", world_rank,
                                           timeout_s / 3, timeout_s);
}

bool send_failure_record(FailureRecord record, double timeout_s) {
  const char* address = std::getenv("LOOM_SUPERVISOR");
  const char* secret = std::getenv("LOOM_SUPERVISOR_SECRET");
  if (address == nullptr || *address == '\0' || secret == nullptr) return false;
  if (record.host.empty()) {
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    record.host = host;
  }
  std::string err;
  const int fd = connect_to(address, err, timeout_s);
  if (fd < 0) {
    fmt::print(stderr, "loom: rank {}: cannot send the failure record to the supervisor at {} "
               "({})\n", record.rank, address, err);
    return false;
  }
  const timeval tv{time_t(timeout_s), suseconds_t((timeout_s - time_t(timeout_s)) * 1e6)};
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  const std::string line = format_failure_line(secret, record) + "\n";
  size_t sent = 0;
  while (sent < line.size()) {
    const ssize_t n = send(fd, line.data() + sent, line.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    sent += size_t(n);
  }
  close(fd);
  return sent == line.size();
}

namespace {

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

HeartbeatClient::HeartbeatClient(const std::string& address, std::string secret, int rank,
                                 double period_s, double orphan_after_s,
                                 std::function<void()> orphaned)
    : secret_(std::move(secret)),
      rank_(rank),
      period_s_(period_s),
      orphan_after_s_(orphan_after_s),
      orphaned_(std::move(orphaned)),
      address_(address),
      progress_ns_(now_ns()) {
  if (!orphaned_) {
    orphaned_ = [this] {
      fmt::print(stderr, "loom: rank {}: the supervisor at {} has been gone for {:g} s; ending "
                 "this rank, whose job no one supervises\n", rank_, address_, orphan_after_s_);
      std::fflush(stderr);
      std::_Exit(1);
    };
  }
  std::string err;
  fd_ = connect_to(address, err);
  if (fd_ < 0) {
    fmt::print(stderr, "loom: rank {}: cannot reach the supervisor at {} ({}); training goes on "
               "without heartbeats\n", rank_, address, err);
    return;
  }
  if (!send_line(beat_line())) return;
  thread_ = std::thread([this] { loop(); });
}

HeartbeatClient::~HeartbeatClient() {
  stop_thread();
  if (fd_ >= 0) close(fd_);
}

void HeartbeatClient::set_step(int step) {
  progress_ns_.store(now_ns());
  // Sent from the caller at once, so a rank that dies right after still reported this step.
  if (step_.exchange(step) != step && fd_ >= 0) send_line(beat_line());
}

void HeartbeatClient::set_busy(bool busy) {
  progress_ns_.store(now_ns());
  busy_.store(busy);
}

std::string HeartbeatClient::beat_line() const {
  const int step = step_.load();
  const int64_t idle = busy_.load() || step < 0 ? -1 : (now_ns() - progress_ns_.load()) / 1000000;
  return format_heartbeat_line(secret_, rank_, step, idle);
}

// The supervisor never writes, so a readable connection is one it closed (or reset).
bool HeartbeatClient::supervisor_closed() const {
  pollfd p{fd_, POLLIN | POLLRDHUP, 0};
  if (poll(&p, 1, 0) <= 0) return false;
  char byte;
  const ssize_t n = recv(fd_, &byte, 1, MSG_DONTWAIT | MSG_PEEK);
  return n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR) || (p.revents & POLLRDHUP);
}

void HeartbeatClient::finish() {
  stop_thread();
  if (fd_ >= 0) send_line(format_done_line(secret_, rank_));
}

void HeartbeatClient::stop_thread() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
    cv_.notify_one();
  }
  if (thread_.joinable()) thread_.join();
}

void HeartbeatClient::loop() {
  const auto period = std::chrono::duration<double>(period_s_);
  std::optional<std::chrono::steady_clock::time_point> gone_since;
  std::unique_lock lock(mu_);
  while (!stop_) {
    cv_.wait_for(lock, gone_since ? std::min(period, std::chrono::duration<double>(0.2)) : period,
                 [this] { return stop_; });
    if (stop_) break;
    lock.unlock();
    const bool closed = supervisor_closed() || !send_line(beat_line());
    lock.lock();
    if (!closed || orphan_after_s_ <= 0) {
      if (closed) break;  // no orphan check: heartbeats just stop
      continue;
    }
    const auto now = std::chrono::steady_clock::now();
    if (!gone_since) gone_since = now;
    if (std::chrono::duration<double>(now - *gone_since).count() >= orphan_after_s_) {
      lock.unlock();
      orphaned_();
      return;
    }
  }
}

bool HeartbeatClient::send_line(const std::string& text) {
  std::lock_guard lock(send_mu_);  // the heartbeat thread and set_step's caller
  if (failed_.load()) return false;
  const std::string line = text + "\n";
  size_t sent = 0;
  while (sent < line.size()) {
    // MSG_NOSIGNAL: a supervisor that went away must not kill the rank with SIGPIPE.
    const ssize_t n = send(fd_, line.data() + sent, line.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      failed_.store(true);
      fmt::print(stderr, "loom: rank {}: lost the supervisor ({}){}\n", rank_,
                 std::strerror(errno),
                 orphan_after_s_ > 0
                     ? fmt::format("; ending this rank if it stays gone for {:g} s",
                                   orphan_after_s_)
                     : "; training goes on without heartbeats");
      return false;
    }
    sent += size_t(n);
  }
  return true;
}

}  // namespace loom
