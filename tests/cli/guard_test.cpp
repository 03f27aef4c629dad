// Nothing lost, nothing silent: a run directory belongs to one run (refused when it holds
// another, cleared only by --overwrite, locked while a run lasts), a resumed run's
// metrics.jsonl stays one run, non-finite training stops before anything is saved, and
// out-of-range options are rejected naming the option.
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <regex>
#include <string>

#include "../shell_util.h"

namespace {
namespace fs = std::filesystem;
using loom::test::contains;
using loom::test::Result;
using loom::test::slurp;

Result loom_cmd(const std::string& args) { return loom::test::shell(LOOM_BINARY " " + args); }

class Guard : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = loom::test::scratch_dir("guard");
    loom::test::write_corpus(dir_ / "corpus.txt");
    prepared_ = loom_cmd("prepare --text " + (dir_ / "corpus.txt").string() + " --out " +
                         (dir_ / "data").string() + " --val-fraction 0.1");
    std::ofstream(dir_ / "tiny.toml")
        << "[model]\nn_layer = 2\nn_head = 2\nn_embd = 16\nblock_size = 32\n"
        << "[train]\nmicro_batch = 2\nseq_len = 16\nsteps = 4\ncheckpoint_every = 2\n"
        << "[data]\ntrain = \"" << (dir_ / "data/train_000000.bin").string() << "\"\n"
        << "[run]\nthreads = 1\n";
  }
  void SetUp() override { ASSERT_EQ(prepared_.code, 0) << prepared_.output; }
  // `loom train` on run directory `run` (under the suite's folder) with extra arguments.
  static Result train(const std::string& run, const std::string& args = "") {
    return loom_cmd("train --config " + (dir_ / "tiny.toml").string() +
                    " --set run.dir=" + (dir_ / run).string() + " " + args);
  }

 public:
  static std::string steps_in(const std::string& run) {
    std::ifstream in(dir_ / run / "metrics.jsonl");
    std::string line, out;
    const std::regex step("\"step\":([0-9]+)");
    std::smatch m;
    while (std::getline(in, line))
      if (std::regex_search(line, m, step)) out += m[1].str() + " ";
    return out;
  }
  static fs::path dir_;
  static Result prepared_;

 public:
  static const fs::path& dir() { return dir_; }
};
fs::path Guard::dir_;
Result Guard::prepared_;

TEST_F(Guard, ARunDirectoryHoldingAnotherRunIsRefusedUnlessOverwritten) {
  ASSERT_EQ(train("a").code, 0);
  const std::string before = slurp(dir_ / "a/metrics.jsonl");
  Result r = train("a", "--set train.seed=9");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "already holds a run (checkpoints, config.toml, memory.json, metrics.jsonl)"))
      << r.output;
  EXPECT_TRUE(contains(r.output, "--resume auto")) << r.output;
  EXPECT_EQ(slurp(dir_ / "a/metrics.jsonl"), before) << "the refused run wrote into it";

  // --overwrite clears it: no checkpoint of the old run is left to be picked up.
  r = train("a",
            "--set train.seed=9 --set train.steps=2 --set train.checkpoint_every=0 --overwrite");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_FALSE(fs::exists(dir_ / "a/checkpoints/step_00000004"));
  EXPECT_EQ(steps_in("a"), "1 2 ");
  r = train("a", "--resume auto --overwrite");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "pass one")) << r.output;
}

TEST_F(Guard, ASecondWriterFailsAtOnceNamingTheHolder) {
  // A long first run; the second starts while it holds the lock.
  const std::string first = std::string(LOOM_BINARY) + " train --config " +
                            (dir_ / "tiny.toml").string() + " --set run.dir=" +
                            (dir_ / "b").string() +
                            " --set train.steps=100000 --set train.checkpoint_every=0";
  const std::string pid_file = (dir_ / "first.pid").string();
  ASSERT_EQ(std::system((first + " > /dev/null 2>&1 & echo $! > " + pid_file).c_str()), 0);
  const std::string pid = slurp(pid_file).substr(0, slurp(pid_file).find('\n'));
  struct Killer {
    std::string pid;
    ~Killer() { std::system(("kill " + pid + " 2>/dev/null").c_str()); }
  } killer{pid};  // whatever the test asserts
  // Wait (bounded) until the first run has written its lock.
  for (int i = 0; i < 600 && !contains(slurp(dir_ / "b/.lock"), pid); ++i) usleep(50000);
  ASSERT_TRUE(contains(slurp(dir_ / "b/.lock"), pid)) << "the first run never took the lock";
  const Result r = train("b", "--resume auto");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "is in use by PID " + pid + " on host ")) << r.output;
  EXPECT_FALSE(fs::exists(dir_ / "b/checkpoints")) << "the second run wrote a checkpoint";
}

