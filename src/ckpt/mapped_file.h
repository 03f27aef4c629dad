// A read-only memory map of a whole file. Checkpoints of large models are many GiB: mapping
// lets the loader checksum and copy tensors without first reading a second copy into memory.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>

namespace loom {

class MappedFile {
 public:
  // Throws InputError naming the path if it cannot be opened or mapped.
  explicit MappedFile(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  std::span<const uint8_t> bytes() const { return {data_, size_}; }
  size_t size() const { return size_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  void release();

  std::filesystem::path path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// XXH64 (seed 0) of a byte range, as checkpoint manifests record it.
uint64_t xxh64_of(std::span<const uint8_t> bytes);

}  // namespace loom
