#include "launch/heartbeat.h"

#include <fmt/format.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdlib>
#include <cstring>

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

// Connects to "HOST:PORT"; -1 with `err` set on failure.
int connect_to(const std::string& address, std::string& err) {
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
    if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
      err = std::strerror(errno);
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

std::string format_heartbeat_line(std::string_view secret, int rank, int step) {
  return fmt::format("{} {} {}", secret, rank, step);
}

std::string format_done_line(std::string_view secret, int rank) {
  return fmt::format("{} {} done", secret, rank);
}

std::optional<HeartbeatLine> parse_heartbeat_line(std::string_view line,
                                                  std::string_view secret) {
  const size_t a = line.find(' ');
  const size_t b = a == std::string_view::npos ? a : line.find(' ', a + 1);
  if (b == std::string_view::npos || line.find(' ', b + 1) != std::string_view::npos)
    return std::nullopt;
  if (!same_secret(line.substr(0, a), secret)) return std::nullopt;
  const std::optional<int> rank = to_int(line.substr(a + 1, b - a - 1));
  const std::string_view last = line.substr(b + 1);
  if (!rank || *rank < 0) return std::nullopt;
  if (last == "done") return HeartbeatLine{*rank, -1, true};
  const std::optional<int> step = to_int(last);
  if (!step || *step < -1) return std::nullopt;
  return HeartbeatLine{*rank, *step, false};
}

std::unique_ptr<HeartbeatClient> HeartbeatClient::from_env(int world_rank) {
  const char* address = std::getenv("LOOM_SUPERVISOR");
  if (address == nullptr || *address == '\0') return nullptr;
  const char* secret = std::getenv("LOOM_SUPERVISOR_SECRET");
  const char* timeout = std::getenv("LOOM_HEARTBEAT_S");
  const double timeout_s = timeout ? std::atof(timeout) : 0.0;
  return std::make_unique<HeartbeatClient>(address, secret ? secret : "", world_rank,
                                           timeout_s > 0 ? timeout_s / 3 : 10.0 / 3);
}

HeartbeatClient::HeartbeatClient(const std::string& address, std::string secret, int rank,
                                 double period_s)
    : secret_(std::move(secret)), rank_(rank), period_s_(period_s) {
  std::string err;
  fd_ = connect_to(address, err);
  if (fd_ < 0) {
    fmt::print(stderr, "loom: rank {}: cannot reach the supervisor at {} ({}); training goes on "
               "without heartbeats\n", rank_, address, err);
    return;
  }
  if (!send_line(format_heartbeat_line(secret_, rank_, -1))) return;
  thread_ = std::thread([this] { loop(); });
}

HeartbeatClient::~HeartbeatClient() {
  stop_thread();
  if (fd_ >= 0) close(fd_);
}

void HeartbeatClient::set_step(int step) {
  // Sent from the caller at once, so a rank that dies right after still reported this step.
  if (step_.exchange(step) != step && fd_ >= 0)
    send_line(format_heartbeat_line(secret_, rank_, step));
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
  std::unique_lock lock(mu_);
  while (!stop_) {
    cv_.wait_for(lock, period, [this] { return stop_; });
    if (stop_) break;
    lock.unlock();
    const bool ok = send_line(format_heartbeat_line(secret_, rank_, step_.load()));
    lock.lock();
    if (!ok) break;
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
      fmt::print(stderr, "loom: rank {}: lost the supervisor ({}); training goes on without "
                 "heartbeats\n", rank_, std::strerror(errno));
      return false;
    }
    sent += size_t(n);
  }
  return true;
}

}  // namespace loom