TEST_F(Guard, AResumedRunsMetricsAreOneRun) {
  ASSERT_EQ(train("c").code, 0);
  ASSERT_EQ(steps_in("c"), "1 2 3 4 ");
  // Resume from step 2 (the step-4 checkpoint removed), then go on to 6.
  fs::remove_all(dir_ / "c/checkpoints/step_00000004");
  const Result r = train("c", "--resume auto --set train.steps=6");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "at step 2")) << r.output;
  EXPECT_EQ(steps_in("c"), "1 2 3 4 5 6 ");
}

TEST_F(Guard, NonFiniteTrainingStopsBeforeAnythingIsSaved) {
  const Result r =
      train("d", "--set train.lr=1e30 --set train.grad_clip=0 --set train.checkpoint_every=1");
  EXPECT_EQ(r.code, 4) << "exit status 4: loom launch does not restart it\n" << r.output;
  EXPECT_TRUE(contains(r.output, "step 2: the loss is ")) << r.output;
  EXPECT_TRUE(contains(r.output, "no checkpoint holds this state")) << r.output;
  // Step 1's checkpoint is from finite weights; none is from the bad step or after.
  EXPECT_TRUE(fs::exists(dir_ / "d/checkpoints/step_00000001/manifest.json")) << r.output;
  EXPECT_FALSE(fs::exists(dir_ / "d/checkpoints/step_00000002")) << r.output;
  EXPECT_EQ(steps_in("d"), "1 ");
}

TEST_F(Guard, NonFiniteAndOutOfRangeOptionsAreRejectedNamingTheOption) {
  Result r = train("e", "--set train.lr=inf");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "--set 'train.lr=inf': [train] lr must be a finite number"))
      << r.output;
  r = train("e", "--set train.beta1=nan");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "beta1 must be a finite number")) << r.output;
  r = train("e", "--set model.n_layer=abc");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(
      contains(r.output, "--set 'model.n_layer=abc': [model] n_layer must be an integer"))
      << r.output;
  EXPECT_FALSE(contains(r.output, "tiny.toml")) << "the file is not what was wrong";

  ASSERT_EQ(train("f").code, 0);
  const std::string ckpt = " --ckpt " + (dir_ / "f").string();
  const std::string val = " --data " + (dir_ / "data/val_000000.bin").string();
  for (const auto& [args, what] : std::vector<std::pair<std::string, std::string>>{
           {"generate" + ckpt + " --temperature -1", "--temperature: -1 is not a number in [0, "},
           {"generate" + ckpt + " --temperature nan", "--temperature: nan is not a number"},
           {"generate" + ckpt + " --top-k -5", "--top-k: -5 is not a number in [0, "},
           {"generate" + ckpt + " --max-tokens -1", "--max-tokens: -1 is not a number in [0, "},
           {"eval" + ckpt + val + " --tokens -1", "--tokens: -1 is not a number in [1, "},
           {"eval" + ckpt + val + " --batch -3", "--batch: -3 is not a number in [1, "},
           {"eval" + ckpt + val + " --seq-len 0", "--seq-len: 0 is not a number in [1, "},
           {"eval" + ckpt + val + " --threads -4", "--threads: -4 is not a number in [0, 4096]"}}) {
    r = loom_cmd(args);
    EXPECT_EQ(r.code, 2) << args << "\n" << r.output;
    EXPECT_TRUE(contains(r.output, what)) << args << "\n" << r.output;
  }
}

