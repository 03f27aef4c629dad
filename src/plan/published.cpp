#include "plan/published.h"

#include <fmt/format.h>
#include <toml++/toml.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>

#include "core/check.h"
#include "core/file_io.h"
#include "plan/plan_report.h"
#include "plan/search.h"
#include "train/toml_text.h"

namespace loom {

namespace {

template <typename T>
T get(const toml::table& t, const std::string& key, const std::string& where) {
  const auto v = t[key].value<T>();
  LOOM_REQUIRE(v.has_value(), "{}: '{}' is missing or of the wrong type", where, key);
  return *v;
}

PublishedRun parse_run(const toml::table& t, const std::string& where) {
  PublishedRun r;
  r.name = get<std::string>(t, "name", where);
  const std::string at = fmt::format("{} ({})", where, r.name);
  r.source = get<std::string>(t, "source", at);
  r.cluster = get<std::string>(t, "cluster", at);
  r.world = get<int>(t, "world", at);
  r.tflops_per_gpu = get<double>(t, "tflops_per_gpu", at);
  RunConfig& c = r.config;
  c.model.n_layer = get<int>(t, "n_layer", at);
  c.model.n_head = get<int>(t, "n_head", at);
  c.model.n_embd = get<int>(t, "n_embd", at);
  c.model.vocab_size = get<int>(t, "vocab_size", at);
  c.train.seq_len = c.model.block_size = get<int>(t, "seq_len", at);
  c.data.train = std::string("(priced, never run)");
  Layout l;
  l.dp = get<int>(t, "dp", at);
  l.tp = get<int>(t, "tp", at);
  l.pp = get<int>(t, "pp", at);
  l.micro_batch = get<int>(t, "micro_batch", at);
  const int64_t global = get<int64_t>(t, "global_batch", at);
  LOOM_REQUIRE(l.dp * l.tp * l.pp == r.world && global % (int64_t(l.dp) * l.micro_batch) == 0,
               "{}: dp={} x tp={} x pp={} must be world={} and micro_batch={} x dp must divide "
               "global_batch={}", at, l.dp, l.tp, l.pp, r.world, l.micro_batch, global);
  l.microbatches = int(global / l.dp / l.micro_batch);
  l.precision = get<std::string>(t, "precision", at);
  l.recompute = get<std::string>(t, "recompute", at);
  l.schedule = get<std::string>(t, "schedule", at);
  l.virtual_stages = get<int>(t, "virtual_stages", at);
  r.config = with_layout(c, l);
  try {
    r.config.validate();
  } catch (const InputError& e) {
    throw InputError(fmt::format("{}: {}", at, e.what()));
  }
  return r;
}

}  // namespace

std::vector<PublishedRun> load_published_runs(const std::string& path) {
  const toml::table root = parse_toml(read_file_text(path), path);
  const toml::array* runs = root["run"].as_array();
  LOOM_REQUIRE(runs && !runs->empty(), "{}: no [[run]] tables", path);
  std::vector<PublishedRun> out;
  for (size_t i = 0; i < runs->size(); ++i) {
    const toml::table* t = (*runs)[i].as_table();
    LOOM_REQUIRE(t, "{}: run {} is not a table", path, i + 1);
    out.push_back(parse_run(*t, fmt::format("{}: run {}", path, i + 1)));
  }
  return out;
}

double megatron_flops_per_step(const RunConfig& cfg) {
  const double B = double(cfg.train.micro_batch) * cfg.train.grad_accum * cfg.parallel.dp;
  const double s = cfg.train.seq_len, l = cfg.model.n_layer, h = cfg.model.n_embd;
  const double V = cfg.model.vocab_size;
  return 96 * B * s * l * h * h * (1 + s / (6 * h) + V / (16 * l * h));
}

std::vector<PublishedComparison> compare_published(const std::vector<PublishedRun>& runs,
                                                   const std::string& cluster_dir) {
  std::map<std::string, ClusterSpec> clusters;
  std::vector<PublishedComparison> out;
  for (const PublishedRun& run : runs) {
    if (!clusters.count(run.cluster))
      clusters.emplace(run.cluster, load_cluster((std::filesystem::path(cluster_dir) /
                                                  (run.cluster + ".toml")).string()));
    const CostModel model(clusters.at(run.cluster), run.world);
    PublishedComparison c;
    c.run = run;
    c.theirs = model.price(run.config, true);
    c.predicted_tflops = megatron_flops_per_step(run.config) / c.theirs.step_s / run.world / 1e12;
    const SearchResult r =
        search_layouts(run.config, model, run.config.train.global_batch, {}, 16);
    LOOM_REQUIRE(!r.ranked.empty(), "{}: no layout of {} GPUs fits", run.name, run.world);
    c.best = r.ranked.front();
    c.priced = r.priced;
    c.search_seconds = r.seconds;
    out.push_back(std::move(c));
  }
  return out;
}

std::string format_published(const std::vector<PublishedComparison>& rows) {
  std::string out = fmt::format(
      "{:<16} {:>6} {:>9} {:>9} {:>7}  {:<58} {:>7}  {}\n", "run", "GPUs", "published",
      "predicted", "error", "their layout (predicted memory/GPU)", "planner", "planner's layout");
  std::vector<double> errors;
  for (const PublishedComparison& c : rows) {
    const double err = c.predicted_tflops / c.run.tflops_per_gpu - 1;
    errors.push_back(std::abs(err));
    out += fmt::format("{:<16} {:>6} {:>9.0f} {:>9.0f} {:>+6.1f}%  {:<58} {:>6.2f}x  {}{}\n",
                       c.run.name, c.run.world, c.run.tflops_per_gpu, c.predicted_tflops,
                       100 * err,
                       fmt::format("{} ({}{})", to_string(c.theirs.layout),
                                   format_bytes(c.theirs.memory.total()),
                                   c.theirs.fits ? "" : ", does not fit"),
                       c.best.tokens_per_s / c.theirs.tokens_per_s, to_string(c.best.layout),
                       fmt::format(" [{} priced, {:.2f} s]", c.priced, c.search_seconds));
  }
  std::sort(errors.begin(), errors.end());
  const size_t n = errors.size();
  const double median = n % 2 ? errors[n / 2] : (errors[n / 2 - 1] + errors[n / 2]) / 2;
  out += fmt::format("TFLOP/s per GPU by Megatron's eq. 3 (recomputation counted); predicted "
                     "from the cluster files' sourced peaks and efficiencies. Median absolute "
                     "error {:.1f}% over {} runs. 'planner': predicted tokens/s of its layout "
                     "over theirs.\n",
                     100 * median, n);
  return out;
}

nlohmann::json published_json(const std::vector<PublishedComparison>& rows) {
  nlohmann::json out = nlohmann::json::array();
  for (const PublishedComparison& c : rows)
    out.push_back({{"name", c.run.name},
                   {"world", c.run.world},
                   {"published_tflops_per_gpu", c.run.tflops_per_gpu},
                   {"predicted_tflops_per_gpu", c.predicted_tflops},
                   {"theirs", to_json(c.theirs)},
                   {"planner", to_json(c.best)},
                   {"priced", c.priced},
                   {"search_seconds", c.search_seconds}});
  return out;
}

}  // namespace loom
