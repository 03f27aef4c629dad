// The `loom` binary end to end, as a user runs it: prepare -> train -> eval -> generate ->
// export/import, and every kind of bad input -> a clear message and a non-zero exit.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "../shell_util.h"

namespace {
namespace fs = std::filesystem;

using loom::test::contains;
using loom::test::Result;
using loom::test::slurp;

Result run(const std::string& args, const std::string& env = "", int np = 0) {
  const std::string launcher =
      np > 0 ? std::string(LOOM_MPIRUN) + " -np " + std::to_string(np) + " " : std::string();
  return loom::test::shell(env + " " + launcher + LOOM_BINARY " " + args);
}

class Cli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = loom::test::scratch_dir("cli");
    loom::test::write_corpus(dir_ / "corpus.txt");
    std::ofstream cfg(dir_ / "tiny.toml");
    cfg << "[model]\nn_layer = 2\nn_head = 2\nn_embd = 16\nblock_size = 32\n"
        << "[train]\nmicro_batch = 2\nseq_len = 16\nsteps = 4\neval_every = 2\n"
        << "eval_tokens = 64\ncheckpoint_every = 2\n"
        << "[data]\ntrain = \"" << (dir_ / "data/train_000000.bin").string() << "\"\n"
        << "val = \"" << (dir_ / "data/val_000000.bin").string() << "\"\n"
        << "[run]\ndir = \"" << (dir_ / "run").string() << "\"\nthreads = 1\n";
    cfg.close();
    // CTest runs each test in its own process: every test starts from a prepared corpus
    // and a trained tiny run.
    prepared_ = run("prepare --text " + (dir_ / "corpus.txt").string() + " --out " +
                    (dir_ / "data").string() + " --val-fraction 0.1");
    trained_ = run("train --config " + (dir_ / "tiny.toml").string());
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  static fs::path dir_;
  static Result prepared_, trained_;
};
fs::path Cli::dir_;
Result Cli::prepared_, Cli::trained_;

TEST_F(Cli, PrepareTrainEvalGenerateExportImport) {
  Result r = prepared_;
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "MB/s")) << r.output;
  ASSERT_TRUE(fs::exists(dir_ / "data/train_000000.bin"));

  r = trained_;
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "val_loss")) << r.output;
  EXPECT_TRUE(fs::exists(dir_ / "run/metrics.jsonl"));
  EXPECT_TRUE(fs::exists(dir_ / "run/config.toml"));
  EXPECT_TRUE(fs::exists(dir_ / "run/checkpoints/step_00000004/manifest.json"));

  r = run("eval --ckpt " + (dir_ / "run").string() + " --data " +
          (dir_ / "data/val_000000.bin").string() + " --batch 2 --seq-len 16 --tokens 64");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "val_loss ")) << r.output;

  r = run("generate --ckpt " + (dir_ / "run").string() +
          " --prompt 'In the beginning' --max-tokens 8 --seed 3");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "In the beginning")) << r.output;
  const Result again = run("generate --ckpt " + (dir_ / "run").string() +
                           " --prompt 'In the beginning' --max-tokens 8 --seed 3");
  EXPECT_EQ(again.output, r.output) << "same seed, same sample";

  for (const std::string fmt : {"safetensors", "llmc"}) {
    const fs::path a = dir_ / ("a." + fmt), b = dir_ / ("b." + fmt), run2 = dir_ / ("imp_" + fmt);
    r = run("export --ckpt " + (dir_ / "run").string() + " --format " + fmt + " --out " + a.string());
    ASSERT_EQ(r.code, 0) << r.output;
    r = run("import --format " + fmt + " --in " + a.string() + " --out " + run2.string());
    ASSERT_EQ(r.code, 0) << r.output;
    r = run("export --ckpt " + run2.string() + " --format " + fmt + " --out " + b.string());
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_EQ(slurp(a), slurp(b)) << fmt << " export -> import -> export is not exact";
  }
}

