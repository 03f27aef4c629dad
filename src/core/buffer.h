// Device memory for the model's arenas: an Allocator per device hands out aligned bytes, a
// Buffer owns one allocation, and a TensorView is a typed window into one (data, dtype,
// element count). The model lays its activations out as views of one Buffer and never
// calls a device API itself, so a GPU backend only supplies another Allocator.
#pragma once

#include <cstddef>

#include "core/dtype.h"

namespace loom {

class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual Device device() const = 0;
  // `bytes` zero-initialised bytes aligned to 64; nullptr only for bytes == 0.
  virtual std::byte* allocate(size_t bytes) = 0;
  virtual void deallocate(std::byte* p, size_t bytes) = 0;
  // Gives the whole pages inside [p, p + bytes) back to the device (they read as zeros
  // afterwards; the partial pages at the ends keep their bytes). A no-op where the device
  // cannot.
  virtual void discard(std::byte* p, size_t bytes) {
    (void)p;
    (void)bytes;
  }
};

// Host memory (stateless; one shared instance).
Allocator& cpu_allocator();

class Buffer {
 public:
  Buffer() = default;
  Buffer(Allocator& alloc, size_t bytes);
  ~Buffer();
  Buffer(Buffer&& o) noexcept;
  Buffer& operator=(Buffer&& o) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  std::byte* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return alloc_ ? alloc_->device() : Device::kCpu; }
  // Allocator::discard of [offset, offset + bytes).
  void discard(size_t offset, size_t bytes);

 private:
  void release();
  Allocator* alloc_ = nullptr;
  std::byte* data_ = nullptr;
  size_t bytes_ = 0;
};

struct TensorView {
  std::byte* data = nullptr;
  DType dtype = DType::kF32;
  size_t numel = 0;

  // The elements as fp32; a programming error (LOOM_CHECK) if the view holds another dtype.
  float* f32() const;
  // `count` elements starting at element `offset`, same dtype.
  TensorView slice(size_t offset, size_t count) const;
};

}  // namespace loom
