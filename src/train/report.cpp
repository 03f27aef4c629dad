#include "train/report.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>
#include <utility>

#include "core/check.h"
#include "core/file_io.h"

extern char** environ;

namespace loom {
namespace fs = std::filesystem;

namespace {

// -1 unless `name` is "rank_<r>.json".
int rank_of_trace_file(const std::string& name) {
  const std::string prefix = "rank_", suffix = ".json";
  if (name.size() <= prefix.size() + suffix.size() || !name.starts_with(prefix) ||
      !name.ends_with(suffix))
    return -1;
  const char* first = name.data() + prefix.size();
  const char* last = name.data() + name.size() - suffix.size();
  int r = -1;
  const auto [end, ec] = std::from_chars(first, last, r);
  return ec == std::errc() && end == last ? r : -1;
}

using Interval = std::pair<double, double>;  // [start, end), microseconds

// Length of the union of `iv` clipped to [lo, hi].
double covered(std::vector<Interval> iv, double lo, double hi) {
  std::sort(iv.begin(), iv.end());
  double total = 0, cur_lo = 0, cur_hi = 0;
  bool open = false;
  for (auto [a, b] : iv) {
    a = std::max(a, lo);
    b = std::min(b, hi);
    if (b <= a) continue;
    if (open && a <= cur_hi) {
      cur_hi = std::max(cur_hi, b);
      continue;
    }
    if (open) total += cur_hi - cur_lo;
    cur_lo = a, cur_hi = b, open = true;
  }
  if (open) total += cur_hi - cur_lo;
  return total;
}

struct RankEvents {
  std::vector<Interval> compute;
  Interval all{std::numeric_limits<double>::max(), std::numeric_limits<double>::lowest()};
  Interval steps = all;
};

void widen(Interval& span, const Interval& e) {
  span.first = std::min(span.first, e.first);
  span.second = std::max(span.second, e.second);
}

// Train loss, validation loss and throughput by step. A resumed run appends steps it
// already logged; the later line wins.
struct Metrics {
  std::map<int64_t, double> loss, val_loss, tokens_per_s;
};

void take(std::map<int64_t, double>& series, int64_t step, const nlohmann::json& rec,
          const char* key) {
  if (rec.contains(key) && rec[key].is_number()) series[step] = rec[key].get<double>();
}

Metrics read_metrics(const fs::path& file) {
  std::istringstream in(read_file_text(file));
  Metrics m;
  std::string line;
  for (int lineno = 1; std::getline(in, line); ++lineno) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const nlohmann::json rec = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    LOOM_REQUIRE(rec.is_object() && rec.contains("step") && rec["step"].is_number_integer(),
                 "report: {}:{} is not a metrics record with an integer \"step\": {}",
                 file.string(), lineno, line.substr(0, 200));
    const int64_t step = rec["step"].get<int64_t>();
    take(m.loss, step, rec, "loss");
    take(m.val_loss, step, rec, "val_loss");
    take(m.tokens_per_s, step, rec, "tokens_per_s");
  }
  LOOM_REQUIRE(!m.loss.empty() && !m.tokens_per_s.empty(),
               "report: {} has no step with \"loss\" and \"tokens_per_s\"", file.string());
  return m;
}

// A fresh directory under the system temp dir, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "loom_report_XXXXXX").string();
    LOOM_REQUIRE(::mkdtemp(tmpl.data()) != nullptr, "report: cannot create a directory in {}: {}",
                 fs::temp_directory_path().string(), std::strerror(errno));
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

void write_series(const fs::path& file, const std::map<int64_t, double>& series) {
  std::string text;
  for (const auto& [step, v] : series) text += fmt::format("{} {:.9g}\n", step, v);
  write_file_atomic(file, std::string_view(text));
}

// A 960x540 PNG terminal: pngcairo where gnuplot has it.
constexpr const char* kPngTerminal =
      "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {\n"
      "  set terminal pngcairo size 960,540\n"
      "} else {\n"
      "  set terminal png size 960,540\n"
      "}\n";

// Draws loss.png and tokens_per_s.png in `dir` from the .dat files beside the script.
// The files are named relative to `dir` (gnuplot runs there), so no path needs quoting.
std::string gnuplot_script(bool has_val) {
  std::string s =
      std::string(kPngTerminal) +
      "set grid\nset key top right\nset xlabel 'step'\n"
      "set output 'loss.png'\nset ylabel 'loss'\nset title 'loss'\n"
      "plot 'loss.dat' using 1:2 with lines linewidth 2 title 'train'";
  if (has_val) s += ", 'val_loss.dat' using 1:2 with linespoints linewidth 2 title 'val'";
  s += "\nset output 'tokens_per_s.png'\nset ylabel 'tokens/s'\nset title 'throughput'\n"
       "plot 'tokens_per_s.dat' using 1:2 with lines linewidth 2 title 'tokens/s'\n"
       "unset output\n";
  return s;
}

void copy_into(const fs::path& from, const fs::path& to) {
  const std::vector<uint8_t> bytes = read_file_bytes(from);
  write_file_atomic(to, std::span<const uint8_t>(bytes));
}

// loss.png and tokens_per_s.png in run_dir; returns the number of distinct steps.
int plot_metrics(const fs::path& run_dir, const fs::path& metrics_file) {
  const Metrics m = read_metrics(metrics_file);
  const TempDir tmp;
  write_series(tmp.path() / "loss.dat", m.loss);
  write_series(tmp.path() / "val_loss.dat", m.val_loss);
  write_series(tmp.path() / "tokens_per_s.dat", m.tokens_per_s);
  write_file_atomic(tmp.path() / "plot.gp", std::string_view(gnuplot_script(!m.val_loss.empty())));
  run_gnuplot(tmp.path(), "report", "loss.png and tokens_per_s.png");
  // Drawn in the temp dir, then moved in atomically: a failed plot leaves the old ones.
  copy_into(tmp.path() / "loss.png", run_dir / "loss.png");
  copy_into(tmp.path() / "tokens_per_s.png", run_dir / "tokens_per_s.png");
  return int(m.loss.size());
}

}  // namespace