TEST_F(Cli, BadInputGivesAClearMessageAndExitCode2) {
  std::ofstream(dir_ / "bad.toml") << "[model\nn_layer = 2\n";
  Result r = run("train --config " + (dir_ / "bad.toml").string());
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "invalid TOML")) << r.output;

  std::ofstream(dir_ / "heads.toml") << "[model]\nn_head = 5\n[data]\ntrain = \"x.bin\"\n";
  r = run("train --config " + (dir_ / "heads.toml").string());
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "not divisible by n_head=5")) << r.output;

  r = run("train --config " + (dir_ / "tiny.toml").string() + " --set data.train=/nonexistent.bin");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "/nonexistent.bin")) << r.output;

  r = run("train --config " + (dir_ / "missing.toml").string());
  EXPECT_EQ(r.code, 2) << r.output;

  std::ofstream(dir_ / "corrupt.bin") << "not a shard at all";
  r = run("eval --ckpt " + (dir_ / "run").string() + " --data " + (dir_ / "corrupt.bin").string());
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "corrupt.bin")) << r.output;

  r = run("prepare --text " + (dir_ / "corpus.txt").string() + " --out " +
              (dir_ / "d2").string(),
          "LOOM_TOKENIZER_DIR=/nonexistent/tok");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "encoder.json")) << r.output;

  r = run("generate --ckpt " + (dir_ / "nothing_here").string() + " --prompt x");
  EXPECT_EQ(r.code, 2) << r.output;

  r = run("frobnicate");
  EXPECT_EQ(r.code, 2) << r.output;
}

TEST_F(Cli, DataParallelUnderMpirunResumesAndRejectsBadLayouts) {
  const std::string cfg = "train --config " + (dir_ / "tiny.toml").string();
  const std::string run2 = " --set run.dir=" + (dir_ / "dp_run").string();
  Result r = run(cfg + run2 + " --dp 2 --zero 1", "OMP_NUM_THREADS=1", 2);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "x dp 2 (zero 1)")) << r.output;
  EXPECT_TRUE(contains(r.output, "memory per rank (zero 1, dp 2)")) << r.output;
  r = run(cfg + run2 + " --dp 2 --zero 1 --resume auto --set train.steps=6", "OMP_NUM_THREADS=1", 2);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "at step 4")) << r.output;

  r = run(cfg + " --dp 3", "OMP_NUM_THREADS=1", 2);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "pp=1 x dp=3 x tp=1 = 3 does not match the world size 2"))
      << r.output;
  r = run(cfg + " --dp 2 --zero 4", "OMP_NUM_THREADS=1", 2);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "zero=4 is not a ZeRO stage")) << r.output;
  r = run(cfg + " --dp 2 --set train.global_batch=5", "OMP_NUM_THREADS=1", 2);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "global_batch=5")) << r.output;
  r = run(cfg + " --dp 2");  // no mpirun
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "mpirun -np 2")) << r.output;
}

