// `loom plan` end to end (issue 16): the layout search prints its table and writes the JSON
// best first, a --layout filter fixes fields, calibration writes a cluster file the planner
// reads, published runs are priced beside the planner's choice, and bad input is refused
// with exit code 2.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "../shell_util.h"

namespace {
namespace fs = std::filesystem;

using loom::test::contains;
using loom::test::Result;

Result loom_cmd(const std::string& args) {
  return loom::test::shell(std::string(LOOM_BINARY) + " " + args);
}

const std::string kSource = LOOM_SOURCE_DIR;

TEST(PlanCli, RanksLayoutsBestFirstAndWritesTheJson) {
  loom::test::ScratchDir dir;
  const fs::path json = dir.path() / "plan.json";
  Result r = loom_cmd("plan --config " + kSource + "/configs/gpt2-124m.toml --cluster " +
                      kSource + "/configs/clusters/dgx-h100.toml --world 8 --global-batch 32 "
                      "--top 5 --json " + json.string());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "layouts in")) << r.output;
  EXPECT_TRUE(contains(r.output, "why: the winner is")) << r.output;
  const nlohmann::json j = nlohmann::json::parse(loom::test::slurp(json));
  ASSERT_EQ(j["layouts"].size(), 5u);
  EXPECT_GT(j["priced"].get<int>(), 100);
  for (size_t i = 0; i < 5; ++i) {
    const nlohmann::json& l = j["layouts"][i];
    EXPECT_EQ(l["dp"].get<int>() * l["tp"].get<int>() * l["pp"].get<int>(), 8);
    EXPECT_EQ(l["micro_batch"].get<int>() * l["microbatches"].get<int>() * l["dp"].get<int>(), 32);
    for (const char* key : {"zero", "schedule", "virtual_stages", "precision", "recompute",
                            "sequence_parallel", "mfu", "memory_per_rank_bytes", "step_time_s"})
      EXPECT_TRUE(l.contains(key)) << key;
    if (i > 0) {
      EXPECT_LE(l["tokens_per_s"], j["layouts"][i - 1]["tokens_per_s"]);
    }
  }
  // A filter fixes what it names; the rest is chosen.
  r = loom_cmd("plan --config " + kSource + "/configs/gpt2-124m.toml --cluster " + kSource +
               "/configs/clusters/dgx-h100.toml --world 8 --global-batch 32 --top 3 --layout "
               "pp=2,tp=2,fp32 --json " + json.string());
  ASSERT_EQ(r.code, 0) << r.output;
  const nlohmann::json fixed = nlohmann::json::parse(loom::test::slurp(json));
  for (const nlohmann::json& l : fixed["layouts"]) {
    EXPECT_EQ(l["pp"], 2);
    EXPECT_EQ(l["tp"], 2);
    EXPECT_EQ(l["precision"], "fp32");
  }
}

TEST(PlanCli, BadInputIsRefusedWithExitCode2) {
  loom::test::ScratchDir dir;
  const std::string cfg = " --config " + kSource + "/configs/gpt2-124m.toml";
  const std::string h100 = " --cluster " + kSource + "/configs/clusters/dgx-h100.toml";
  Result r = loom_cmd("plan" + cfg + " --cluster " + (dir.path() / "none.toml").string());
  EXPECT_EQ(r.code, 2) << r.output;
  r = loom_cmd("plan" + cfg + h100 + " --layout dq=2");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "unknown field 'dq'")) << r.output;
  std::ofstream(dir.path() / "bad.toml") << "[cluster]\nname = \"x\"\n";
  r = loom_cmd("plan" + cfg + " --cluster " + (dir.path() / "bad.toml").string());
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "is missing")) << r.output;
  // A world no layout fits: each too big, the closest named with its overshoot.
  r = loom_cmd("plan --config " + kSource + "/configs/gpt-1t.toml" + h100 + " --world 8");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "do not fit in memory; the closest")) << r.output;
  r = loom_cmd("plan" + cfg);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "--cluster")) << r.output;
}

