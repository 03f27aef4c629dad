// Checks at the start of a multi-process job: every rank runs the same binary with the
// same resolved config (their hashes are compared), so a stale binary on one host or a
// different --set on one rank fails at once with a clear message instead of diverging.
#pragma once

#include "comm/process_grid.h"
#include "train/run_config.h"

namespace loom {

void check_same_binary_and_config(const ProcessGrid& grid, const RunConfig& cfg);

}  // namespace loom