// What generation cannot run is refused with exit 2 and the numbers that are wrong (the
// tiny model's context is 32 tokens, its 2 heads do not split over 3 ranks).
TEST_F(Guard, GenerateRefusesWhatCannotRunNamingTheNumbers) {
  ASSERT_EQ(train("gen").code, 0);
  const std::string gen = "generate --ckpt " + (dir_ / "gen").string();
  std::string long_prompt;
  for (int i = 0; i < 40; ++i) long_prompt += " And";
  std::ofstream(dir_ / "no_prompts.txt").close();
  for (const auto& [args, what] : std::vector<std::pair<std::string, std::string>>{
           {gen + " --prompt ''", "the prompt is empty"},
           {gen + " --prompt 'In the' --max-tokens 40",
            "the prompt (2 tokens) plus max_tokens 40 exceeds the context of 32 tokens"},
           {gen + " --prompt '" + long_prompt + "'", "40 tokens but the context holds 32"},
           {gen + " --top-p 0", "top_p 0 must be in (0, 1]"},
           {gen + " --top-p 1.5", "--top-p: 1.5 is not a number in [0, 1]"},
           {gen + " --top-p nan", "--top-p: nan is not a number"},
           {gen + " --precision bf17", "unknown precision 'bf17'"},
           {gen + " --tp 2", "--tp 2 needs 2 processes: run under mpirun -np 2"},
           {gen + " --prompt x --batch-file " + (dir_ / "no_prompts.txt").string(), "excludes"},
           {gen + " --batch-file " + (dir_ / "no_prompts.txt").string(), "has no prompts"},
           {std::string(LOOM_MPIRUN) + " -np 3 " LOOM_BINARY " " + gen + " --tp 3",
            "n_head=2 is not divisible by tp=3"}}) {
    const Result r = args.rfind("generate", 0) == 0 ? loom_cmd(args) : loom::test::shell(args);
    EXPECT_EQ(r.code, 2) << args << "\n" << r.output;
    EXPECT_TRUE(contains(r.output, what)) << args << "\n" << r.output;
  }
}

TEST_F(Guard, BadFilesAreNamedAndLeaveNothingBehind) {
  ASSERT_EQ(train("g").code, 0);
  // export --out an existing directory: refused before any work, no temporary left.
  fs::create_directories(dir_ / "g_out");
  Result r = loom_cmd("export --ckpt " + (dir_ / "g").string() + " --format safetensors --out " +
                      (dir_ / "g_out").string());
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "g_out': it is a directory")) << r.output;
  EXPECT_TRUE(fs::is_empty(dir_ / "g_out"));
  for (const auto& e : fs::directory_iterator(dir_))
    EXPECT_FALSE(contains(e.path().filename().string(), ".tmp.")) << e.path();
  // A directory as a config or a text, an empty text, an executable as a text.
  r = loom_cmd("train --config " + dir_.string());
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "it is a directory, not a file")) << r.output;
  std::ofstream(dir_ / "empty.txt").close();
  r = loom_cmd("prepare --text " + (dir_ / "empty.txt").string() + " --out " +
               (dir_ / "g_data").string());
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "empty.txt' is empty")) << r.output;
  r = loom_cmd("prepare --text " LOOM_BINARY " --out " + (dir_ / "g_data").string());
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "does not look like text")) << r.output;
  EXPECT_FALSE(fs::exists(dir_ / "g_data"));
}

// Each under a 4 GB address-space limit, so a regression fails here with bad_alloc instead of
// taking the machine's memory. ASan's shadow memory cannot live under ulimit -v: sanitized,
// the bound is LOOM_MEMORY_LIMIT, and ASan's own hard_rss_limit_mb guards the machine.
TEST_F(Guard, RunsThatCannotFitAreRefusedBeforeAllocating) {
#ifdef LOOM_SANITIZED
  const std::string limited =
      "env LOOM_MEMORY_LIMIT=3600M ASAN_OPTIONS=${ASAN_OPTIONS:-}:hard_rss_limit_mb=4000 "
      LOOM_BINARY " ";
  const std::string which = "is available (LOOM_MEMORY_LIMIT 3.5 GiB)";
#else
  const std::string limited = "ulimit -v 4000000; " LOOM_BINARY " ";
  const std::string which = "is available (address-space limit (ulimit -v)";
#endif
  auto train_limited = [&](const std::string& set) {
    return loom::test::shell(limited + "train --config " + (dir_ / "tiny.toml").string() +
                             " --set run.dir=" + (dir_ / "h").string() + " --set " + set);
  };
  // 99999999999 no longer wraps to an int of 1215752191 layers.
  Result r = train_limited("model.n_layer=99999999999");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "n_layer = 99999999999 is out of range (at most 2147483647)"))
      << r.output;
  for (const auto& [set, fits] : std::vector<std::pair<std::string, std::string>>{
           {"model.n_layer=100000000", "model.n_layer="},
           {"model.block_size=100000000", "model.block_size="},
           {"model.n_embd=1073741824", "model.n_embd="},
           {"train.micro_batch=1000000", "train.micro_batch="}}) {
    r = train_limited(set);
    EXPECT_EQ(r.code, 2) << set << "\n" << r.output;
    EXPECT_TRUE(contains(r.output, "not enough memory: this run needs about ")) << r.output;
    EXPECT_TRUE(contains(r.output, which)) << r.output;
    EXPECT_TRUE(contains(r.output, "largest settings that fit")) << r.output;
    EXPECT_TRUE(contains(r.output, fits)) << set << "\n" << r.output;
    EXPECT_FALSE(contains(r.output, "bad_alloc")) << r.output;
  }
  EXPECT_FALSE(fs::exists(dir_ / "h")) << "a refused run claims no directory";
  r = loom::test::shell(limited + "plan --simulate --pp 100000 --microbatches 100000");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "needs about")) << r.output;
  EXPECT_TRUE(contains(r.output, "at --pp 100000 at most --microbatches")) << r.output;
  r = loom::test::shell(limited + "plan --simulate --pp 400 --microbatches 800");
  EXPECT_EQ(r.code, 0) << r.output.substr(0, 2000);
  EXPECT_TRUE(contains(r.output, "timeline omitted: 400 ranks")) << r.output.substr(0, 2000);
}