void run_gnuplot(const fs::path& dir, const std::string& who, const std::string& draws) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  const std::string log = (dir / "gnuplot.log").string();
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  posix_spawn_file_actions_addchdir_np(&fa, dir.c_str());
  char arg0[] = "gnuplot", arg1[] = "plot.gp";
  char* argv[] = {arg0, arg1, nullptr};
  pid_t pid = -1;
  const int rc = posix_spawnp(&pid, "gnuplot", &fa, nullptr, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  LOOM_REQUIRE(rc != ENOENT, "{}: gnuplot is not installed (on Debian: apt-get install "
               "gnuplot-nox); it draws {}", who, draws);
  LOOM_REQUIRE(rc == 0, "{}: cannot run gnuplot: {}", who, std::strerror(rc));
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  LOOM_REQUIRE(!(WIFEXITED(status) && WEXITSTATUS(status) == 127),
               "{}: gnuplot is not installed (on Debian: apt-get install gnuplot-nox)", who);
  LOOM_REQUIRE(WIFEXITED(status) && WEXITSTATUS(status) == 0, "{}: gnuplot failed:\n{}", who,
               fs::exists(log) ? read_file_text(log) : std::string("(no output)"));
}


std::vector<fs::path> find_rank_traces(const fs::path& trace_dir) {
  std::vector<std::pair<int, fs::path>> found;
  if (!fs::is_directory(trace_dir)) return {};
  for (const fs::directory_entry& e : fs::directory_iterator(trace_dir)) {
    const int r = rank_of_trace_file(e.path().filename().string());
    if (r >= 0 && e.is_regular_file()) found.emplace_back(r, e.path());
  }
  std::sort(found.begin(), found.end());
  std::vector<fs::path> files;
  for (auto& [r, path] : found) files.push_back(std::move(path));
  return files;
}

nlohmann::json merge_traces(const std::vector<fs::path>& files) {
  nlohmann::json events = nlohmann::json::array();
  for (const fs::path& file : files) {
    nlohmann::json j = nlohmann::json::parse(read_file_text(file), nullptr, false);
    LOOM_REQUIRE(j.is_object() && j.contains("traceEvents") && j["traceEvents"].is_array(),
                 "report: {} is not a Chrome trace (want {{\"traceEvents\": [...]}})",
                 file.string());
    for (nlohmann::json& e : j["traceEvents"]) events.push_back(std::move(e));
  }
  return {{"traceEvents", std::move(events)}, {"displayTimeUnit", "ms"}};
}

