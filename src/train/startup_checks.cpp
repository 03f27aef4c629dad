#include "train/startup_checks.h"

#include <xxhash.h>

#include "core/check.h"
#include "core/file_io.h"

namespace loom {
namespace {

// True when every rank holds the same 64-bit value (compared as two 32-bit halves).
bool same_everywhere(Comm& world, uint64_t h) {
  double lo[2] = {double(uint32_t(h)), double(h >> 32)};
  double neg[2] = {-lo[0], -lo[1]};
  world.allreduce(lo, 2, ReduceOp::kMax);
  world.allreduce(neg, 2, ReduceOp::kMax);
  return lo[0] == -neg[0] && lo[1] == -neg[1];
}

}  // namespace

void check_same_binary_and_config(const ProcessGrid& grid, const RunConfig& cfg) {
  const std::vector<uint8_t> exe = read_file_bytes("/proc/self/exe");
  const std::string toml = cfg.to_toml();
  const bool same_exe = same_everywhere(grid.world(), XXH64(exe.data(), exe.size(), 0));
  const bool same_cfg = same_everywhere(grid.world(), XXH64(toml.data(), toml.size(), 0));
  LOOM_REQUIRE(same_exe, "the ranks of this job run different loom binaries; install the same "
               "build on every host");
  LOOM_REQUIRE(same_cfg, "the ranks of this job resolved different configs (a different --set or "
               "config file on some rank); every rank must train the same run");
}

}  // namespace loom
