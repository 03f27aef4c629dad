// The 3-D process grid (pp x dp x tp). Ranks are laid out tp fastest, then dp, then pp:
//   rank = tp_rank + tp * (dp_rank + dp * pp_rank)
// e.g. dp=2, tp=2, pp=2 on 8 ranks: rank 5 = (pp 1, dp 0, tp 1).
// The coordinate maths are pure functions; the grid owns one communicator per axis.
#pragma once

#include <memory>
#include <string>

#include "comm/comm.h"

namespace loom {

struct GridShape {
  int pp = 1;
  int dp = 1;
  int tp = 1;
  int world() const { return pp * dp * tp; }
};

struct GridCoord {
  int pp = 0;
  int dp = 0;
  int tp = 0;
  bool operator==(const GridCoord&) const = default;
};

// Pure rank <-> coordinate maps.
int rank_of(const GridShape& shape, const GridCoord& coord);
GridCoord coord_of(const GridShape& shape, int rank);

// Throws InputError naming every factor when pp*dp*tp != world_size or a factor is < 1.
void validate_grid(const GridShape& shape, int world_size);

class ProcessGrid {
 public:
  // A one-process grid: every axis has size 1 and a single-rank communicator.
  static ProcessGrid single();
  // The grid of `shape` over `world` (collective): validates the sizes against the world
  // size (InputError naming every factor) and splits one communicator per axis.
  // `progress` (may be null) is where the trainer records the step for deadline reports.
  static ProcessGrid create(std::unique_ptr<Comm> world, const GridShape& shape,
                            CommProgress* progress = nullptr);

  const GridShape& shape() const { return shape_; }
  const GridCoord& coord() const { return coord_; }
  int rank() const { return rank_; }
  Comm& world() const { return *world_; }
  Comm& dp_comm() const { return *dp_; }
  Comm& tp_comm() const { return *tp_; }
  Comm& pp_comm() const { return *pp_; }
  CommProgress* progress() const { return progress_; }
  // "rank 3 (pp 0, dp 1, tp 1)"
  std::string describe() const { return describe(rank_); }
  std::string describe(int world_rank) const;

 private:
  GridShape shape_;
  GridCoord coord_;
  int rank_ = 0;
  std::shared_ptr<Comm> world_, dp_, tp_, pp_;
  CommProgress* progress_ = nullptr;  // owned by the MPI runtime
};

}  // namespace loom