// metrics.jsonl's comm_bytes: what each step sent, by group and kind. Nothing for one
// process; a bf16 gradient reduction sends exactly half of fp32's gradient bytes (the rest
// of the dp group's all-reduces, a scalar or two, stays fp32).
TEST_F(Cli, MetricsCountTheBytesEachStepSends) {
  ASSERT_EQ(trained_.code, 0) << trained_.output;
  auto last = [](const fs::path& run) {
    const std::string m = slurp(run / "metrics.jsonl");
    const size_t end = m.find_last_not_of('\n');
    return nlohmann::json::parse(m.substr(m.rfind('\n', end) + 1, end + 1));
  };
  EXPECT_EQ(last(dir_ / "run")["comm_bytes"], nlohmann::json({{"total", 0}}));
  const std::string cfg = "train --config " + (dir_ / "tiny.toml").string() + " --dp 2";
  Result r = run(cfg + " --set run.dir=" + (dir_ / "bytes32").string(), "OMP_NUM_THREADS=1", 2);
  ASSERT_EQ(r.code, 0) << r.output;
  r = run(cfg + " --set run.dir=" + (dir_ / "bytes16").string() +
          " --set parallel.grad_reduce='\"bf16\"'", "OMP_NUM_THREADS=1", 2);
  ASSERT_EQ(r.code, 0) << r.output;
  const nlohmann::json fp32 = last(dir_ / "bytes32")["comm_bytes"];
  const nlohmann::json bf16 = last(dir_ / "bytes16")["comm_bytes"];
  const uint64_t scalars = bf16["dp"]["ALLREDUCE"].get<uint64_t>();
  EXPECT_GT(scalars, 0u) << bf16.dump();
  EXPECT_LT(scalars, 64u) << bf16.dump();
  EXPECT_EQ(fp32["dp"]["ALLREDUCE"].get<uint64_t>(),
            2 * bf16["dp"]["ALLREDUCE(bf16)"].get<uint64_t>() + scalars) << fp32 << bf16;
  // The gradients: 2 bytes a parameter ("0.81M params" of this model, vocabulary padded),
  // sent 2 (g - 1) / g = 1 times at dp 2.
  EXPECT_GT(bf16["dp"]["ALLREDUCE(bf16)"].get<uint64_t>(), 2 * 800000u) << bf16.dump();
  for (const nlohmann::json& j : {fp32, bf16}) {
    uint64_t sum = 0;
    for (const auto& [group, kinds] : j.items())
      if (group != "total")
        for (const auto& [kind, bytes] : kinds.items()) sum += bytes.get<uint64_t>();
    EXPECT_EQ(j["total"].get<uint64_t>(), sum) << j.dump();
  }
}

// `[run] threads = 0` on N ranks of one host: the host's cores divided among them (never
// fewer than 1), said on the start-up line; an explicit number is kept.
TEST_F(Cli, ThreadsZeroDividesTheHostsCoresAmongItsRanks) {
  const std::string cfg = "train --config " + (dir_ / "tiny.toml").string() +
                          " --set run.dir=" + (dir_ / "threads_run").string() +
                          " --set train.steps=1 --set train.checkpoint_every=0";
  const int cores = int(::sysconf(_SC_NPROCESSORS_ONLN));
  Result r = run(cfg + " --dp 4 --set run.threads=0", "env -u OMP_NUM_THREADS", 4);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "threads: " + std::to_string(std::max(1, cores / 4)) +
                                     " per rank (" + std::to_string(cores) +
                                     " cores / 4 ranks on this host)"))
      << r.output;
  r = run(cfg + " --dp 2 --set run.threads=3 --overwrite", "env -u OMP_NUM_THREADS", 2);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "threads: 3 per rank (set explicitly)")) << r.output;
}

