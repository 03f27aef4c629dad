// loom across two hosts: two network namespaces on this machine joined by a veth link
// (tests/hosts/twohost), mpirun reaching the second through an rsh agent. MPI across the
// link, `loom launch --hosts` training a hybrid layout with tp inside a host and dp across,
// a killed rank on the second host, a cut link, and an elastic shrink to the host that is
// left. These tests need root and network namespaces; where they cannot be made the tests
// fail (the set-up's error is the message), they never skip.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>

#include "shell_util.h"

namespace {
namespace fs = std::filesystem;
using loom::test::contains;
using loom::test::Result;
using loom::test::slurp;

const std::string kTwohost = LOOM_SOURCE_DIR "/tests/hosts/twohost";

Result sh(const std::string& cmd, int timeout_s = 300) {
  return loom::test::shell("timeout -k 10 " + std::to_string(timeout_s) + " " + cmd);
}

// The two hosts, once for the suite, and a tiny model's data.
class TwoHosts : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = loom::test::scratch_dir("two_hosts");
    up_ = sh(kTwohost + " up " + (dir_ / "hosts").string(), 60);
    std::ifstream env(dir_ / "hosts/hosts.env");
    for (std::string line; std::getline(env, line);)
      if (const size_t eq = line.find('='); eq != std::string::npos)
        env_[line.substr(0, eq)] = line.substr(eq + 1);
    loom::test::write_corpus(dir_ / "corpus.txt");
    prepared_ = sh(LOOM_BINARY " prepare --text " + (dir_ / "corpus.txt").string() + " --out " +
                   (dir_ / "data").string() + " --val-fraction 0.1");
    std::ofstream cfg(dir_ / "tiny.toml");
    cfg << "[model]\nn_layer = 2\nn_head = 2\nn_embd = 16\nblock_size = 32\n"
        << "[train]\nmicro_batch = 2\nseq_len = 16\nsteps = 8\ncheckpoint_every = 2\n"
        << "[data]\ntrain = \"" << (dir_ / "data/train_000000.bin").string() << "\"\n"
        << "[run]\nthreads = 1\n";
  }
  static void TearDownTestSuite() {
    sh(kTwohost + " down " + (dir_ / "hosts").string(), 30);
    fs::remove_all(dir_);
  }
  void SetUp() override {
    ASSERT_EQ(up_.code, 0) << "the two test hosts could not be made:\n" << up_.output;
    ASSERT_EQ(prepared_.code, 0) << prepared_.output;
  }

  // `cmd` on host a (or b), with the OpenMPI settings of a job across both hosts.
  static Result on(const std::string& host, const std::string& cmd, int timeout_s = 300) {
    std::string vars;
    for (const auto& [k, v] : env_)
      if (k.starts_with("OMPI_MCA_")) vars += " " + k + "=" + v;
    return sh(kTwohost + " on " + (dir_ / "hosts").string() + " " + host + " env" + vars +
              " OMP_NUM_THREADS=1 " + cmd, timeout_s);
  }
  static std::string hosts(int per_host) {
    return fmt::format("{}:{},{}:{}", env_["ADDR_A"], per_host, env_["ADDR_B"], per_host);
  }
  // `loom launch` on host a over both hosts: tp 2 inside each host, dp 2 across.
  static Result launch(const std::string& run, const std::string& flags,
                       const std::string& train_flags = "") {
    return on("a", LOOM_BINARY " launch -n 4 --hosts " + hosts(2) + " --supervisor-address " +
                       env_["ADDR_A"] + " --heartbeat-s 5 " + flags +
                       " -- train --config " + (dir_ / "tiny.toml").string() +
                       " --dp 2 --tp 2 --set run.dir=" + (dir_ / run).string() + " " +
                       train_flags);
  }
  static std::string final_model(const std::string& run) {
    return slurp(dir_ / run / "checkpoints/step_00000008/model-00000.safetensors");
  }

  static fs::path dir_;
  static Result up_, prepared_;
  static std::map<std::string, std::string> env_;
};
fs::path TwoHosts::dir_;
Result TwoHosts::up_, TwoHosts::prepared_;
std::map<std::string, std::string> TwoHosts::env_;

