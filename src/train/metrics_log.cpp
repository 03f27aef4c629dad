#include "train/metrics_log.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "core/check.h"
#include "core/memory.h"

namespace loom {
namespace fs = std::filesystem;

MetricsLog::MetricsLog(fs::path path) : path_(std::move(path)) {
  fd_ = ::open(path_.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  LOOM_REQUIRE(fd_ >= 0, "cannot open '{}' for writing: {}", path_.string(),
               std::strerror(errno));
}

MetricsLog::~MetricsLog() {
  if (fd_ >= 0) ::close(fd_);
}

MetricsLog::MetricsLog(MetricsLog&& other) noexcept
    : path_(std::move(other.path_)), fd_(std::exchange(other.fd_, -1)) {}

MetricsLog& MetricsLog::operator=(MetricsLog&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(other.path_);
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

std::string MetricsLog::append(const std::string& line) {
  const std::string text = line + "\n";
  struct stat before {};
  const bool sized = ::fstat(fd_, &before) == 0 && S_ISREG(before.st_mode);
  // A short write is retried for the rest, so a full disk reports its ENOSPC.
  size_t done = 0;
  int err = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd_, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      err = n < 0 ? errno : EIO;
      break;
    }
    done += size_t(n);
  }
  if (done == text.size()) return "";
  // Half a record is cut, so the file stays whole lines.
  if (done > 0 && sized) (void)!::ftruncate(fd_, before.st_size);
  const std::string why = std::strerror(err);
  std::error_code ec;
  const fs::space_info space = fs::space(path_.parent_path().empty() ? "." : path_.parent_path(),
                                         ec);
  const std::string free = ec ? "unknown" : format_bytes(double(space.available));
  return fmt::format("cannot write metrics to '{}': {} ({} free on its file system)",
                     path_.string(), why, free);
}

void MetricsLog::fail_as_full() {
  const int full = ::open("/dev/full", O_WRONLY | O_CLOEXEC);
  LOOM_CHECK(full >= 0, "cannot open /dev/full: {}", std::strerror(errno));
  ::close(fd_);
  fd_ = full;
}

}  // namespace loom