// Issue 11: on a full disk metrics.jsonl ended at 0 bytes without a word. Now the failed
// write names the file and the free space, and the run stops after a final checkpoint
// attempt. Here the write fails by injection (/dev/full's ENOSPC), so the checkpoint
// succeeds; `mpi` runs it on two ranks, where only rank 0 writes metrics.
void expect_injected_disk_full_stops(const std::string& run, const std::string& mpi) {
  const fs::path dir = Guard::dir() / run;
  const Result r = loom::test::shell(
      mpi + LOOM_BINARY " train --config " + (Guard::dir() / "tiny.toml").string() +
      " --set run.dir=" + dir.string() + " --set train.steps=6 --inject-fault disk-full:step=2" +
      (mpi.empty() ? "" : " --dp 2"));
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "cannot write metrics to '" + dir.string() +
                                     "/metrics.jsonl': No space left on device ("))
      << r.output;
  EXPECT_TRUE(contains(r.output, "free on its file system)")) << r.output;
  EXPECT_TRUE(contains(r.output, "a final checkpoint was saved to")) << r.output;
  EXPECT_TRUE(fs::exists(dir / "checkpoints/step_00000003/manifest.json")) << r.output;
  EXPECT_EQ(Guard::steps_in(run), "1 2 ") << "the records written before the failure are kept";
}

TEST_F(Guard, AFailedMetricsWriteStopsAfterAFinalCheckpoint) {
  expect_injected_disk_full_stops("i1", "");
  const Result resumed = train("i1", "--resume auto");
  EXPECT_EQ(resumed.code, 0) << resumed.output;
  EXPECT_TRUE(contains(resumed.output, "at step 3")) << resumed.output;
  expect_injected_disk_full_stops("i2", LOOM_MPIRUN " -np 2 ");
}

// The same on a real full file system (a 32 KiB tmpfs in a private mount namespace): the
// disk fills with metrics, the write fails with ENOSPC, and the final checkpoint, which
// cannot fit either, fails loudly too. Where no tmpfs can be mounted, the injected failure
// stands in, and the test says so.
TEST_F(Guard, AFullDiskIsLoud) {
  const fs::path mnt = dir_ / "small_fs";
  fs::create_directories(mnt);
  const std::string unshare = geteuid() == 0 ? "unshare --mount" : "unshare -rm";
  const Result probe =
      loom::test::shell(unshare + " sh -c 'mount -t tmpfs tmpfs " + mnt.string() + "'");
  if (probe.code != 0) {
    std::printf("AFullDiskIsLoud: cannot mount a tmpfs here (%s); using an injected write "
                "failure instead\n", probe.output.c_str());
    expect_injected_disk_full_stops("j", "");
    return;
  }
  std::printf("AFullDiskIsLoud: using a 32 KiB tmpfs\n");
  const fs::path run = mnt / "run";
  const Result r = loom::test::shell(
      unshare + " sh -c 'mount -t tmpfs -o size=32k tmpfs " + mnt.string() + " && " +
      LOOM_BINARY " train --config " + (dir_ / "tiny.toml").string() + " --set run.dir=" +
      run.string() + " --set train.steps=100000 --set train.checkpoint_every=0; echo exit=$?; "
      "wc -l < " +
      (run / "metrics.jsonl").string() + "'");
  EXPECT_FALSE(contains(r.output, "exit=0")) << r.output;
  EXPECT_TRUE(contains(r.output, "exit=1")) << r.output;
  EXPECT_TRUE(contains(r.output, "metrics.jsonl': No space left on device (")) << r.output;
  EXPECT_TRUE(contains(r.output, "the final checkpoint failed too (")) << r.output;
  // The lines written before the disk filled are there (wc -l's count is the last line).
  const std::string tail = r.output.substr(r.output.find_last_of('\n', r.output.size() - 2) + 1);
  EXPECT_GT(std::atoi(tail.c_str()), 50) << r.output;
}

}  // namespace
