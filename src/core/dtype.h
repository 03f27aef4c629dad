// Element types and devices of loom's buffers. Every buffer the model lays out (weights,
// activations, scratch) carries a DType; a Device says whose memory it is. The model only
// names them; a backend (CPU today, CUDA later) supplies the allocator and the kernels.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace loom {

enum class DType : uint8_t { kF32, kBF16, kF16 };

size_t dtype_size(DType t);      // bytes per element: 4, 2, 2
const char* dtype_name(DType t); // "fp32" | "bf16" | "fp16"
// "fp32" | "bf16" | "fp16" (also "f32", "float32", "bfloat16", "f16", "float16");
// InputError naming the accepted spellings otherwise.
DType parse_dtype(std::string_view name);

// bf16 <-> fp32 bits: round to nearest even (a NaN stays a quiet NaN) / exact.
inline uint16_t bf16_from_float(float x) {
  const uint32_t u = __builtin_bit_cast(uint32_t, x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
inline float bf16_to_float(uint16_t b) { return __builtin_bit_cast(float, uint32_t(b) << 16); }

enum class Device : uint8_t { kCpu, kCuda };
const char* device_name(Device d);  // "cpu" | "cuda"

}  // namespace loom
