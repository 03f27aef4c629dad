#include "train/run_dir.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "core/check.h"
#include "core/file_io.h"

namespace loom {
namespace fs = std::filesystem;

namespace {

std::string host_name() {
  char buf[256] = {};
  return ::gethostname(buf, sizeof(buf) - 1) == 0 ? std::string(buf) : std::string("?");
}

std::string read_holder(int fd) {
  char buf[512] = {};
  const ssize_t n = ::pread(fd, buf, sizeof(buf) - 1, 0);
  std::istringstream in(std::string(buf, n > 0 ? size_t(n) : 0));
  std::string pid, host;
  in >> pid >> host;
  if (pid.empty()) return "another process (it has not written its PID yet)";
  return fmt::format("PID {} on host {}", pid, host.empty() ? "?" : host);
}

}  // namespace

RunDirLock::RunDirLock(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  LOOM_REQUIRE(!ec, "cannot create run directory {}: {}", dir.string(), ec.message());
  const fs::path file = dir / kFileName;
  fd_ = ::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  LOOM_REQUIRE(fd_ >= 0, "cannot open {}: {}", file.string(), std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    const std::string holder = err == EWOULDBLOCK ? read_holder(fd_) : std::strerror(err);
    ::close(fd_);
    fd_ = -1;
    LOOM_REQUIRE(false, "run directory {} is in use by {} (lock {}): wait for that run to "
                 "end or choose another run.dir", dir.string(), holder, file.string());
  }
  const std::string me = fmt::format("{} {}\n", ::getpid(), host_name());
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, me.data(), me.size(), 0) != ssize_t(me.size()))
    LOOM_REQUIRE(false, "cannot write {}: {}", file.string(), std::strerror(errno));
}

RunDirLock::~RunDirLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the lock
}

void claim_run_dir(const fs::path& dir, bool resuming, bool overwrite) {
  if (resuming) return;
  std::vector<std::string> held;
  for (const fs::directory_entry& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name != RunDirLock::kFileName) held.push_back(name);
  }
  if (held.empty()) return;
  if (overwrite) {
    for (const std::string& name : held) fs::remove_all(dir / name);
    return;
  }
  std::sort(held.begin(), held.end());
  LOOM_REQUIRE(false, "run directory {} already holds a run ({}): pass --resume auto to "
               "continue it, --overwrite to clear it, or set another run.dir",
               dir.string(), fmt::join(held, ", "));
}

void trim_metrics(const fs::path& metrics, int step) {
  std::ifstream in(metrics);
  if (!in) return;
  std::string line, kept;
  while (std::getline(in, line)) {
    const nlohmann::json rec = nlohmann::json::parse(line, nullptr, false);
    if (rec.is_object() && rec.contains("step") && rec["step"].is_number_integer() &&
        rec["step"].get<int>() <= step)
      kept += line + "\n";
  }
  in.close();
  write_file_atomic(metrics, kept);
}

}  // namespace loom
