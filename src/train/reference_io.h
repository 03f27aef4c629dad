// Writes what the PyTorch reference (reference/torch_gpt.py) needs to rebuild exactly this
// model and data: spec.json (model and train config, parameter names/shapes/offsets/decay
// flags), weights.bin (the flat fp32 weight buffer) and tokens.bin (int32 train tokens).
// Used by the PyTorch comparison test and by `loom bench train`.
#pragma once

#include <filesystem>

#include "train/trainer.h"

namespace loom {

void write_reference_inputs(const std::filesystem::path& dir, Trainer& trainer);

}  // namespace loom
