#include "plan/calibrate.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "core/check.h"
#include "core/timer.h"

namespace loom {

namespace {

struct AlphaBeta {
  double alpha_us, us_per_byte;
  int rows;
};

// Weighted least squares of t = steps * α + x * b, x the bus bytes of one rank (or of all
// the file's ranks, `host`), over the rows of collective `only` (every one when empty).
AlphaBeta fit_alpha_beta(const std::vector<nlohmann::json>& files, bool host,
                         const std::string& only = "") {
  // Normal equations of t = x1 a + x2 b (a = α in us, b = 1/β in us per byte).
  double s11 = 0, s12 = 0, s22 = 0, s1t = 0, s2t = 0;
  int rows = 0;
  for (const nlohmann::json& f : files) {
    const double g = f.at("ranks").get<double>();
    LOOM_REQUIRE(g >= 2, "a collectives file with {} ranks says nothing of the network", g);
    for (const nlohmann::json& r : f.at("rows")) {
      const std::string op = r.at("op");
      if (r.at("impl") != "loom" || (!only.empty() && op != only)) continue;
      const double bytes = r.at("bytes").get<double>(), t = r.at("time_us").get<double>();
      const bool ar = op == "allreduce";
      const double x1 = (ar ? 2 : 1) * (g - 1),
                   x2 = (ar ? 2 : 1) * (g - 1) / g * bytes * (host ? g : 1);
      // Relative error: weight each row by 1/t^2, so small messages fit α and large ones β.
      const double w = 1 / (t * t);
      s11 += w * x1 * x1, s12 += w * x1 * x2, s22 += w * x2 * x2;
      s1t += w * x1 * t, s2t += w * x2 * t;
      ++rows;
    }
  }
  if (rows < 2) return {0, 0, rows};
  const double det = s11 * s22 - s12 * s12;
  double a = (s1t * s22 - s2t * s12) / det, b = (s11 * s2t - s12 * s1t) / det;
  if (a < 0) a = 0, b = s2t / s22;  // latency below resolution: fit the bandwidth alone
  LOOM_REQUIRE(b > 0, "the collectives files give no positive bandwidth");
  return {a, b, rows};
}

}  // namespace

LinkFit fit_collectives(const std::vector<nlohmann::json>& files) {
  const AlphaBeta rank = fit_alpha_beta(files, false);
  LOOM_REQUIRE(rank.rows >= 2, "the collectives files hold {} rows of loom's Comm; need >= 2",
               rank.rows);
  LinkFit fit;
  fit.rows = rank.rows;
  fit.alpha_us = rank.alpha_us;
  fit.bandwidth_gbs = 1e6 / rank.us_per_byte / 1e9;
  const char* const ops[] = {"allreduce", "reduce_scatter", "allgather"};
  for (size_t k = 0; k < fit.host_gbs.size(); ++k) {  // 0 where the files lack the collective
    const AlphaBeta host = fit_alpha_beta(files, true, ops[k]);
    fit.host_gbs[k] = host.rows >= 2 ? 1e6 / host.us_per_byte / 1e9 : 0;
  }
  return fit;
}

namespace {

// The bench's shapes (kernels/bench_kernels.h): GPT-2 124M at B=4, T=256.
constexpr double kN = 1024, kT = 256, kC = 768;

struct KernelRates {
  std::map<std::string, double> peak;  // GFLOP/s per dtype, whole host
  double gemm_eff = 0, attn_eff = 0, mem_gbs = 0;
  int threads = 0;
};

KernelRates kernel_rates(const nlohmann::json& k) {
  KernelRates r;
  r.threads = k.at("threads").get<int>();
  for (const nlohmann::json& row : k.at("gemm_dtypes"))
    r.peak[row.at("dtype")] = std::max(r.peak[row.at("dtype")], row.at("gflops").get<double>());
  LOOM_REQUIRE(r.peak.count("fp32"), "the kernels file has no fp32 GEMM peak");
  std::vector<double> shapes;
  std::map<std::string, double> sec;
  for (const nlohmann::json& row : k.at("gemm")) {
    const std::string name = row.at("name");
    sec[name] = row.at("median_s").get<double>();
    if (row.at("M").get<int>() > 0 && row.at("backend") == "onednn" &&
        name.rfind("matmul_", 0) != 0)
      shapes.push_back(row.at("gflops").get<double>());
  }
  LOOM_REQUIRE(!shapes.empty(), "the kernels file has no oneDNN GEMM of the model's shapes");
  r.gemm_eff = std::min(1.0, median(shapes) / r.peak["fp32"]);
  const double attn = 3.5 * 2 * kN * kT * kC;  // forward + backward FLOPs, as the model counts
  r.attn_eff = std::min(1.0, attn / (sec.at("attention_forward") + sec.at("attention_backward")) /
                                 1e9 / r.peak["fp32"]);
  // Bytes each streaming kernel reads and writes, per second.
  r.mem_gbs = median({8 * kN * kC / sec.at("layernorm_forward"),
                      12 * kN * kC / sec.at("residual_forward"),
                      32 * kN * kC / sec.at("gelu_forward")}) / 1e9;
  return r;
}

// [gemm_sweep] from bench kernels' sweep rows: per dtype, the mean GFLOP/s of the two shapes
// of each smallest dimension, at one thread and at all of them ("" without a sweep).
std::string sweep_section(const nlohmann::json& k) {
  if (!k.contains("gemm_sweep")) return "";
  const int cores = k.at("threads").get<int>();
  std::map<int, int> sizes;  // size -> rows seen
  std::map<std::string, std::map<int, std::vector<double>>> rates;  // "fp32_one_thread" -> ...
  int wide_columns = 0;
  for (const nlohmann::json& row : k.at("gemm_sweep")) {
    const int M = row.at("M"), N = row.at("N"), K = row.at("K"), threads = row.at("threads");
    const std::string dtype = row.at("dtype");
    const bool per_core = row.value("one_per_core", false);
    if (row.value("wide", false)) {  // keyed by its inputs K: the layer's width is its outputs
      wide_columns = N;
      rates[dtype + (per_core ? "_wide_one_per_core" : "_wide_one_thread")][K].push_back(
          row.at("gflops"));
      continue;
    }
    const int size = std::min({M, N, K});
    sizes[size] += 1;
    if (per_core) {
      rates[dtype + "_one_per_core"][size].push_back(row.at("gflops"));
      continue;
    }
    for (const char* which : {"_one_thread", "_all_threads"}) {
      if ((threads == 1) != (std::string(which) == "_one_thread") && cores > 1) continue;
      rates[dtype + which][size].push_back(row.at("gflops"));
    }
  }
  std::string out = "\n[gemm_sweep]  # GFLOP/s by the GEMM's smallest dimension: bench kernels' "
                    "sweep\nsizes = [";
  for (const auto& [size, n] : sizes) out += fmt::format("{}{}", size, size == sizes.rbegin()->first ? "]\n" : ", ");
  if (wide_columns > 0)
    out += fmt::format("wide_columns = {}  # the wide rows: a linear layer of this many outputs, "
                       "forward and backward, by its inputs\n", wide_columns);
  for (const auto& [key, by_size] : rates) {
    LOOM_REQUIRE(by_size.size() == sizes.size(), "the kernels file's sweep lacks sizes for {}",
                 key);
    out += key + " = [";
    for (const auto& [size, v] : by_size)
      out += fmt::format("{:.1f}{}", median(v), size == by_size.rbegin()->first ? "]\n" : ", ");
  }
  return out;
}

// stream_bandwidth_gbs (every core) and _one_gbs (one) from bench kernels' read bandwidth.
std::string stream_lines(const nlohmann::json& k) {
  if (!k.contains("read_bandwidth")) return "";
  double one = 0, all = 0;
  for (const nlohmann::json& row : k.at("read_bandwidth")) {
    const double gbs = row.at("gbs").get<double>();
    if (row.at("threads").get<int>() == 1) one = gbs;
    all = std::max(all, gbs);
  }
  LOOM_REQUIRE(one > 0, "the kernels file's read_bandwidth has no one-thread row");
  return fmt::format("stream_bandwidth_gbs = {:.4g}      # read bandwidth beyond the caches, "
                     "every core\nstream_bandwidth_one_gbs = {:.4g}  # and one core alone\n",
                     all, one);
}

// [oversubscribed] from bench collectives' busy ranks at rank counts beyond the cores, per
// GEMM dtype: the units' share of the cores (work x ranks / cores) over the measured round.
std::string oversubscribed_section(const std::vector<nlohmann::json>& collectives, int cores) {
  std::map<std::string, std::map<int, double>> eff;  // dtype -> ranks -> efficiency
  for (const nlohmann::json& f : collectives) {
    const int ranks = f.at("ranks").get<int>();
    if (ranks <= cores || !f.contains("busy")) continue;
    for (const auto& [dtype, b] : f.at("busy").items()) {
      const double work = b.at("work_s"), round = b.at("round_s");
      LOOM_REQUIRE(work > 0 && round > 0, "the {}-rank collectives file's busy {} times are not "
                   "positive", ranks, dtype);
      eff[dtype][ranks] = std::min(1.0, work * ranks / cores / round);
    }
  }
  if (!eff.count("fp32")) return "";
  std::string out = "\n[oversubscribed]  # more ranks than cores: bench collectives' busy ranks, "
                    "the cores' share of their work / the measured round\nranks = [";
  for (const auto& [r, e] : eff.at("fp32"))
    out += fmt::format("{}{}", r, r == eff.at("fp32").rbegin()->first ? "]\n" : ", ");
  for (const auto& [dtype, by_ranks] : eff) {
    LOOM_REQUIRE(by_ranks.size() == eff.at("fp32").size(), "the collectives files' busy ranks "
                 "lack {} at some rank count", dtype);
    out += dtype + "_efficiency = [";
    for (const auto& [r, e] : by_ranks)
      out += fmt::format("{:.3f}{}", e, r == by_ranks.rbegin()->first ? "]\n" : ", ");
  }
  return out;
}

// The host's bus bandwidth per collective, where the files measured it.
std::string host_lines(const LinkFit& link) {
  const char* const keys[] = {"host_allreduce_gbs", "host_reduce_scatter_gbs",
                              "host_allgather_gbs"};
  std::string out = "# the host's, summed over its ranks communicating at once, per collective\n";
  for (size_t k = 0; k < link.host_gbs.size(); ++k)
    if (link.host_gbs[k] > 0) out += fmt::format("{} = {:.4g}\n", keys[k], link.host_gbs[k]);
  return out;
}

}  // namespace

std::string calibrated_cluster_toml(const nlohmann::json& kernels,
                                    const std::vector<nlohmann::json>& collectives,
                                    double host_memory_bytes, const std::string& sources) {
  KernelRates k = kernel_rates(kernels);
  const LinkFit link = fit_collectives(collectives);
  const double per_core = 1.0 / k.threads / 1000;  // host GFLOP/s -> TFLOP/s per core
  const double fp16 = k.peak.count("fp16") ? k.peak["fp16"] : k.peak["fp32"];
  const double bf16 = k.peak.count("bf16") ? k.peak["bf16"] : k.peak["fp32"];
  return fmt::format(
      "# This machine, calibrated by `loom plan --calibrate` from {}.\n"
      "# A CPU host: its cores are the devices, shared by the ranks placed on it.\n"
      "[cluster]\nname = \"local\"\nkind = \"cpu\"\nnodes = 1\n"
      "devices_per_node = {}        # cores: the threads bench kernels ran with\n"
      "device_memory_gib = {:.3f}   # the host's available memory at calibration\n\n"
      "[compute]\n"
      "peak_tflops_fp32 = {:.6g}    # per core: bench kernels' best fp32 GEMM / cores\n"
      "peak_tflops_bf16 = {:.6g}    # per core: its best bf16 GEMM (fp32's if none)\n"
      "peak_tflops_fp16 = {:.6g}    # per core: its best fp16 GEMM (fp32's if none)\n"
      "gemm_efficiency = {:.4f}     # median GFLOP/s of GPT-2 124M's GEMMs / fp32 peak\n"
      "attention_efficiency = {:.4f}  # attention fwd+bwd at the model's FLOP count / peak\n"
      "memory_bandwidth_gbs = {:.4g}  # median of layernorm, residual and GELU bytes/s\n"
      "memory_efficiency = 1.0\n{}\n"
      "[network]                    # shared memory, fitted to {} rows of loom's Comm\n"
      "intra_bandwidth_gbs = {:.4g}\nintra_alpha_us = {:.4g}\nintra_efficiency = 1.0\n"
      "inter_bandwidth_gbs = {:.4g}  # one host: the same fit\n"
      "inter_alpha_us = {:.4g}\ninter_efficiency = 1.0\n"
      "{}{}",
      sources, k.threads, host_memory_bytes / (1024.0 * 1024 * 1024),
      k.peak["fp32"] * per_core, bf16 * per_core, fp16 * per_core, k.gemm_eff, k.attn_eff,
      k.mem_gbs, stream_lines(kernels), link.rows, link.bandwidth_gbs, link.alpha_us,
      link.bandwidth_gbs, link.alpha_us, host_lines(link),
      sweep_section(kernels) + oversubscribed_section(collectives, k.threads));
}

}  // namespace loom