TEST(PlanCli, CalibrationWritesAClusterFileThePlannerReads) {
  loom::test::ScratchDir dir;
  // What loom bench kernels and loom bench collectives write, with round numbers.
  nlohmann::json gemm = nlohmann::json::array();
  for (const char* name : {"qkv.fwd", "fc.fwd", "fcproj.fwd"})
    gemm.push_back({{"name", name}, {"M", 1024}, {"N", 768}, {"K", 768}, {"backend", "onednn"},
                    {"median_s", 1e-3}, {"gflops", 80.0}});
  const double ln = 8.0 * 1024 * 768 / 20e9;  // 20 GB/s
  for (auto [name, s] : {std::pair{"attention_forward", 0.002}, {"attention_backward", 0.004},
                         {"layernorm_forward", ln}, {"residual_forward", 1.5 * ln},
                         {"gelu_forward", 4 * ln}})
    gemm.push_back({{"name", name}, {"M", 0}, {"N", 0}, {"K", 0}, {"backend", "-"},
                    {"median_s", s}, {"gflops", 0.0}});
  nlohmann::json sweep = nlohmann::json::array();
  for (int threads : {1, 2})
    for (int s : {64, 512})
      for (const char* dtype : {"fp32", "bf16"}) {
        const double gflops = (dtype[0] == 'b' ? 2 : 1) * threads * (s == 64 ? 30.0 : 40.0);
        sweep.push_back({{"dtype", dtype}, {"threads", threads}, {"M", 1024}, {"N", 1024},
                         {"K", s}, {"gflops", gflops}});
        sweep.push_back({{"dtype", dtype}, {"threads", threads}, {"M", 1024}, {"N", s},
                         {"K", 1024}, {"gflops", gflops}});
      }
  // One process per core at once, and the wide linear layers alone and one per core.
  for (int s : {64, 512}) {
    sweep.push_back({{"dtype", "fp32"}, {"threads", 2}, {"M", 1024}, {"N", 1024}, {"K", s},
                     {"gflops", s == 64 ? 58.0 : 78.0}, {"one_per_core", true}});
    for (bool per_core : {false, true})
      sweep.push_back({{"dtype", "fp32"}, {"threads", per_core ? 2 : 1}, {"M", 256},
                       {"N", 50304}, {"K", s}, {"gflops", (per_core ? 2 : 1) * (s == 64 ? 20.0 : 35.0)},
                       {"one_per_core", per_core}, {"wide", true}});
  }
  const nlohmann::json kernels = {
      {"threads", 2}, {"cpu", "test"}, {"gemm", gemm}, {"gemm_sweep", sweep},
      {"gemm_dtypes", {{{"dtype", "fp32"}, {"gflops", 100.0}}, {{"dtype", "bf16"}, {"gflops", 200.0}}}},
      {"read_bandwidth", {{{"threads", 1}, {"gbs", 12.5}}, {{"threads", 2}, {"gbs", 20.0}}}}};
  std::ofstream(dir.path() / "kernels.json") << kernels.dump();
  nlohmann::json rows = nlohmann::json::array();
  for (double bytes : {4096.0, 1048576.0, 67108864.0})
    rows.push_back({{"op", "allreduce"}, {"impl", "loom"}, {"bytes", bytes},
                    {"time_us", 2 * 10 + bytes / 4e3}});  // α 10 us, 4 GB/s
  std::ofstream(dir.path() / "coll2.json") << nlohmann::json{{"ranks", 2}, {"rows", rows}}.dump();
  // Four ranks on the two cores: busy rounds of 2.5 units (fp32) and 4 (bf16) where their
  // share of the cores is 2: efficiencies 0.8 and 0.5.
  const nlohmann::json busy = {{"fp32", {{"work_s", 0.05}, {"round_s", 0.125}}},
                               {"bf16", {{"work_s", 0.05}, {"round_s", 0.2}}}};
  nlohmann::json rows4 = nlohmann::json::array();
  for (double bytes : {4096.0, 1048576.0, 67108864.0})
    rows4.push_back({{"op", "allreduce"}, {"impl", "loom"}, {"bytes", bytes},
                     {"time_us", 6 * 10 + 1.5 * bytes / 4e3}});  // the same link at 4 ranks
  std::ofstream(dir.path() / "coll4.json")
      << nlohmann::json{{"ranks", 4}, {"rows", rows4}, {"busy", busy}}.dump();
  const fs::path local = dir.path() / "local.toml";
  Result r = loom_cmd("plan --calibrate --kernels " + (dir.path() / "kernels.json").string() +
                      " --collectives " + (dir.path() / "coll2.json").string() + " " +
                      (dir.path() / "coll4.json").string() + " --out " + local.string());
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string text = loom::test::slurp(local);
  EXPECT_TRUE(contains(text, "[oversubscribed]")) << text;
  EXPECT_TRUE(contains(text, "ranks = [4]\nbf16_efficiency = [0.500]\nfp32_efficiency = [0.800]\n"))
      << text;
  EXPECT_TRUE(contains(text, "kind = \"cpu\"")) << text;
  EXPECT_TRUE(contains(text, "peak_tflops_fp32 = 0.05 ")) << text;  // 100 GFLOP/s / 2 cores
  EXPECT_TRUE(contains(text, "peak_tflops_bf16 = 0.1 ")) << text;
  EXPECT_TRUE(contains(text, "gemm_efficiency = 0.8000")) << text;
  EXPECT_TRUE(contains(text, "intra_bandwidth_gbs = 4\n")) << text;
  EXPECT_TRUE(contains(text, "intra_alpha_us = 10\n")) << text;
  // The host's all-reduce bandwidth over all its ranks (8 GB/s at 2 ranks, 16 at 4: in
  // between); the files hold no reduce-scatter or all-gather, so those are left out.
  const size_t host = text.find("host_allreduce_gbs = ");
  ASSERT_NE(host, std::string::npos) << text;
  const double host_gbs = std::stod(text.substr(host + 21));
  EXPECT_GT(host_gbs, 8);
  EXPECT_LT(host_gbs, 16);
  EXPECT_FALSE(contains(text, "host_reduce_scatter_gbs")) << text;
  EXPECT_FALSE(contains(text, "host_allgather_gbs")) << text;
  EXPECT_TRUE(contains(text, "sizes = [64, 512]\n")) << text;
  EXPECT_TRUE(contains(text, "fp32_one_thread = [30.0, 40.0]\n")) << text;
  EXPECT_TRUE(contains(text, "bf16_all_threads = [120.0, 160.0]\n")) << text;
  EXPECT_TRUE(contains(text, "fp32_one_per_core = [58.0, 78.0]\n")) << text;
  EXPECT_TRUE(contains(text, "wide_columns = 50304 ")) << text;
  EXPECT_TRUE(contains(text, "fp32_wide_one_thread = [20.0, 35.0]\n")) << text;
  EXPECT_TRUE(contains(text, "fp32_wide_one_per_core = [40.0, 70.0]\n")) << text;
  EXPECT_TRUE(contains(text, "stream_bandwidth_gbs = 20 ")) << text;
  EXPECT_TRUE(contains(text, "stream_bandwidth_one_gbs = 12.5 ")) << text;
  r = loom_cmd("plan --config " + kSource + "/configs/gpt2-124m.toml --cluster " +
               local.string() + " --world 4 --global-batch 8");
  ASSERT_EQ(r.code, 0) << r.output;
  // A kernels file without what calibration needs is named.
  std::ofstream(dir.path() / "empty.json") << "{\"threads\": 2}";
  r = loom_cmd("plan --calibrate --kernels " + (dir.path() / "empty.json").string() +
               " --collectives " + (dir.path() / "coll2.json").string() + " --out " +
               local.string());
  EXPECT_EQ(r.code, 2) << r.output;
}

