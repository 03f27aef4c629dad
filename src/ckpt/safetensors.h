// The safetensors format (https://github.com/huggingface/safetensors), fp32 only:
//   [u64 little-endian N][N bytes of JSON header, space-padded][raw tensor data]
// The header maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]}
// (offsets relative to the start of the data) plus an optional "__metadata__" object of
// string -> string. The reader validates everything before handing out a byte, so a
// truncated or hand-edited file fails with a message naming the file and the problem
// rather than loading garbage.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "ckpt/mapped_file.h"

namespace loom {

// Size and XXH64 of a file as written, so a checkpoint manifest can record them without
// reading the file back.
struct FileDigest {
  uint64_t bytes = 0;
  uint64_t xxh64 = 0;
};

// "[3, 16]": shapes in error messages.
std::string shape_str(std::span<const int64_t> shape);

// Collects fp32 tensors by pointer (the caller keeps them alive until write()) and writes
// them in insertion order, header keys in insertion order with "__metadata__" first, so the
// same tensors and metadata always give the same bytes.
class SafetensorsWriter {
 public:
  void add(std::string name, std::vector<int64_t> shape, const float* data);
  void set_metadata(std::string key, std::string value);
  // Writes atomically (temporary file, fsync, rename, fsync of the directory).
  FileDigest write(const std::filesystem::path& path) const;

 private:
  struct Entry {
    std::string name;
    std::vector<int64_t> shape;
    const float* data;
    uint64_t bytes;
  };
  std::string header_json() const;

  std::vector<Entry> entries_;
  std::vector<std::pair<std::string, std::string>> metadata_;
};

// A validated, memory-mapped safetensors file.
class SafetensorsFile {
 public:
  struct Tensor {
    std::string name;
    std::string dtype;
    std::vector<int64_t> shape;
    uint64_t begin = 0;  // byte offsets into the data section
    uint64_t end = 0;
  };

  // Maps and validates `path`; throws InputError naming the file and what is wrong.
  static SafetensorsFile open(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return file_.path(); }
  // The whole file (for checksums).
  std::span<const uint8_t> file_bytes() const { return file_.bytes(); }
  // Tensors in data order.
  const std::vector<Tensor>& tensors() const { return tensors_; }
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  // Throws InputError if absent.
  const Tensor& tensor(const std::string& name) const;
  const std::vector<int64_t>& shape(const std::string& name) const { return tensor(name).shape; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // Copies an F32 tensor into dst. Throws InputError if it is absent, not F32, or its shape
  // is not expected_shape (naming the tensor and both shapes).
  void read(const std::string& name, float* dst, std::span<const int64_t> expected_shape) const;
  // The raw bytes of a tensor.
  std::span<const uint8_t> data(const std::string& name) const;

 private:
  explicit SafetensorsFile(MappedFile file) : file_(std::move(file)) {}
  void parse();

  MappedFile file_;
  uint64_t data_start_ = 0;
  std::vector<Tensor> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace loom