std::vector<RankIdle> trace_idle(const nlohmann::json& merged) {
  std::map<int, RankEvents> ranks;
  for (const nlohmann::json& e : merged.at("traceEvents")) {
    if (e.value("ph", "") != "X" || !e.contains("pid") || !e["pid"].is_number_integer() ||
        !e.contains("ts") || !e["ts"].is_number())
      continue;
    const double ts = e["ts"].get<double>();
    const Interval iv{ts, ts + e.value("dur", 0.0)};
    RankEvents& r = ranks[e["pid"].get<int>()];
    widen(r.all, iv);
    if (e.value("cat", "") == "step") widen(r.steps, iv);
    if (e.value("tid", -1) == 0) r.compute.push_back(iv);
  }
  std::vector<RankIdle> out;
  for (const auto& [rank, r] : ranks) {
    const Interval span = r.steps.first <= r.steps.second ? r.steps : r.all;
    RankIdle ri{.rank = rank};
    ri.span_s = (span.second - span.first) * 1e-6;
    ri.compute_s = covered(r.compute, span.first, span.second) * 1e-6;
    ri.idle_fraction = ri.span_s > 0 ? std::clamp(1.0 - ri.compute_s / ri.span_s, 0.0, 1.0) : 0.0;
    out.push_back(ri);
  }
  return out;
}

std::string idle_table(const std::vector<RankIdle>& idle) {
  std::string s = fmt::format("{:>6} {:>12} {:>12} {:>8}\n", "rank", "compute(s)", "span(s)", "idle");
  for (const RankIdle& r : idle)
    s += fmt::format("{:>6} {:>12.6f} {:>12.6f} {:>8.4f}\n", r.rank, r.compute_s, r.span_s,
                     r.idle_fraction);
  return s;
}

namespace {

// gnuplot's single-quoted string: a quote is written twice.
std::string gp_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("''") : std::string(1, c);
  return out + "'";
}

// The title of a run in the comparison: its directory's name.
std::string run_title(const fs::path& run_dir) {
  std::string title = run_dir.filename().string();
  if (title.empty()) title = run_dir.parent_path().filename().string();
  return title;
}

}  // namespace

int compare_runs(const std::vector<fs::path>& run_dirs, const fs::path& out_png) {
  LOOM_REQUIRE(run_dirs.size() >= 2, "report: comparing needs at least two runs");
  const TempDir tmp;
  std::string plot;
  int steps = 0;
  for (size_t i = 0; i < run_dirs.size(); ++i) {
    const fs::path file = run_dirs[i] / "metrics.jsonl";
    LOOM_REQUIRE(fs::is_regular_file(file), "report: no {} (is this a run directory written by "
                 "loom train?)", file.string());
    const Metrics m = read_metrics(file);
    steps = std::max(steps, int(m.loss.size()));
    const std::string title = run_title(run_dirs[i]);
    write_series(tmp.path() / fmt::format("loss{}.dat", i), m.loss);
    plot += fmt::format("{}'loss{}.dat' using 1:2 with lines linewidth 2 linecolor {} title {}",
                        plot.empty() ? "" : ", ", i, i + 1, gp_quote(title + " train"));
    if (m.val_loss.empty()) continue;
    write_series(tmp.path() / fmt::format("val{}.dat", i), m.val_loss);
    plot += fmt::format(", 'val{}.dat' using 1:2 with linespoints linewidth 2 linecolor {} "
                        "dashtype 2 title {}", i, i + 1, gp_quote(title + " val"));
  }
  const std::string script =
      std::string(kPngTerminal) +
      "set grid\nset key top right\nset xlabel 'step'\nset ylabel 'loss'\n"
      "set title 'loss by run'\nset output 'compare.png'\nplot " + plot + "\nunset output\n";
  write_file_atomic(tmp.path() / "plot.gp", std::string_view(script));
  run_gnuplot(tmp.path(), "report", "loss.png and tokens_per_s.png");
  copy_into(tmp.path() / "compare.png", out_png);
  return steps;
}

ReportResult make_report(const fs::path& run_dir) {
  LOOM_REQUIRE(fs::is_directory(run_dir), "report: run directory '{}' does not exist",
               run_dir.string());
  const fs::path metrics_file = run_dir / "metrics.jsonl";
  LOOM_REQUIRE(fs::is_regular_file(metrics_file), "report: no {} (is this a run directory "
               "written by loom train?)", metrics_file.string());
  ReportResult res;
  const std::vector<fs::path> traces = find_rank_traces(run_dir / "trace");
  res.trace_files = int(traces.size());
  if (!traces.empty()) {
    const nlohmann::json merged = merge_traces(traces);
    res.idle = trace_idle(merged);
    res.trace_json = run_dir / "trace.json";
    write_file_atomic(res.trace_json, std::string_view(merged.dump()));
  }
  res.metric_steps = plot_metrics(run_dir, metrics_file);
  res.loss_png = run_dir / "loss.png";
  res.tokens_png = run_dir / "tokens_per_s.png";
  return res;
}

}  // namespace loom
