#include "train/report.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <fstream>
#include <optional>
#include <set>

#include "core/check.h"
#include "core/file_io.h"
#include "core/trace.h"
#include "../shell_util.h"
#include "test_util.h"

namespace loom {
namespace {
namespace fs = std::filesystem;

bool is_png(const fs::path& file) {
  if (!fs::is_regular_file(file)) return false;
  const std::vector<uint8_t> b = read_file_bytes(file);
  const uint8_t magic[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  return b.size() > 8 && std::equal(magic, magic + 8, b.begin());
}

void write_metrics(const fs::path& dir) {
  std::ofstream out(dir / "metrics.jsonl");
  for (int s = 1; s <= 5; ++s)
    out << fmt::format(R"({{"step":{},"loss":{},"lr":0.001,"tokens_per_s":{}}})", s, 5.0 - 0.5 * s,
                       1000 + 10 * s)
        << "\n";
  // A resumed run logs step 5 again (the later line wins), with a validation loss.
  out << R"({"step":5,"loss":2.4,"tokens_per_s":1100,"val_loss":2.6})" << "\n";
}

// Rank 0: one step [0, 100) us; compute [0,30) u [20,50) u [90,120) clipped -> 60 us; a
// collective after the step is outside the span. Idle 0.4.
// Rank 1: no step events, so the span is all events [0, 110); compute 30 + 10 = 40 us.
void write_rank_traces(const fs::path& trace_dir) {
  Trace r0(0, Trace::Clock::now());
  r0.add({"step 1", "step", 0, 100, kLaneStep, -1, 1});
  r0.add({"F mb0", "compute", 0, 30, kLaneCompute, -1, 1, 0});
  r0.add({"F mb1", "compute", 20, 30, kLaneCompute, -1, 1, 1});
  r0.add({"B mb1", "compute", 90, 30, kLaneCompute, -1, 1, 1});
  r0.add({"ALLREDUCE dp[0..1]", "collective", 150, 50, kLaneCollective, 4096, 1});
  r0.write(trace_dir / "rank_0.json", "rank 0 (pp 0, dp 0, tp 0)");
  Trace r1(1, Trace::Clock::now());
  r1.add({"RECV pp[0..1]", "p2p", 0, 5, kLaneP2p, 1024, 1, 0});
  r1.add({"F mb0", "compute", 10, 30, kLaneCompute, -1, 1, 0});
  r1.add({"B mb0", "compute", 60, 10, kLaneCompute, -1, 1, 0});
  r1.add({"ALLREDUCE dp[0..1]", "collective", 80, 30, kLaneCollective, 4096, 1});
  r1.write(trace_dir / "rank_1.json", "rank 1 (pp 1, dp 0, tp 0)");
}

TEST(Report, ComparesRunsInOnePlot) {
  const fs::path a = test::scratch_dir("report_cmp") / "fp32", b = a.parent_path() / "bf16";
  fs::create_directories(a);
  fs::create_directories(b);
  write_metrics(a);
  write_metrics(b);
  const fs::path out = a.parent_path() / "both.png";
  EXPECT_EQ(compare_runs({a, b}, out), 5);
  EXPECT_TRUE(is_png(out));
  EXPECT_THROW(compare_runs({a}, out), InputError);
  EXPECT_THROW(compare_runs({a, a.parent_path() / "missing"}, out), InputError);
}

TEST(Report, MergesTracesMeasuresIdleAndPlots) {
  const fs::path dir = test::scratch_dir("report_full");
  write_metrics(dir);
  write_rank_traces(dir / "trace");
  std::ofstream(dir / "trace" / "notes.json") << "not a rank trace";  // ignored

  const ReportResult r = make_report(dir);
  EXPECT_EQ(r.trace_files, 2);
  EXPECT_EQ(r.metric_steps, 5);
  const nlohmann::json merged = nlohmann::json::parse(read_file_text(dir / "trace.json"));
  std::set<int> pids;
  int xs = 0;
  for (const nlohmann::json& e : merged.at("traceEvents")) {
    pids.insert(e.at("pid").get<int>());
    xs += e.at("ph") == "X";
  }
  EXPECT_EQ(pids, (std::set<int>{0, 1}));
  EXPECT_EQ(xs, 9);
  EXPECT_EQ(merged.at("displayTimeUnit"), "ms");

  ASSERT_EQ(r.idle.size(), 2u);
  EXPECT_EQ(r.idle[0].rank, 0);
  EXPECT_NEAR(r.idle[0].compute_s, 60e-6, 1e-12);
  EXPECT_NEAR(r.idle[0].span_s, 100e-6, 1e-12);
  EXPECT_NEAR(r.idle[0].idle_fraction, 0.4, 1e-9);
  EXPECT_EQ(r.idle[1].rank, 1);
  EXPECT_NEAR(r.idle[1].compute_s, 40e-6, 1e-12);
  EXPECT_NEAR(r.idle[1].span_s, 110e-6, 1e-12);
  EXPECT_NEAR(r.idle[1].idle_fraction, 70.0 / 110.0, 1e-9);
  EXPECT_EQ(trace_idle(merged).size(), 2u);
  EXPECT_NE(idle_table(r.idle).find("0.4000"), std::string::npos);

  EXPECT_EQ(r.loss_png, dir / "loss.png");
  EXPECT_TRUE(is_png(dir / "loss.png"));
  EXPECT_TRUE(is_png(dir / "tokens_per_s.png"));
  fs::remove_all(dir);
}

TEST(Report, RankTracesAreOrderedByRankNumber) {
  const fs::path dir = test::scratch_dir("report_order");
  for (int r : {10, 2, 1}) std::ofstream(dir / fmt::format("rank_{}.json", r)) << "{}";
  std::ofstream(dir / "rank_x.json") << "{}";
  const std::vector<fs::path> files = find_rank_traces(dir);
  ASSERT_EQ(files.size(), 3u);
  EXPECT_EQ(files[0].filename(), "rank_1.json");
  EXPECT_EQ(files[1].filename(), "rank_2.json");
  EXPECT_EQ(files[2].filename(), "rank_10.json");
  EXPECT_THROW(merge_traces(files), InputError);  // "{}" has no traceEvents
  EXPECT_TRUE(find_rank_traces(dir / "absent").empty());
  fs::remove_all(dir);
}

TEST(Report, WithoutTracesStillPlots) {
  const fs::path dir = test::scratch_dir("report_notrace");
  write_metrics(dir);
  const ReportResult r = make_report(dir);
  EXPECT_EQ(r.trace_files, 0);
  EXPECT_TRUE(r.idle.empty());
  EXPECT_FALSE(fs::exists(dir / "trace.json"));
  EXPECT_TRUE(is_png(dir / "loss.png"));
  EXPECT_TRUE(is_png(dir / "tokens_per_s.png"));
  fs::remove_all(dir);
}

TEST(Report, MissingRunDirOrMetricsIsAnInputError) {
  const fs::path dir = test::scratch_dir("report_missing");
  EXPECT_THROW(make_report(dir / "absent"), InputError);
  EXPECT_THROW(make_report(dir), InputError);  // no metrics.jsonl
  std::ofstream(dir / "metrics.jsonl") << "{\"step\":1,\"loss\":2.0\n";  // truncated line
  EXPECT_THROW(make_report(dir), InputError);
  fs::remove_all(dir);
}

TEST(Report, MissingGnuplotNamesTheDebianPackage) {
  const fs::path dir = test::scratch_dir("report_nognuplot");
  write_metrics(dir);
  const char* old = std::getenv("PATH");
  const std::optional<std::string> saved = old ? std::optional<std::string>(old) : std::nullopt;
  ::setenv("PATH", (dir / "no_such_bin").c_str(), 1);
  std::string msg;
  try {
    make_report(dir);
  } catch (const InputError& e) {
    msg = e.what();
  }
  if (saved) ::setenv("PATH", saved->c_str(), 1);
  else ::unsetenv("PATH");
  EXPECT_NE(msg.find("gnuplot-nox"), std::string::npos) << msg;
  fs::remove_all(dir);
}

TEST(Report, CliExitCodes) {
  const fs::path dir = test::scratch_dir("report_cli");
  const std::string quiet = " >/dev/null 2>&1";
  const auto loom = [&](const fs::path& run) {
    return test::shell(fmt::format("'{}' report '{}'{}", LOOM_BINARY, run.string(), quiet)).code;
  };
  EXPECT_EQ(loom(dir / "absent"), 2);
  EXPECT_EQ(loom(dir), 2);  // no metrics.jsonl
  write_metrics(dir);
  write_rank_traces(dir / "trace");
  EXPECT_EQ(loom(dir), 0);
  EXPECT_TRUE(fs::exists(dir / "trace.json"));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace loom
