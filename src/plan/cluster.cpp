#include "plan/cluster.h"

#include <fmt/format.h>
#include <toml++/toml.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <variant>
#include <vector>

#include "core/check.h"
#include "core/file_io.h"
#include "train/toml_text.h"

namespace loom {

double ClusterSpec::peak_flops(DType t) const {
  switch (t) {
    case DType::kBF16: return peak_flops_bf16;
    case DType::kF16: return peak_flops_fp16;
    default: return peak_flops_fp32;
  }
}

double GemmSweep::at(const std::vector<double>& sizes, const std::vector<double>& v, double s) {
  if (s <= sizes.front()) return v.front();
  if (s >= sizes.back()) return v.back();
  size_t i = 1;
  while (sizes[i] < s) ++i;
  const double f = std::log(s / sizes[i - 1]) / std::log(sizes[i] / sizes[i - 1]);
  return v[i - 1] + f * (v[i] - v[i - 1]);
}

double Oversubscribed::at(DType t, double r) const {
  if (ranks.empty()) return 1.0;
  const auto e = efficiency.find(t);
  return GemmSweep::at(ranks, e != efficiency.end() ? e->second : efficiency.at(DType::kF32), r);
}

namespace {

std::vector<double> numbers(const toml::node* node, const std::string& where) {
  const toml::array* a = node ? node->as_array() : nullptr;
  LOOM_REQUIRE(a != nullptr && !a->empty(), "{}: must be a non-empty array of numbers", where);
  std::vector<double> out;
  for (const toml::node& x : *a) {
    const auto v = x.value<double>();
    LOOM_REQUIRE(v && std::isfinite(*v) && *v > 0, "{}: every entry must be a number > 0",
                 where);
    out.push_back(*v);
  }
  return out;
}

GemmSweep parse_sweep(const toml::table& t, const std::string& source) {
  GemmSweep g;
  const std::string at = source + ": [gemm_sweep] ";
  g.sizes = numbers(t.get("sizes"), at + "sizes");
  for (size_t i = 1; i < g.sizes.size(); ++i)
    LOOM_REQUIRE(g.sizes[i] > g.sizes[i - 1], "{}sizes must ascend", at);
  std::map<std::string, std::map<DType, std::vector<double>>*> tables = {
      {"_one_thread", &g.one}, {"_all_threads", &g.all}, {"_one_per_core", &g.per_core},
      {"_wide_one_thread", &g.wide_one}, {"_wide_one_per_core", &g.wide_per_core}};
  for (const auto& [key, node] : t) {
    const std::string k(key.str());
    if (k == "sizes") continue;
    if (k == "wide_columns") {
      const std::optional<int64_t> w = node.value<int64_t>();
      LOOM_REQUIRE(w && *w > 0, "{}wide_columns must be a positive integer", at);
      g.wide_columns = double(*w);
      continue;
    }
    const size_t us = k.find('_');
    const std::string dtype = k.substr(0, us), which = us == std::string::npos ? "" : k.substr(us);
    LOOM_REQUIRE((dtype == "fp32" || dtype == "bf16" || dtype == "fp16") && tables.count(which),
                 "{}{}: unknown key (wide_columns, or <fp32|bf16|fp16> with _one_thread, "
                 "_all_threads, _one_per_core, _wide_one_thread, _wide_one_per_core)", at, k);
    std::vector<double> v = numbers(&node, at + k);
    LOOM_REQUIRE(v.size() == g.sizes.size(), "{}{} has {} entries for {} sizes", at, k, v.size(),
                 g.sizes.size());
    (*tables.at(which))[parse_dtype(dtype)] = std::move(v);
  }
  LOOM_REQUIRE(g.one.count(DType::kF32) && g.all.count(DType::kF32),
               "{}needs fp32_one_thread and fp32_all_threads", at);
  LOOM_REQUIRE(g.wide_one.empty() == (g.wide_columns == 0),
               "{}the wide rows and wide_columns come together", at);
  return g;
}

Oversubscribed parse_oversubscribed(const toml::table& t, const std::string& source) {
  const std::string at = source + ": [oversubscribed] ";
  Oversubscribed o;
  o.ranks = numbers(t.get("ranks"), at + "ranks");
  for (size_t i = 0; i < o.ranks.size(); ++i)
    LOOM_REQUIRE(o.ranks[i] >= 2 && (i == 0 || o.ranks[i] > o.ranks[i - 1]),
                 "{}ranks must ascend from 2", at);
  for (const auto& [key, node] : t) {
    const std::string k(key.str());
    if (k == "ranks") continue;
    const std::string dtype = k.substr(0, k.find('_'));
    LOOM_REQUIRE((dtype == "fp32" || dtype == "bf16" || dtype == "fp16") &&
                     k == dtype + "_efficiency",
                 "{}{}: unknown key (ranks, <fp32|bf16|fp16>_efficiency)", at, k);
    std::vector<double> v = numbers(&node, at + k);
    LOOM_REQUIRE(v.size() == o.ranks.size(), "{}{} has {} entries for {} rank counts", at, k,
                 v.size(), o.ranks.size());
    for (double e : v) LOOM_REQUIRE(e > 0 && e <= 1, "{}{}: {} is outside (0, 1]", at, k, e);
    o.efficiency[parse_dtype(dtype)] = std::move(v);
  }
  LOOM_REQUIRE(o.efficiency.count(DType::kF32), "{}needs fp32_efficiency", at);
  return o;
}

// One key of the file: where it goes, the factor from the file's unit, and its range.
struct Key {
  std::variant<double*, int*, std::string*> dst;
  double scale = 1, lo = 0, hi = 1e30;
  bool optional = false;
};

using Section = std::map<std::string, Key>;

std::map<std::string, Section> schema(ClusterSpec& c, std::string& kind) {
  constexpr double GiB = 1024.0 * 1024 * 1024, T = 1e12, G = 1e9;
  return {
      {"cluster",
       {{"name", {&c.name}},
        {"kind", {&kind}},
        {"nodes", {&c.nodes, 1, 1, 1 << 20}},
        {"devices_per_node", {&c.devices_per_node, 1, 1, 1 << 16}},
        {"device_memory_gib", {&c.device_memory_bytes, GiB, 1e-3, 1e9}}}},
      {"compute",
       {{"peak_tflops_fp32", {&c.peak_flops_fp32, T, 1e-6, 1e9}},
        {"peak_tflops_bf16", {&c.peak_flops_bf16, T, 1e-6, 1e9}},
        {"peak_tflops_fp16", {&c.peak_flops_fp16, T, 1e-6, 1e9}},
        {"gemm_efficiency", {&c.gemm_efficiency, 1, 1e-3, 1}},
        {"attention_efficiency", {&c.attention_efficiency, 1, 1e-3, 1}},
        {"memory_bandwidth_gbs", {&c.memory_bandwidth_bytes, G, 1e-3, 1e9}},
        {"memory_efficiency", {&c.memory_efficiency, 1, 1e-3, 1}},
        {"stream_bandwidth_gbs", {&c.stream_bandwidth_bytes, G, 1e-3, 1e9, true}},
        {"stream_bandwidth_one_gbs", {&c.stream_bandwidth_one_bytes, G, 1e-3, 1e9, true}}}},
      {"network",
       {{"intra_bandwidth_gbs", {&c.intra.bandwidth_gbs, 1, 1e-6, 1e9}},
        {"intra_alpha_us", {&c.intra.alpha_us, 1, 0, 1e9}},
        {"intra_efficiency", {&c.intra.efficiency, 1, 1e-3, 1}},
        {"inter_bandwidth_gbs", {&c.inter.bandwidth_gbs, 1, 1e-6, 1e9}},
        {"inter_alpha_us", {&c.inter.alpha_us, 1, 0, 1e9}},
        {"inter_efficiency", {&c.inter.efficiency, 1, 1e-3, 1}},
        {"host_allreduce_gbs", {&c.host_collective_bytes[0], G, 1e-6, 1e9, true}},
        {"host_reduce_scatter_gbs", {&c.host_collective_bytes[1], G, 1e-6, 1e9, true}},
        {"host_allgather_gbs", {&c.host_collective_bytes[2], G, 1e-6, 1e9, true}}}},
  };
}

void assign(const Key& k, const toml::node& node, const std::string& where) {
  if (auto* s = std::get_if<std::string*>(&k.dst)) {
    const auto v = node.value<std::string>();
    LOOM_REQUIRE(v.has_value(), "{}: must be a string", where);
    **s = *v;
    return;
  }
  const auto v = node.value<double>();
  LOOM_REQUIRE(v.has_value() && std::isfinite(*v), "{}: must be a number", where);
  LOOM_REQUIRE(*v >= k.lo && *v <= k.hi, "{} = {} is outside [{}, {}]", where, *v, k.lo, k.hi);
  if (auto* i = std::get_if<int*>(&k.dst)) {
    LOOM_REQUIRE(*v == std::floor(*v), "{} = {} must be a whole number", where, *v);
    **i = int(*v);
  } else {
    *std::get<double*>(k.dst) = *v * k.scale;
  }
}

}  // namespace

ClusterSpec parse_cluster(const std::string& toml_text, const std::string& source) {
  const toml::table root = parse_toml(toml_text, source);
  ClusterSpec c;
  c.source = source;
  std::string kind;
  const auto keys = schema(c, kind);
  for (const auto& [name, node] : root) {
    if (name.str() == "gemm_sweep" && node.is_table()) {
      c.sweep = parse_sweep(*node.as_table(), source);
      continue;
    }
    if (name.str() == "oversubscribed" && node.is_table()) {
      c.oversubscribed = parse_oversubscribed(*node.as_table(), source);
      continue;
    }
    LOOM_REQUIRE(keys.count(std::string(name.str())), "{}: unknown section [{}] (sections: "
                 "cluster, compute, network, gemm_sweep, oversubscribed)", source, name.str());
  }
  for (const auto& [section, fields] : keys) {
    const toml::table* t = root[section].as_table();
    LOOM_REQUIRE(t != nullptr, "{}: the section [{}] is missing", source, section);
    for (const auto& [key, node] : *t)
      LOOM_REQUIRE(fields.count(std::string(key.str())), "{}: unknown key [{}] {}", source,
                   section, key.str());
    for (const auto& [key, k] : fields) {
      const toml::node* node = t->get(key);
      if (node == nullptr && k.optional) continue;
      LOOM_REQUIRE(node != nullptr, "{}: [{}] {} is missing", source, section, key);
      assign(k, *node, fmt::format("{}: [{}] {}", source, section, key));
    }
  }
  LOOM_REQUIRE(kind == "gpu" || kind == "cpu", "{}: [cluster] kind = '{}' must be 'gpu' or "
               "'cpu'", source, kind);
  c.cpu = kind == "cpu";
  // Without a measured streaming bandwidth, arrays beyond the caches move at the memory's.
  if (c.stream_bandwidth_bytes == 0) c.stream_bandwidth_bytes = c.memory_bandwidth_bytes;
  if (c.stream_bandwidth_one_bytes == 0) c.stream_bandwidth_one_bytes = c.stream_bandwidth_bytes;
  return c;
}

ClusterSpec load_cluster(const std::string& path) {
  LOOM_REQUIRE(std::filesystem::exists(path), "cluster file {} does not exist: write this "
               "machine's with loom plan --calibrate, or use one of configs/clusters/", path);
  return parse_cluster(read_file_text(path), path);
}

}  // namespace loom