TEST_F(TwoHosts, MpiRunsAcrossTheLinkBetweenNamedHosts) {
  const std::string before = sh(kTwohost + " bytes " + (dir_ / "hosts").string()).output;
  Result r = on("a", LOOM_MPIRUN " -np 4 --host " + hosts(2) + " hostname");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, env_["HOST_A"]) && contains(r.output, env_["HOST_B"]))
      << r.output;
  // Collectives and the hang detector's one-sided reads, two ranks on each side.
  r = on("a", LOOM_MPIRUN " -np 4 --host " + hosts(2) + " " LOOM_MPI_COLLECTIVES);
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string after = sh(kTwohost + " bytes " + (dir_ / "hosts").string()).output;
  EXPECT_GT(std::stoll(after), std::stoll(before) + 100000) << before << " -> " << after;
}

// tp inside each host, dp across: the run completes under the supervisor, whose socket the
// second host's ranks reach over the link, and ends as the same layout on one host does.
TEST_F(TwoHosts, HybridTrainingUnderLaunchMatchesOneHost) {
  const Result r = launch("across", "--max-restarts 0");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "listening on " + env_["ADDR_A"] + ":")) << r.output;
  EXPECT_TRUE(contains(r.output, "all 4 ranks are reporting")) << r.output;
  const Result one = sh("env OMP_NUM_THREADS=1 " LOOM_MPIRUN " -np 4 " LOOM_BINARY
                        " train --config " + (dir_ / "tiny.toml").string() +
                        " --dp 2 --tp 2 --set run.dir=" + (dir_ / "one").string());
  ASSERT_EQ(one.code, 0) << one.output;
  ASSERT_FALSE(final_model("one").empty());
  EXPECT_TRUE(final_model("across") == final_model("one")) << "the final weights differ";
}

TEST_F(TwoHosts, AKilledRankOnTheSecondHostIsRestartedFromTheLastCheckpoint) {
  const Result base = launch("base", "--max-restarts 0");
  ASSERT_EQ(base.code, 0) << base.output;
  const Result r = launch("killed", "--max-restarts 2", "--inject-fault kill:rank=3:step=5");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "injected fault: rank 3 kills itself at step 5")) << r.output;
  EXPECT_TRUE(contains(r.output, "attempt 1 failed")) << r.output;
  EXPECT_TRUE(contains(r.output, "completed after 1 restart(s)")) << r.output;
  EXPECT_TRUE(final_model("killed") == final_model("base")) << "the final weights differ";
}

// The link is cut once the run has a checkpoint at step 40, for 30 s (`up_after_s`; 0: left
// down until the job ends), while `launch_flags` supervise 400 steps across both hosts.
std::string cut_link_then(const fs::path& hosts, const fs::path& run, int up_after_s,
                          const std::string& launch) {
  const std::string t = kTwohost + " link " + hosts.string();
  const std::string cut =
      "( timeout 120 sh -c 'until [ -d " + (run / "checkpoints/step_00000040").string() +
      " ]; do sleep 0.05; done' && " + t + " down" +
      (up_after_s > 0 ? " && sleep " + std::to_string(up_after_s) + " && " + t + " up" : "") +
      " ) >/dev/null 2>&1 & ";
  return "sh -c \"" + cut + launch + "; rc=\\$?; wait; " + t + " up; exit \\$rc\"";
}

class CutLink : public TwoHosts {
 protected:
  // A shell command printing the hosts that can be reached: both while the link is up.
  static std::string available() {
    return "'[ \\$(" + kTwohost + " link " + (dir_ / "hosts").string() + " state) = up ] && echo " +
           hosts(2) + " || echo " + env_["ADDR_A"] + ":2'";
  }
  static std::string launch_cmd(const std::string& run, const std::string& flags) {
    std::string vars;
    for (const auto& [k, v] : env_)
      if (k.starts_with("OMPI_MCA_")) vars += " " + k + "=" + v;
    return kTwohost + " on " + (dir_ / "hosts").string() + " a env" + vars +
           " OMP_NUM_THREADS=1 " LOOM_BINARY " launch -n 4 --hosts " + hosts(2) +
           " --supervisor-address " + env_["ADDR_A"] + " --heartbeat-s 6 " + flags +
           " -- train --config " + (dir_ / "tiny.toml").string() +
           " --dp 2 --tp 2 --set run.dir=" + (dir_ / run).string() +
           " --set train.steps=400 --set train.checkpoint_every=20 --set comm.timeout_s=2";
  }
  static double last_loss(const std::string& run) {
    const std::string m = slurp(dir_ / run / "metrics.jsonl");
    const size_t at = m.rfind("\"loss\":");
    return at == std::string::npos ? -1.0 : std::stod(m.substr(at + 7));
  }
  static std::string model_400(const std::string& run) {
    return slurp(dir_ / run / "checkpoints/step_00000400/model-00000.safetensors");
  }
  // The uninterrupted run both tests compare with, once.
  static const Result& base() {
    static const Result r = sh(launch_cmd("base400", "--max-restarts 0"), 300);
    return r;
  }
};

