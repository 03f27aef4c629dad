// Learning-rate schedule: linear warm-up then cosine decay to min_lr, or constant.
#pragma once

#include "train/run_config.h"

namespace loom {

// LR of optimizer step `step` (0-based), as llm.c/nanoGPT compute it:
// warm-up lr*(step+1)/warmup; cosine: min_lr + 0.5*(1+cos(pi*r))*(lr-min_lr),
// r = (step-warmup)/(steps-warmup).
double learning_rate(const TrainConfig& t, int step);

}  // namespace loom
