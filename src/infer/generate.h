// Loading a checkpoint for inference (generation and evaluation): the model of a run's
// newest (or a given) checkpoint, in this rank's tensor-parallel slice of the grid.
#pragma once

#include <filesystem>
#include <memory>

#include "ckpt/checkpoint.h"
#include "comm/process_grid.h"
#include "model/gpt.h"

namespace loom {

struct LoadedModel {
  std::unique_ptr<Gpt> model;
  CheckpointState state;  // the manifest: step, config the run trained with
};
// Builds a model from a checkpoint (run dir or checkpoint dir) and loads its weights; any
// checkpoint, saved from any training layout, loads into any tp of `grid` (pp = 1).
LoadedModel load_model(const std::filesystem::path& ckpt, const ProcessGrid& grid);

}  // namespace loom
