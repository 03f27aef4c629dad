#include "core/dtype.h"

#include <fmt/format.h>

#include "core/check.h"

namespace loom {

size_t dtype_size(DType t) { return t == DType::kF32 ? 4 : 2; }

const char* dtype_name(DType t) {
  switch (t) {
    case DType::kF32: return "fp32";
    case DType::kBF16: return "bf16";
    case DType::kF16: return "fp16";
  }
  return "?";
}

DType parse_dtype(std::string_view name) {
  if (name == "fp32" || name == "f32" || name == "float32") return DType::kF32;
  if (name == "bf16" || name == "bfloat16") return DType::kBF16;
  if (name == "fp16" || name == "f16" || name == "float16") return DType::kF16;
  throw InputError(fmt::format("unknown precision '{}': expected fp32, bf16 or fp16", name));
}

const char* device_name(Device d) { return d == Device::kCpu ? "cpu" : "cuda"; }

}  // namespace loom