// Pipeline + tensor parallel from the command line: traces, the merged report, the
// hybrid checkpoint resumed in another layout, and the layouts that do not combine.
TEST_F(Cli, HybridTracesReportAndRejectsUnsupportedLayouts) {
  const std::string cfg = "train --config " + (dir_ / "tiny.toml").string();
  const fs::path run_dir = dir_ / "pp_run";
  const std::string runp = " --set run.dir=" + run_dir.string();
  Result r = run(cfg + runp + " --pp 2 --microbatches 2 --schedule 1f1b --trace",
                 "OMP_NUM_THREADS=1", 2);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "pipeline partition (1f1b schedule, 2 micro-batches)")) << r.output;
  // The tiny model's 50k-row head outweighs both blocks: measured, it holds 1 block or none.
  EXPECT_TRUE(contains(r.output, "(virtual stage 1): block 1 + head") ||
              contains(r.output, "(virtual stage 1): no blocks + head"))
      << r.output;
  ASSERT_TRUE(fs::exists(run_dir / "trace/rank_00000.json"));
  ASSERT_TRUE(fs::exists(run_dir / "trace/rank_00001.json"));
  r = run("report " + run_dir.string());
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string merged = slurp(run_dir / "trace.json");
  EXPECT_TRUE(contains(merged, "\"F mb1 c0\"")) << "forward events in the merged trace";
  EXPECT_TRUE(contains(merged, "SEND")) << "point-to-point events in the merged trace";
  EXPECT_EQ(slurp(run_dir / "loss.png").substr(0, 4), "\x89PNG");
  EXPECT_EQ(slurp(run_dir / "tokens_per_s.png").substr(0, 4), "\x89PNG");
  // The pipeline's checkpoint resumes tensor-parallel.
  r = run(cfg + runp + " --tp 2 --microbatches 2 --resume auto --set train.steps=6",
          "OMP_NUM_THREADS=1", 2);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "at step 4")) << r.output;

  r = run(cfg + " --pp 2 --zero 3", "OMP_NUM_THREADS=1", 2);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "zero=3 with pp=2 is not supported")) << r.output;
  r = run(cfg + " --tp 2 --set model.n_head=1 --set model.n_embd=16", "OMP_NUM_THREADS=1", 2);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "tp=2 does not divide [model] n_head=1")) << r.output;
  r = run(cfg + " --pp 2 --schedule interleaved --virtual-stages 2 --microbatches 2",
          "OMP_NUM_THREADS=1", 2);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "n_layer=2 cannot fill pp=2 x virtual_stages=2")) << r.output;
  r = run(cfg + " --pp 2 --stage-layers 1,2", "OMP_NUM_THREADS=1", 2);
  EXPECT_EQ(r.code, 2) << r.output;
}

TEST_F(Cli, CorruptCheckpointIsRejected) {
  const fs::path run_dir = dir_ / "run";
  ASSERT_TRUE(fs::exists(run_dir / "checkpoints/step_00000004/model-00000.safetensors"))
      << trained_.output;
  const fs::path broken = dir_ / "broken";
  fs::remove_all(broken);
  fs::copy(run_dir / "checkpoints/step_00000004", broken, fs::copy_options::recursive);
  fs::resize_file(broken / "model-00000.safetensors", fs::file_size(broken / "model-00000.safetensors") - 7);
  Result r = run("generate --ckpt " + broken.string() + " --prompt x --max-tokens 2");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "model-00000.safetensors")) << r.output;
}

}  // namespace

namespace {

// loom bench memory: every policy bitwise the first, the arena as the table predicts, the
// peak RSS within reach of the predicted total, less memory for selective and full.
TEST_F(Cli, BenchMemoryValidatesAndPricesEachPolicy) {
  const fs::path json = dir_ / "bench-memory.json";
  const Result r = run("bench memory --config " + (dir_ / "tiny.toml").string() +
                       " --seq-lens 16 32 --steps 1 --warmup 0 --threads 1 --precision fp32 "
                       "bf16 --json " + json.string());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "act pred")) << r.output;
  const nlohmann::json out = nlohmann::json::parse(slurp(json));
  ASSERT_EQ(out["rows"].size(), 24u) << out.dump(2);  // 2 T x 2 precisions x 2 kernels x 3
  EXPECT_EQ(out["rows"][6]["precision"], "bf16") << out.dump(2);  // T, then precision
  double none = 0;
  for (const auto& row : out["rows"]) {
    EXPECT_TRUE(row["bitwise_equal_to_first"].get<bool>()) << row.dump();
    const double arena = row["arena_bytes"], predicted = row["predicted_bytes"];
    EXPECT_NEAR(arena, predicted, 0.01 * predicted) << row.dump();
    if (row["recompute"] == "none") {
      none = arena;
    } else {
      EXPECT_LT(arena, none) << row.dump();
    }
    const double peak = row["peak_rss_growth_bytes"], total = row["predicted_total_bytes"];
    EXPECT_GT(peak, 0.5 * total) << row.dump();
  }
}

}  // namespace

