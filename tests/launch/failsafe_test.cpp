// The supervisor fails safe (issue 11, item 5): a rank stuck inside a step is caught by its
// progress though its heartbeat thread goes on; ranks end when their supervisor is killed
// (kill -9 or SIGTERM); a run stopped on a non-finite loss is not restarted; and the ranks'
// side of the heartbeat notices a supervisor that is gone.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "../shell_util.h"
#include "launch/heartbeat.h"

namespace {
namespace fs = std::filesystem;
using loom::test::contains;
using loom::test::Result;
using loom::test::slurp;

Result sh(const std::string& cmd, int timeout_s = 300) {
  return loom::test::shell("timeout -k 10 " + std::to_string(timeout_s) + " " + cmd);
}

// Polls `done` every 100 ms for at most `limit_s` (a bound on a hang, not a speed check).
bool eventually(const std::function<bool()>& done, double limit_s = 60) {
  for (const auto t0 = std::chrono::steady_clock::now();
       std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < limit_s;) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return done();
}

TEST(HeartbeatClient, EndsItsRankWhenTheSupervisorIsGone) {
  const int listener = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  ASSERT_EQ(bind(listener, reinterpret_cast<sockaddr*>(&addr), len), 0);
  ASSERT_EQ(listen(listener, 4), 0);
  ASSERT_EQ(getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  std::atomic<bool> orphaned{false};
  loom::HeartbeatClient client("127.0.0.1:" + std::to_string(ntohs(addr.sin_port)), "00", 0, 0.1,
                               0.5, [&] { orphaned = true; });
  ASSERT_TRUE(client.connected());
  const int conn = accept(listener, nullptr, nullptr);
  ASSERT_GE(conn, 0);
  client.set_step(3);
  EXPECT_FALSE(orphaned.load());
  close(conn);  // the supervisor dies: the kernel closes its sockets
  close(listener);
  EXPECT_TRUE(eventually([&] { return orphaned.load(); })) << "the rank never noticed";
}

class Failsafe : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = loom::test::scratch_dir("failsafe");
    loom::test::write_corpus(dir_ / "corpus.txt");
    std::ofstream(dir_ / "tiny.toml")
        << "[model]\nn_layer = 2\nn_head = 2\nn_embd = 16\nblock_size = 32\n"
        << "[train]\nmicro_batch = 2\nseq_len = 16\nsteps = 8\ncheckpoint_every = 2\n"
        << "[data]\ntrain = \"" << (dir_ / "data/train_000000.bin").string() << "\"\n"
        << "[run]\nthreads = 1\n";
    prepared_ = sh(LOOM_BINARY " prepare --text " + (dir_ / "corpus.txt").string() + " --out " +
                   (dir_ / "data").string() + " --val-fraction 0.1");
  }
  void SetUp() override { ASSERT_EQ(prepared_.code, 0) << prepared_.output; }
  // `loom launch -n 2 FLAGS -- train` of the tiny run into run directory `run`.
  static std::string launch_cmd(const std::string& run, const std::string& flags,
                                const std::string& train_extra) {
    return "env OMP_NUM_THREADS=1 " LOOM_BINARY " launch -n 2 " + flags + " -- train --config " +
           (dir_ / "tiny.toml").string() + " --dp 2 --set run.dir=" + (dir_ / run).string() +
           " " + train_extra;
  }
  // The processes with `run`'s directory as an argument (mpirun and the ranks), read from
  // /proc (procps' pgrep is not on a minimal Debian).
  static std::vector<int> processes_of(const std::string& run) {
    const std::string arg = "run.dir=" + (dir_ / run).string();
    std::vector<int> pids;
    for (const auto& e : fs::directory_iterator("/proc")) {
      const std::string name = e.path().filename().string();
      if (name.find_first_not_of("0123456789") != std::string::npos) continue;
      std::istringstream cmdline(slurp(e.path() / "cmdline"));
      for (std::string a; std::getline(cmdline, a, '\0');) {
        if (a == arg) {
          pids.push_back(std::stoi(name));
          break;
        }
      }
    }
    return pids;
  }
  // Starts a long launch in the background, waits until both ranks report, sends `signal` to
  // the supervisor, and expects every process of the job to end.
  static void expect_ranks_end_with_supervisor(const std::string& run, const char* signal) {
    const fs::path log = dir_ / (run + ".log");
    loom::test::shell(launch_cmd(run, "--heartbeat-s 2 --max-restarts 0",
                                 "--set train.steps=1000000 --set train.checkpoint_every=0") +
                      " > " + log.string() + " 2>&1 & echo $! > " + (dir_ / run).string() +
                      ".pid");
    const std::string pid = slurp(dir_ / (run + ".pid"));
    ASSERT_TRUE(eventually([&] { return contains(slurp(log), "all 2 ranks are reporting"); }))
        << slurp(log);
    ASSERT_GE(processes_of(run).size(), 3u) << "mpirun and two ranks should be running";
    loom::test::shell(std::string("kill -") + signal + " " + pid);
    EXPECT_TRUE(eventually([&] { return processes_of(run).empty(); }))
        << processes_of(run).size() << " processes of the job outlived their supervisor\n"
        << slurp(log);
    for (int p : processes_of(run)) kill(p, SIGKILL);  // leave nothing behind when it failed
  }
  static fs::path dir_;
  static Result prepared_;
};
fs::path Failsafe::dir_;
Result Failsafe::prepared_;

// Issue 11: with --heartbeat-s 3 an injected hang was not detected in 120 s (only the 300 s
// collective deadline caught it): the hung rank's heartbeat thread beat on.
TEST_F(Failsafe, AHangInsideAStepIsCaughtByProgress) {
  const Result r = sh(launch_cmd("hang", "--heartbeat-s 3 --progress-timeout 4 --max-restarts 0",
                                 "--inject-fault hang:rank=1:step=3"));
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_TRUE(contains(r.output, "injected fault: rank 1 hangs at step 3")) << r.output;
  EXPECT_TRUE(contains(r.output, "made no progress for ")) << r.output;
  EXPECT_TRUE(contains(r.output, "in step 3 (--progress-timeout 4 s)")) << r.output;
  EXPECT_FALSE(contains(r.output, "deadline of 300 s passed")) << r.output;
}

TEST_F(Failsafe, RanksEndWhenTheSupervisorIsKilled) {
  expect_ranks_end_with_supervisor("sigkill", "9");
}

TEST_F(Failsafe, AnInterruptedLaunchEndsItsProcessGroup) {
  expect_ranks_end_with_supervisor("sigterm", "TERM");
  EXPECT_TRUE(contains(slurp(dir_ / "sigterm.log"), "interrupted: the job was ended"))
      << slurp(dir_ / "sigterm.log");
}

TEST_F(Failsafe, ANonFiniteStopIsNotRestarted) {
  const Result r = sh(launch_cmd("nan", "--heartbeat-s 5 --max-restarts 3",
                                 "--set train.lr=1e30 --set train.grad_clip=0"));
  EXPECT_EQ(r.code, 4) << r.output;
  EXPECT_TRUE(contains(r.output, "the loss is ")) << r.output;
  EXPECT_TRUE(contains(r.output, ": non finite (exit status 4) at step 1")) << r.output;
  EXPECT_TRUE(contains(r.output, "non-finite loss or gradient (the ranks' failure records): a "
                                 "restart from the same checkpoint would repeat it; not "
                                 "restarting")) << r.output;
  EXPECT_FALSE(contains(r.output, "attempt 2 of")) << r.output;
}

}  // namespace
