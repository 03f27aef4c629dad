// Whole-file I/O with errors a user can act on, and atomic writes: the data goes to a
// temporary file in the same directory, is fsynced, then renamed over the target, and the
// directory is fsynced, so a crash leaves either the old file or the new one, never half.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

namespace loom {

// Reads the whole file; throws InputError naming the path if it cannot.
std::vector<uint8_t> read_file_bytes(const std::filesystem::path& path);
std::string read_file_text(const std::filesystem::path& path);

// Writes `bytes` to `path` atomically (temp file, fsync, rename, fsync dir).
void write_file_atomic(const std::filesystem::path& path, std::span<const uint8_t> bytes);
void write_file_atomic(const std::filesystem::path& path, std::string_view text);

// Throws InputError unless `path` can name a file to write: not a directory, its folder
// exists. Writers call it before doing the work whose result they would write.
void require_file_target(const std::filesystem::path& path);

// fsync a directory so a rename inside it is durable.
void fsync_dir(const std::filesystem::path& dir);

// Streams a large file to a temporary name then renames it into place. Usage:
//   AtomicFile f(path); f.write(...); ... f.commit();
// If commit() is never called the temporary file is removed.
class AtomicFile {
 public:
  explicit AtomicFile(std::filesystem::path path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t bytes);
  void commit();

 private:
  std::filesystem::path path_;
  std::filesystem::path tmp_;
  int fd_ = -1;
};

}  // namespace loom
