#include "comm/process_grid.h"

#include <fmt/format.h>

#include "core/check.h"

namespace loom {

int rank_of(const GridShape& s, const GridCoord& c) {
  return c.tp + s.tp * (c.dp + s.dp * c.pp);
}

GridCoord coord_of(const GridShape& s, int rank) {
  return GridCoord{.pp = rank / (s.tp * s.dp), .dp = (rank / s.tp) % s.dp, .tp = rank % s.tp};
}

void validate_grid(const GridShape& s, int world_size) {
  LOOM_REQUIRE(s.pp >= 1 && s.dp >= 1 && s.tp >= 1,
               "parallel sizes must be >= 1, got pp={} dp={} tp={}", s.pp, s.dp, s.tp);
  LOOM_REQUIRE(s.world() == world_size,
               "pp={} x dp={} x tp={} = {} does not match the world size {}", s.pp, s.dp, s.tp,
               s.world(), world_size);
}

ProcessGrid ProcessGrid::single() {
  ProcessGrid g;
  g.world_ = make_single_comm("world");
  g.dp_ = make_single_comm("dp");
  g.tp_ = make_single_comm("tp");
  g.pp_ = make_single_comm("pp");
  return g;
}

std::string ProcessGrid::describe() const {
  return fmt::format("rank {} (pp {}, dp {}, tp {})", rank_, coord_.pp, coord_.dp, coord_.tp);
}

}  // namespace loom
