// A generation request and how it ends: what the engine takes, and what a server's protocol
// builds from a client's request (without depending on the decoder).
#pragma once

#include <cstdint>
#include <vector>

#include "infer/sampling.h"

namespace loom {

struct Request {
  std::vector<int32_t> prompt;
  SampleOptions sample;
};

enum class FinishReason : uint8_t { kLength, kStop };
inline const char* finish_reason_name(FinishReason r) {  // "length" | "stop"
  return r == FinishReason::kLength ? "length" : "stop";
}

}  // namespace loom
