// metrics.jsonl, written so a failure is loud: every record is one write(2) of a whole line
// whose result is checked, so a full disk is an error naming the file and the free space
// rather than a file that silently ends (std::ofstream buffered the lines and dropped them).
#pragma once

#include <filesystem>
#include <string>

namespace loom {

class MetricsLog {
 public:
  MetricsLog() = default;
  // Opens `path` for appending (creating it); throws InputError if it cannot.
  explicit MetricsLog(std::filesystem::path path);
  ~MetricsLog();
  MetricsLog(MetricsLog&& other) noexcept;
  MetricsLog& operator=(MetricsLog&& other) noexcept;

  bool is_open() const { return fd_ >= 0; }
  // Appends `line` (a newline is added). Returns "" or, when the write failed or was short,
  // an error naming the file, why, and the space left on its file system.
  std::string append(const std::string& line);
  // Fault injection (--inject-fault disk-full): later writes go to /dev/full, whose every
  // write fails with the kernel's own ENOSPC.
  void fail_as_full();

 private:
  std::filesystem::path path_;
  int fd_ = -1;
};

}  // namespace loom
