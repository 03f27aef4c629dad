// Calibration of the local cluster file from measurements on this machine: `loom bench
// kernels` (the GEMM peak per dtype, the model-shape GEMMs, attention and elementwise
// kernels) and `loom bench collectives` at one or more rank counts (loom's Comm rows). The
// result is a cluster file (kind = "cpu", one host, its cores as devices) whose numbers are
// measured, each commented with where it came from.
#pragma once

#include <nlohmann/json.hpp>

#include <array>
#include <string>
#include <vector>

namespace loom {

// Ring α-β fit of loom's collectives: time = steps * α + bus_bytes / β, least squares over
// every all-reduce, all-gather and reduce-scatter row of every file. And per collective
// the same with the bus bytes of all the file's ranks over one β for the host: what its
// ranks share when they communicate at once (a rank's β at 8 ranks on 2 cores is a third of
// its β at 2 ranks).
struct LinkFit {
  double alpha_us = 0, bandwidth_gbs = 0;
  std::array<double, 3> host_gbs{};  // all-reduce, reduce-scatter, all-gather
  int rows = 0;
};
LinkFit fit_collectives(const std::vector<nlohmann::json>& collectives);

// The cluster file's text. `host_memory_bytes`: what this host's ranks may use.
std::string calibrated_cluster_toml(const nlohmann::json& kernels,
                                    const std::vector<nlohmann::json>& collectives,
                                    double host_memory_bytes, const std::string& sources);

}  // namespace loom