namespace {

TEST_F(Cli, LayoutAutoTrainsTheLayoutThePlanRanksFirst) {
  std::ofstream(dir_ / "cpu.toml")
      << "[cluster]\nname = \"cpu\"\nkind = \"cpu\"\nnodes = 1\ndevices_per_node = 2\n"
         "device_memory_gib = 8\n[compute]\npeak_tflops_fp32 = 0.08\npeak_tflops_bf16 = 0.16\n"
         "peak_tflops_fp16 = 0.08\ngemm_efficiency = 0.8\nattention_efficiency = 0.5\n"
         "memory_bandwidth_gbs = 30\nmemory_efficiency = 1\n[network]\n"
         "intra_bandwidth_gbs = 2\nintra_alpha_us = 20\nintra_efficiency = 1\n"
         "inter_bandwidth_gbs = 2\ninter_alpha_us = 20\ninter_efficiency = 1\n";
  const std::string cfg = (dir_ / "tiny.toml").string(), cluster = (dir_ / "cpu.toml").string();
  const fs::path json = dir_ / "plan.json";
  Result r = run("plan --config " + cfg + " --cluster " + cluster + " --world 2 --global-batch 4 "
                 "--top 1 --json " + json.string());
  ASSERT_EQ(r.code, 0) << r.output;
  const nlohmann::json first = nlohmann::json::parse(slurp(json))["layouts"][0];
  const fs::path run_dir = dir_ / "auto";
  r = run("train --config " + cfg + " --layout auto --cluster " + cluster +
              " --set train.global_batch=4 --set train.grad_accum=2 --set train.steps=2 "
              "--set train.eval_every=0 --set train.checkpoint_every=0 --set run.dir=\"" +
              run_dir.string() + "\"", "", 2);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "layout auto:")) << r.output;
  // The run recorded the layout the plan ranked first.
  const std::string toml = slurp(run_dir / "config.toml");
  for (const char* key : {"dp", "tp", "pp", "zero", "virtual_stages"})
    EXPECT_TRUE(contains(toml, std::string(key) + " = " + first[key].dump() + "\n"))
        << key << " = " << first[key] << " in\n" << toml;
  for (const char* key : {"schedule", "precision", "recompute"})
    EXPECT_TRUE(contains(toml, std::string(key) + " = '" + first[key].get<std::string>() + "'"))
        << key << " = " << first[key] << " in\n" << toml;
  EXPECT_TRUE(contains(toml, "grad_accum = " + first["microbatches"].dump() + "\n")) << toml;
  EXPECT_TRUE(contains(toml, "micro_batch = " + first["micro_batch"].dump() + "\n")) << toml;
  // Without a cluster file it says how to make one.
  r = run("train --config " + cfg + " --layout auto --cluster " + (dir_ / "none.toml").string());
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "loom plan --calibrate")) << r.output;
}

TEST_F(Cli, StageLayersAutoMeasuresThenResumesWithTheRecordedSplit) {
  const std::string base = "train --config " + (dir_ / "tiny.toml").string() +
                           " --pp 2 --set model.n_layer=4 --set train.eval_every=0 "
                           "--set train.checkpoint_every=0 --set run.dir=\"" +
                           (dir_ / "auto_pp").string() + "\"";
  Result r = run(base + " --set train.steps=2", "", 2);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "stage layers auto: measured forward+backward")) << r.output;
  EXPECT_TRUE(contains(r.output, "balanced by measured cost, split ")) << r.output;
  const std::string toml = slurp(dir_ / "auto_pp/config.toml");
  const size_t at = toml.find("stage_layers = '");
  ASSERT_NE(at, std::string::npos) << toml;
  const std::string split = toml.substr(at + 16, toml.find('\'', at + 16) - at - 16);
  EXPECT_TRUE(split == "1,3" || split == "2,2" || split == "3,1" || split == "4,0") << split;
  r = run(base + " --set train.steps=3 --resume auto", "", 2);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "resuming with the recorded split " + split)) << r.output;
}

}  // namespace

