#include "core/buffer.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <new>
#include <utility>

#include "core/check.h"

namespace loom {
namespace {

constexpr std::align_val_t kAlign{64};
// From this size on, buffers are anonymous mappings: zero pages that become resident only
// when first written, so a buffer of which a rank uses a part at a time (the ZeRO-3 compute
// copy, cast one unit at a time) never holds the rest.
constexpr size_t kMapBytes = size_t(1) << 20;

class CpuAllocator final : public Allocator {
 public:
  Device device() const override { return Device::kCpu; }
  std::byte* allocate(size_t bytes) override {
    if (bytes == 0) return nullptr;
    if (bytes >= kMapBytes) {
      void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) throw std::bad_alloc();
      return static_cast<std::byte*>(p);  // page-aligned
    }
    auto* p = static_cast<std::byte*>(::operator new(bytes, kAlign));
    std::memset(p, 0, bytes);
    return p;
  }
  void deallocate(std::byte* p, size_t bytes) override {
    if (!p) return;
    if (bytes >= kMapBytes) munmap(p, bytes);
    else ::operator delete(p, kAlign);
  }
  void discard(std::byte* p, size_t bytes) override {
    const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
    const uintptr_t first = (uintptr_t(p) + page - 1) / page * page;
    const uintptr_t last = (uintptr_t(p) + bytes) / page * page;
    if (first < last) madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
  }
};

}  // namespace

Allocator& cpu_allocator() {
  static CpuAllocator alloc;  // stateless
  return alloc;
}

Buffer::Buffer(Allocator& alloc, size_t bytes)
    : alloc_(&alloc), data_(alloc.allocate(bytes)), bytes_(bytes) {}

Buffer::~Buffer() { release(); }

Buffer::Buffer(Buffer&& o) noexcept
    : alloc_(std::exchange(o.alloc_, nullptr)),
      data_(std::exchange(o.data_, nullptr)),
      bytes_(std::exchange(o.bytes_, 0)) {}

Buffer& Buffer::operator=(Buffer&& o) noexcept {
  if (this != &o) {
    release();
    alloc_ = std::exchange(o.alloc_, nullptr);
    data_ = std::exchange(o.data_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}

void Buffer::discard(size_t offset, size_t bytes) {
  LOOM_CHECK(offset <= bytes_ && bytes <= bytes_ - offset, "discard [{}, +{}) of a {}-byte buffer",
             offset, bytes, bytes_);
  if (alloc_ && bytes > 0) alloc_->discard(data_ + offset, bytes);
}

void Buffer::release() {
  if (alloc_) alloc_->deallocate(data_, bytes_);
  alloc_ = nullptr;
  data_ = nullptr;
  bytes_ = 0;
}

float* TensorView::f32() const {
  LOOM_CHECK(dtype == DType::kF32, "a {} buffer read as fp32", dtype_name(dtype));
  return reinterpret_cast<float*>(data);
}

TensorView TensorView::slice(size_t offset, size_t count) const {
  LOOM_CHECK(offset + count <= numel, "slice [{}, {}) of a {}-element view", offset,
             offset + count, numel);
  return {data + offset * dtype_size(dtype), dtype, count};
}

}  // namespace loom
