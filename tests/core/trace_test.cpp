#include "core/trace.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <map>
#include <string>

#include "core/file_io.h"
#include "scratch.h"

namespace loom {
namespace {
namespace fs = std::filesystem;

using test::scratch_dir;

nlohmann::json write_and_parse(const Trace& t, const fs::path& file, const std::string& pname) {
  t.write(file, pname);
  return nlohmann::json::parse(read_file_text(file));
}

TEST(Trace, WritesCompleteEventsWithArgsAndLaneMetadata) {
  const fs::path dir = scratch_dir("trace_write");
  Trace t(3, Trace::Clock::now());
  t.add({"F mb3 c0", "compute", 12.5, 3.25, kLaneCompute, -1, 7, 3});
  t.add({"ALLREDUCE dp[0..3]", "collective", 20, 1.5, kLaneCollective, 4096, 7, -1});
  t.add({"odd \"name\"\\\n\t\x01 µs", "p2p", 0, 0, kLaneP2p, 0, -1, -1});
  const nlohmann::json j =
      write_and_parse(t, dir / "sub" / "rank_3.json", "rank 3 (pp 1, dp 0, tp 1)");

  EXPECT_EQ(j.at("displayTimeUnit"), "ms");
  std::vector<nlohmann::json> xs;
  std::map<int, std::string> lanes;
  std::string process;
  for (const nlohmann::json& e : j.at("traceEvents")) {
    EXPECT_EQ(e.at("pid"), 3);
    if (e.at("ph") == "X") xs.push_back(e);
    else if (e.at("name") == "thread_name") lanes[e.at("tid")] = e.at("args").at("name");
    else if (e.at("name") == "process_name") process = e.at("args").at("name");
  }
  EXPECT_EQ(process, "rank 3 (pp 1, dp 0, tp 1)");
  EXPECT_EQ(lanes, (std::map<int, std::string>{
                       {0, "compute"}, {1, "p2p"}, {2, "collectives"}, {3, "steps"}}));
  ASSERT_EQ(xs.size(), 3u);
  EXPECT_EQ(xs[0].at("name"), "F mb3 c0");
  EXPECT_EQ(xs[0].at("cat"), "compute");
  EXPECT_DOUBLE_EQ(xs[0].at("ts").get<double>(), 12.5);
  EXPECT_DOUBLE_EQ(xs[0].at("dur").get<double>(), 3.25);
  EXPECT_EQ(xs[0].at("tid"), kLaneCompute);
  EXPECT_EQ(xs[0].at("args"), (nlohmann::json{{"step", 7}, {"mb", 3}}));
  EXPECT_EQ(xs[1].at("tid"), kLaneCollective);
  EXPECT_EQ(xs[1].at("args"), (nlohmann::json{{"bytes", 4096}, {"step", 7}}));
  EXPECT_EQ(xs[2].at("name"), "odd \"name\"\\\n\t\x01 µs");
  EXPECT_EQ(xs[2].at("args"), (nlohmann::json{{"bytes", 0}}));
  // No temporary file is left beside the trace.
  EXPECT_EQ(std::distance(fs::directory_iterator(dir / "sub"), fs::directory_iterator()), 1);
  fs::remove_all(dir);
}

TEST(Trace, EventWithoutArgsHasNoArgsObject) {
  const fs::path dir = scratch_dir("trace_noargs");
  Trace t(0, Trace::Clock::now());
  t.add({"step 1", "step", 0, 100, kLaneStep});
  const nlohmann::json j = write_and_parse(t, dir / "rank_0.json", "rank 0");
  int xs = 0;
  for (const nlohmann::json& e : j.at("traceEvents")) {
    if (e.at("ph") != "X") continue;
    ++xs;
    EXPECT_FALSE(e.contains("args"));
    EXPECT_EQ(e.at("tid"), kLaneStep);
  }
  EXPECT_EQ(xs, 1);
  fs::remove_all(dir);
}

TEST(Trace, ScopeRecordsOneCompleteEvent) {
  Trace t(1, Trace::Clock::now());
  { TraceScope s(&t, "B mb0", "compute", kLaneCompute, -1, 2, 0); }
  const std::vector<TraceEvent> evs = t.events();
  ASSERT_EQ(evs.size(), 1u);
  EXPECT_EQ(evs[0].name, "B mb0");
  EXPECT_EQ(evs[0].cat, "compute");
  EXPECT_GE(evs[0].ts_us, 0.0);
  EXPECT_GE(evs[0].dur_us, 0.0);
  EXPECT_EQ(evs[0].step, 2);
  EXPECT_EQ(evs[0].microbatch, 0);
  t.clear();
  EXPECT_TRUE(t.events().empty());
}

TEST(Trace, DisabledTraceRecordsNothing) {
  Trace t;
  EXPECT_FALSE(t.enabled());
  t.add({"x", "compute", 0, 1, kLaneCompute});
  { TraceScope s(&t, "y", "compute", kLaneCompute); }
  { TraceScope s(nullptr, "z", "compute", kLaneCompute); }
  EXPECT_TRUE(t.events().empty());

  const fs::path dir = scratch_dir("trace_disabled");
  const nlohmann::json j = write_and_parse(t, dir / "rank_0.json", "rank 0");
  for (const nlohmann::json& e : j.at("traceEvents")) EXPECT_EQ(e.at("ph"), "M");
  fs::remove_all(dir);
}

}  // namespace
}  // namespace loom
