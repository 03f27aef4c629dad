// Philox4x32-10 counter-based RNG (Salmon et al., SC'11). A value depends only on
// (key, counter), never on call order, so an initial weight can be computed from
// (seed, parameter name, global element index) by whichever rank holds that element:
// every parallel layout starts from exactly the single-process model.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <string_view>

namespace loom {

using PhiloxBlock = std::array<uint32_t, 4>;

inline PhiloxBlock philox4x32_10(PhiloxBlock ctr, std::array<uint32_t, 2> key) {
  constexpr uint32_t kM0 = 0xD2511F53, kM1 = 0xCD9E8D57;
  constexpr uint32_t kW0 = 0x9E3779B9, kW1 = 0xBB67AE85;
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = uint64_t(kM0) * ctr[0];
    uint64_t p1 = uint64_t(kM1) * ctr[2];
    ctr = {uint32_t(p1 >> 32) ^ ctr[1] ^ key[0], uint32_t(p1),
           uint32_t(p0 >> 32) ^ ctr[3] ^ key[1], uint32_t(p0)};
    key[0] += kW0;
    key[1] += kW1;
  }
  return ctr;
}

// 64-bit hash of a name (xxHash64), used as the high half of the Philox counter.
uint64_t name_hash(std::string_view name);

// A stream of random numbers addressed by (seed, stream id, index).
class Philox {
 public:
  Philox(uint64_t seed, uint64_t stream) : seed_(seed), stream_(stream) {}

  // Four uniform 32-bit words for block `index`.
  PhiloxBlock block(uint64_t index) const {
    return philox4x32_10({uint32_t(index), uint32_t(index >> 32), uint32_t(stream_),
                          uint32_t(stream_ >> 32)},
                         {uint32_t(seed_), uint32_t(seed_ >> 32)});
  }

  // Uniform in (0, 1] from 24 random bits, so log() never sees 0.
  static float to_unit(uint32_t x) { return (float((x >> 8) + 1)) * (1.0f / 16777216.0f); }

  // Standard normal for element `index` (Box-Muller on one Philox block; the block
  // gives two normals, element index uses the one selected by its parity).
  float normal(uint64_t index) const {
    PhiloxBlock r = block(index >> 1);
    float u1 = to_unit(r[0]), u2 = to_unit(r[1]);
    float radius = std::sqrt(-2.0f * std::log(u1));
    float theta = 6.2831853071795864769f * u2;
    return (index & 1) ? radius * std::sin(theta) : radius * std::cos(theta);
  }

  // Uniform in (0, 1] for draw `index`.
  float uniform(uint64_t index) const { return to_unit(block(index)[0]); }

 private:
  uint64_t seed_;
  uint64_t stream_;
};

}  // namespace loom
