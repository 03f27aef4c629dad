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

ProcessGrid ProcessGrid::create(std::unique_ptr<Comm> world, const GridShape& shape,
                                CommProgress* progress) {
  validate_grid(shape, world->size());
  ProcessGrid g;
  g.progress_ = progress;
  g.shape_ = shape;
  g.rank_ = world->rank();
  g.coord_ = coord_of(shape, g.rank_);
  const GridCoord c = g.coord_;
  // Every rank calls every split in the same order (they are collective on world).
  g.tp_ = world->split(c.pp * shape.dp + c.dp, c.tp, "tp");
  g.dp_ = world->split(c.pp * shape.tp + c.tp, c.dp, "dp");
  g.pp_ = world->split(c.dp * shape.tp + c.tp, c.pp, "pp");
  g.world_ = std::move(world);
  return g;
}

std::string ProcessGrid::describe(int world_rank) const {
  const GridCoord c = coord_of(shape_, world_rank);
  return fmt::format("rank {} (pp {}, dp {}, tp {})", world_rank, c.pp, c.dp, c.tp);
}

}  // namespace loom