TEST(PlanCli, PublishedRunsArePricedBesideThePlannersChoice) {
  loom::test::ScratchDir dir;
  fs::copy_file(kSource + "/configs/clusters/dgx-a100.toml", dir.path() / "dgx-a100.toml");
  // Two of the file's runs (the whole file takes half a minute, and minutes sanitized).
  const std::string all = loom::test::slurp(kSource + "/configs/clusters/published-runs.toml");
  std::string two;
  for (const char* name : {"\"megatron-39.1b\"", "\"megatron-76.1b\""}) {
    const size_t at = all.rfind("[[run]]", all.find(name));
    two += all.substr(at, all.find("[[run]]", at + 1) - at) + "\n";
  }
  std::ofstream(dir.path() / "runs.toml") << two;
  const fs::path json = dir.path() / "published.json";
  const Result r = loom_cmd("plan --published " + (dir.path() / "runs.toml").string() +
                            " --json " + json.string());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "megatron-76.1b")) << r.output;
  EXPECT_TRUE(contains(r.output, "Median absolute error")) << r.output;
  const nlohmann::json j = nlohmann::json::parse(loom::test::slurp(json));
  ASSERT_EQ(j["runs"].size(), 2u);
  for (const nlohmann::json& run : j["runs"]) {
    EXPECT_GT(run["predicted_tflops_per_gpu"].get<double>(), 0);
    const nlohmann::json& theirs = run["theirs"];
    EXPECT_EQ(theirs["tp"], 8);  // their layout, as published
    // The planner's first choice is the best that fits: at least theirs, where theirs fits.
    if (theirs["memory_per_rank_bytes"] <= theirs["memory_limit_bytes"]) {
      EXPECT_GE(run["planner"]["tokens_per_s"].get<double>(),
                theirs["tokens_per_s"].get<double>());
    }
  }
}

}  // namespace

