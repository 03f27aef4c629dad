// What the planner knows of the machines a run would use: a cluster file (TOML,
// configs/clusters/) with the hosts, each device's peak FLOP/s per dtype, its memory and
// bandwidth, the links inside a host and between hosts, and the efficiencies the cost model
// applies to each peak. GPU files describe published systems, every number with its source;
// `local.toml` is written by calibration from `loom bench kernels` and `loom bench
// collectives` on this machine (a CPU host: the "devices" are its cores, shared by its ranks).
#pragma once

#include <array>
#include <map>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace loom {

enum class Collective { kAllReduce, kReduceScatter, kAllGather };

struct LinkSpec {
  double bandwidth_gbs = 0;  // GB/s per rank per direction
  double alpha_us = 0;       // latency of one message step
  double efficiency = 1;     // fraction of the bandwidth a collective's bus bandwidth reaches
  // Per collective where known (a calibrated CPU host's share), else 0: bandwidth_gbs.
  std::array<double, 3> collective_gbs{};
  double bytes_per_s() const { return bandwidth_gbs * 1e9 * efficiency; }
  double bytes_per_s(Collective c) const {
    const double gbs = collective_gbs[size_t(c)];
    return gbs > 0 ? gbs * 1e9 * efficiency : bytes_per_s();
  }
};

// Measured GEMM GFLOP/s against the GEMM's smallest dimension (loom bench kernels' sweep):
// what one thread does alone, one process with all the host's threads, and (optional) the
// whole host running one single-threaded GEMM per core at once, as ranks of one thread do.
// Optional wide rows: a linear layer of wide_columns outputs (a vocabulary), forward and
// backward, by its inputs (the same sizes), alone on one thread and one per core at once.
struct GemmSweep {
  std::vector<double> sizes;                            // ascending
  std::map<DType, std::vector<double>> one, all, per_core;  // GFLOP/s per size
  double wide_columns = 0;                              // 0: no wide rows
  std::map<DType, std::vector<double>> wide_one, wide_per_core;
  bool empty() const { return sizes.empty(); }
  // GFLOP/s at smallest dimension s (log-linear between sizes, flat beyond the ends).
  static double at(const std::vector<double>& sizes, const std::vector<double>& v, double s);
};

// A CPU host with more ranks than cores (optional [oversubscribed], from bench collectives'
// busy ranks): the fraction of the cores' time the ranks' work gets, by rank count.
struct Oversubscribed {
  std::vector<double> ranks;                        // ascending
  std::map<DType, std::vector<double>> efficiency;  // per GEMM dtype, per rank count
  // 1 without measurements (fp32's for a dtype without its own); log-linear between the
  // measured rank counts, flat beyond.
  double at(DType t, double r) const;
};

struct ClusterSpec {
  std::string name, source;  // source: the file it came from
  bool cpu = false;          // kind = "cpu": ranks on a host share its cores
  int nodes = 1;
  int devices_per_node = 1;        // GPUs, or a CPU host's cores
  double device_memory_bytes = 0;  // per GPU; a CPU host's memory (its ranks share it)
  double peak_flops_fp32 = 0, peak_flops_bf16 = 0, peak_flops_fp16 = 0;  // per device (core)
  double gemm_efficiency = 1, attention_efficiency = 1;
  double memory_bandwidth_bytes = 0;  // per device; a CPU host's (its ranks share it)
  double memory_efficiency = 1;
  // Arrays beyond the caches (a vocabulary's logits, optimizer state), optional: the whole
  // device or host streaming, and one core alone (a CPU host); the memory's when not given.
  double stream_bandwidth_bytes = 0, stream_bandwidth_one_bytes = 0;
  LinkSpec intra, inter;  // within a host, across hosts
  // A CPU host's shared-memory bus bandwidth per collective (all-reduce, reduce-scatter,
  // all-gather) summed over its ranks, optional: the ranks communicating at once share it
  // (calibration fits it; 0 = not measured).
  std::array<double, 3> host_collective_bytes{};
  GemmSweep sweep;        // optional [gemm_sweep] (a calibrated CPU host)
  Oversubscribed oversubscribed;

  int world() const { return nodes * devices_per_node; }
  double peak_flops(DType t) const;  // per device, dense
};

// Parses a cluster file; unknown keys, missing keys and values out of range are InputErrors
// naming the file and key. [gemm_sweep] is optional: sizes = [...] and, per dtype,
// <dtype>_one_thread and <dtype>_all_threads of the same length, and optionally
// <dtype>_one_per_core and wide_columns with <dtype>_wide_one_thread and _wide_one_per_core.
ClusterSpec parse_cluster(const std::string& toml_text, const std::string& source);
ClusterSpec load_cluster(const std::string& path);

}  // namespace loom
