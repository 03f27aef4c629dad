// A run directory belongs to one run. A fresh run starts only in an empty (or new)
// directory, or clears it with --overwrite; a resumed run continues its own. While the run
// lasts, world rank 0 holds an exclusive lock on RUN/.lock (flock: the kernel releases it
// when the process dies, however it dies), so a second `loom train` on the same directory
// fails at once, naming the holder, instead of interleaving metrics and checkpoints.
#pragma once

#include <filesystem>
#include <string>

namespace loom {

class RunDirLock {
 public:
  // Creates `dir` if needed and takes dir/.lock, writing "pid host" into it. Throws
  // InputError naming the holder's PID and host when another process holds it.
  explicit RunDirLock(const std::filesystem::path& dir);
  ~RunDirLock();
  RunDirLock(const RunDirLock&) = delete;
  RunDirLock& operator=(const RunDirLock&) = delete;

  static constexpr const char* kFileName = ".lock";

 private:
  int fd_ = -1;
};

// How a run takes its directory (with the lock held): `resuming` keeps what is there;
// otherwise the directory must hold nothing but the lock file, unless `overwrite`, which
// removes everything else first. Throws InputError naming what the directory holds.
void claim_run_dir(const std::filesystem::path& dir, bool resuming, bool overwrite);

// Keeps the records of `metrics` (metrics.jsonl) whose step is <= `step` and drops the
// rest (and any torn line), rewriting the file atomically; a resumed run replays the steps
// after its checkpoint, so the file stays one run. A missing file is left missing.
void trim_metrics(const std::filesystem::path& metrics, int step);

}  // namespace loom