namespace {

// A CPU host of 2 cores with round numbers, as calibration writes one.
void write_cpu_cluster(const fs::path& path) {
  std::ofstream(path) << "[cluster]\nname = \"cpu\"\nkind = \"cpu\"\nnodes = 1\n"
                         "devices_per_node = 2\ndevice_memory_gib = 8\n[compute]\n"
                         "peak_tflops_fp32 = 0.08\npeak_tflops_bf16 = 0.16\n"
                         "peak_tflops_fp16 = 0.08\ngemm_efficiency = 0.8\n"
                         "attention_efficiency = 0.5\nmemory_bandwidth_gbs = 30\n"
                         "memory_efficiency = 1\n[network]\nintra_bandwidth_gbs = 2\n"
                         "intra_alpha_us = 20\nintra_efficiency = 1\ninter_bandwidth_gbs = 2\n"
                         "inter_alpha_us = 20\ninter_efficiency = 1\n";
}

TEST(PlanCli, VerifyTrainsTheSampleAndSetsMeasuredBesidePredicted) {
  loom::test::ScratchDir dir;
  write_cpu_cluster(dir.path() / "cpu.toml");
  std::ofstream(dir.path() / "tiny.toml")
      << "[model]\nn_layer = 2\nn_head = 2\nn_embd = 32\nblock_size = 32\nvocab_size = 512\n"
         "[train]\nmicro_batch = 1\ngrad_accum = 2\nseq_len = 32\n[data]\ntrain = \"x\"\n";
  const fs::path json = dir.path() / "verify.json";
  const Result r = loom_cmd("plan --verify --config " + (dir.path() / "tiny.toml").string() +
                            " --cluster " + (dir.path() / "cpu.toml").string() +
                            " --ranks 2 --steps 2 --top 2 --sample 3 --repeats 2 --dir " +
                            (dir.path() / "runs").string() + " --json " + json.string());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "Spearman")) << r.output;
  // Twice round the sample; the fastest of the two counts.
  EXPECT_TRUE(contains(r.output, "(repeat 2 of 2)")) << r.output;
  EXPECT_TRUE(contains(r.output, "2 times (tokens/s: median of steps 2..2, the fastest repeat)"))
      << r.output;
  const nlohmann::json j = nlohmann::json::parse(loom::test::slurp(json));
  EXPECT_EQ(j["repeats"], 2);
  ASSERT_EQ(j["layouts"].size(), 3u);
  EXPECT_EQ(j["layouts"][0]["predicted_rank"], 1);
  EXPECT_EQ(j["layouts"][1]["predicted_rank"], 2);
  EXPECT_EQ(j["layouts"][2]["predicted_rank"], j["feasible"]);  // the sample's far end
  for (const nlohmann::json& l : j["layouts"]) {
    EXPECT_GT(l["measured_tokens_per_s"].get<double>(), 0);
    EXPECT_GT(l["measured_peak_bytes"].get<double>(), 0);
  }
  EXPECT_TRUE(fs::exists(dir.path() / "verify.png"));
}

}  // namespace
