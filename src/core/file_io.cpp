#include "core/file_io.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include "core/check.h"

namespace loom {
namespace fs = std::filesystem;

std::vector<uint8_t> read_file_bytes(const fs::path& path) {
  // A directory opens as a stream on Linux and then reports size -1 (std::bad_alloc).
  std::error_code ec;
  LOOM_REQUIRE(!fs::is_directory(path, ec), "cannot read '{}': it is a directory, not a file",
               path.string());
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  LOOM_REQUIRE(in.good(), "cannot open '{}': {}", path.string(), std::strerror(errno));
  std::streamsize size = in.tellg();
  LOOM_REQUIRE(size >= 0, "cannot read '{}': its size is unknown (not a regular file?)",
               path.string());
  in.seekg(0);
  std::vector<uint8_t> bytes(static_cast<size_t>(size));
  LOOM_REQUIRE(in.read(reinterpret_cast<char*>(bytes.data()), size).good() || size == 0,
               "cannot read '{}'", path.string());
  return bytes;
}

std::string read_file_text(const fs::path& path) {
  std::vector<uint8_t> bytes = read_file_bytes(path);
  return std::string(bytes.begin(), bytes.end());
}

void fsync_dir(const fs::path& dir) {
  int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

void require_file_target(const fs::path& path) {
  std::error_code ec;
  LOOM_REQUIRE(!fs::is_directory(path, ec), "cannot write '{}': it is a directory; name a file",
               path.string());
  const fs::path parent = path.parent_path().empty() ? fs::path(".") : path.parent_path();
  LOOM_REQUIRE(fs::is_directory(parent, ec), "cannot write '{}': folder '{}' does not exist",
               path.string(), parent.string());
}

AtomicFile::AtomicFile(fs::path path) : path_(std::move(path)) {
  require_file_target(path_);
  tmp_ = path_;
  tmp_ += fmt::format(".tmp.{}", ::getpid());
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  LOOM_REQUIRE(fd_ >= 0, "cannot create '{}': {}", tmp_.string(), std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_.c_str());
  }
}

void AtomicFile::write(const void* data, size_t bytes) {
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    ssize_t n = ::write(fd_, p, bytes);
    if (n < 0 && errno == EINTR) continue;
    LOOM_REQUIRE(n > 0, "cannot write '{}': {}", tmp_.string(), std::strerror(errno));
    p += n;
    bytes -= size_t(n);
  }
}

void AtomicFile::commit() {
  LOOM_REQUIRE(::fsync(fd_) == 0, "cannot fsync '{}': {}", tmp_.string(), std::strerror(errno));
  // close() can report a deferred write error (NFS, a full disk): the file is then not whole.
  const int closed = ::close(fd_);
  fd_ = -1;
  if (closed != 0 || ::rename(tmp_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp_.c_str());  // never leave the temporary behind
    throw InputError(fmt::format("cannot {} '{}': {}",
                                 closed != 0 ? "close" : "rename into place", path_.string(),
                                 std::strerror(err)));
  }
  fsync_dir(path_.parent_path());
}

void write_file_atomic(const fs::path& path, std::span<const uint8_t> bytes) {
  AtomicFile f(path);
  f.write(bytes.data(), bytes.size());
  f.commit();
}

void write_file_atomic(const fs::path& path, std::string_view text) {
  write_file_atomic(path, std::span<const uint8_t>(
                              reinterpret_cast<const uint8_t*>(text.data()), text.size()));
}

}  // namespace loom