// Cut for 30 s: the ranks on the first host name the collective that the second host's
// ranks never answered, the supervisor names the silent host, waits until --available-cmd
// reports every process again, restarts from the last checkpoint and ends with the bytes
// of the uninterrupted run.
TEST_F(CutLink, TheJobRestartsWhenTheLinkReturnsAndEndsAsIfUncut) {
  ASSERT_EQ(base().code, 0) << base().output;
  const Result r = sh(cut_link_then(dir_ / "hosts", dir_ / "cut", 30,
                                    launch_cmd("cut", "--max-restarts 2 --available-cmd " +
                                                          available())), 400);
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string b = env_["ADDR_B"];
  // A rank on the first host names the collective it waited in, and the ranks across the
  // link it could not read (libfabric may end it before they answer, or they time out);
  // the supervisor names the second host's silent ranks.
  EXPECT_TRUE(contains(r.output, "failure record: rank ")) << r.output;
  EXPECT_TRUE(contains(r.output, "on " + env_["HOST_A"] + ": collective deadline: ALLREDUCE"))
      << r.output;
  EXPECT_TRUE(contains(r.output, "; on other hosts, not read yet: rank ") ||
              contains(r.output, "; no answer from: rank ")) << r.output;
  EXPECT_TRUE(contains(r.output, "attempt 1 failed: rank 2 on " + b + " missed its heartbeat") ||
              contains(r.output, "attempt 1 failed: rank 3 on " + b + " missed its heartbeat"))
      << r.output;
  EXPECT_TRUE(contains(r.output, " on " + b + ")")) << r.output;  // the unread rank's host
  EXPECT_TRUE(contains(r.output, "waiting for all 4 processes before restarting: "
                                 "--available-cmd reports 2 (" + env_["ADDR_A"] + ":2)"))
      << r.output;
  EXPECT_TRUE(contains(r.output, "all 4 processes are available again after ")) << r.output;
  EXPECT_TRUE(contains(r.output, "completed after 1 restart(s)")) << r.output;
  ASSERT_FALSE(model_400("base400").empty());
  EXPECT_TRUE(model_400("cut") == model_400("base400")) << "the final weights differ";
}

// Cut for good, with --min-n: the job goes on elastically on the host that is left (dp 2 ->
// 1, twice the accumulation, the same global batch) and ends where the uncut run did.
TEST_F(CutLink, WithMinNTheJobShrinksToTheHostLeft) {
  ASSERT_EQ(base().code, 0) << base().output;
  const Result r = sh(cut_link_then(dir_ / "hosts", dir_ / "shrunk", 0,
                                    launch_cmd("shrunk", "--max-restarts 2 --min-n 2 "
                                                         "--available-cmd " + available())),
                      400);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "elastic: 2 of 4 processes available on " + env_["ADDR_A"] +
                                 ":2; restarting on 2")) << r.output;
  EXPECT_TRUE(contains(r.output, "-np 2 --host " + env_["ADDR_A"] + ":2 ")) << r.output;
  EXPECT_TRUE(contains(r.output, "dp 2 -> 1, grad_accum 1 -> 2")) << r.output;
  EXPECT_TRUE(contains(r.output, "completed after 1 restart(s)")) << r.output;
  const double base_loss = last_loss("base400"), loss = last_loss("shrunk");
  ASSERT_GT(base_loss, 0);
  EXPECT_NEAR(loss, base_loss, 1e-5 * base_loss);
}

}  // namespace
